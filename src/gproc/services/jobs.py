"""Jobs at the master: every job's merged output and exit statuses, kept on disk; batch sessions.

Each job is a row in the master's SQLite database (``jobs``: who, what, where, state, exit status) and
its output a file ``<state>/jobs/<id>.out``: the stream of merged ``out`` records exactly as an attached
client received them (msgpack ``[[key, nodes, count]…]`` one after another). So ``gproc output JOBID``
replays a job in any display format, and jobs survive a master restart; a job that was running when
the master went away ends as ``lost`` for the nodes that had not answered.

Client requests added here: ``jobs`` (list), ``output`` (replay, then follow a running job) and
``wait`` (exit status). Retention keeps at most ``keep_jobs`` finished jobs and ``keep_bytes`` of
output (oldest first); a job's own output stops being stored beyond ``keep_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import msgpack
from ClusterShell.NodeSet import NodeSet

from gproc import wire
from gproc.errors import GprocError
from gproc.messages import Body
from gproc.services.base import TICK, ClientRequest, Role, ServiceTable, has_role

if TYPE_CHECKING:
    from gproc.overlay import Link
    from gproc.platform import PeerCred
Out = list[list[Any]]  # [[key, nodes, count], …]
RESTARTED = "lost (the master restarted)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    uid INTEGER NOT NULL,
    argv TEXT NOT NULL,
    nodes TEXT NOT NULL,
    n INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    state TEXT NOT NULL,
    status INTEGER,
    ok INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL,
    ended REAL,
    bytes INTEGER NOT NULL DEFAULT 0,
    rep_bytes INTEGER NOT NULL DEFAULT 0,
    rep_frames INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = (
    "id, uid, argv, nodes, n, batch, state, status, ok, failed, started, ended, bytes, rep_bytes, rep_frames, truncated"
)


class JobRecord:
    """A running job as the master records it."""

    def __init__(self, store: JobStore, job: int, f: BinaryIO, row: dict[str, Any]) -> None:
        self.store = store
        self.id = job
        self.uid: int = row["uid"]
        self.row = row
        self._file: BinaryIO | None = f
        self.bytes = 0
        self.truncated = False
        self.status = 0
        self.ok = self.failed = 0
        self.done = asyncio.get_running_loop().create_future()
        self.followers: list[Callable[[Out | None], None]] = []

    def add(self, out: Out) -> None:
        """Store merged records (and pass them to clients following the job)."""
        for key, _nodes, count in out:
            if key[0] == "s":
                self.status = max(self.status, int(key[1]))
                if key[1] == 0 and not key[2]:
                    self.ok += count
                else:
                    self.failed += count
        kept = out
        if self._file is not None:
            if self.bytes >= self.store.keep_bytes:
                kept = [g for g in out if g[0][0] != "o"]
                self.truncated = self.truncated or len(kept) < len(out)
            if kept:
                data = msgpack.packb(kept, use_bin_type=True)
                self._file.write(data)
                self._file.flush()
                self.bytes += len(data)
        for follow in list(self.followers):
            follow(out)

    def finish(self, rep_bytes: int, rep_frames: int) -> None:
        """The job ended everywhere."""
        if self.done.done():
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        self.store.finished(self, rep_bytes, rep_frames)
        self.done.set_result(self.status)
        for follow in list(self.followers):
            follow(None)
        self.followers.clear()


class JobStore:
    """The master's table of jobs and their output files."""

    def __init__(self, db: sqlite3.Connection, directory: str, keep_jobs: int = 1000, keep_bytes: int = 1 << 30):
        self.db = db
        self.dir = directory
        self.keep_jobs = max(1, keep_jobs)
        self.keep_bytes = max(1, keep_bytes)
        self.running: dict[int, JobRecord] = {}
        os.makedirs(directory, mode=0o700, exist_ok=True)
        db.execute(_SCHEMA)
        self._recover()
        self.enforce_retention()

    def path(self, job: int) -> str:
        return os.path.join(self.dir, f"{job}.out")

    def _recover(self) -> None:
        """Jobs that were running when the previous master went away: unanswered nodes are lost."""
        rows = self.db.execute("SELECT id, nodes FROM jobs WHERE state='running'").fetchall()
        for job, nodes in rows:
            answered = NodeSet()
            status = ok = failed = 0
            for out in self.records(job):
                for key, ns, count in out:
                    if key[0] == "s":
                        answered.update(ns)
                        status = max(status, int(key[1]))
                        if key[1] == 0 and not key[2]:
                            ok += count
                        else:
                            failed += count
            missing = NodeSet(nodes) - answered
            if missing:
                status, failed = 255, failed + len(missing)
                with open(self.path(job), "ab") as f:
                    f.write(msgpack.packb([[["s", 255, RESTARTED], str(missing), len(missing)]], use_bin_type=True))
            size = 0
            with contextlib.suppress(OSError):
                size = os.path.getsize(self.path(job))
            self.db.execute(
                "UPDATE jobs SET state='lost', status=?, ok=?, failed=?, ended=?, bytes=? WHERE id=?",
                (status, ok, failed, time.time(), size, job),
            )

    def records(self, job: int, limit: int | None = None, start: int = 0) -> Iterator[Out]:
        """A job's stored output records in the order they arrived (``limit`` bytes from byte ``start``,
        which must be where a record begins: 0, or a ``JobRecord.bytes`` seen before)."""
        try:
            f = open(self.path(job), "rb")  # noqa: SIM115 (closed below; this is a generator)
        except OSError:
            return
        with f:
            f.seek(start)
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=2 * wire.MAX_FRAME)
            left = limit if limit is not None else -1
            while left != 0:
                chunk = f.read(1 << 20 if left < 0 else min(left, 1 << 20))
                if not chunk:
                    break
                left = left - len(chunk) if left > 0 else left
                unpacker.feed(chunk)
                try:
                    yield from unpacker
                except (ValueError, msgpack.UnpackException):
                    return  # a damaged file: what came before is kept

    def start(self, job: int, uid: int, argv: list[str], nodes: str, n: int, batch: bool, absent: str) -> JobRecord:
        """Record a new job (state ``running``); output goes to its file from now on."""
        row = {
            "id": job,
            "uid": uid,
            "argv": json.dumps(argv),
            "nodes": nodes,
            "n": n,
            "batch": int(batch),
            "state": "running",
            "started": time.time(),
        }
        self.db.execute(
            "INSERT OR REPLACE INTO jobs (id, uid, argv, nodes, n, batch, state, started) VALUES (?,?,?,?,?,?,?,?)",
            tuple(row.values()),
        )
        f = open(self.path(job), "wb")  # noqa: SIM115 (the record closes it when the job ends)
        rec = self.running[job] = JobRecord(self, job, f, row)
        if absent:
            rec.add([[["s", 255, "absent"], absent, len(NodeSet(absent))]])
        return rec

    def finished(self, rec: JobRecord, rep_bytes: int, rep_frames: int) -> None:
        self.running.pop(rec.id, None)
        self.db.execute(
            "UPDATE jobs SET state='done', status=?, ok=?, failed=?, ended=?, bytes=?, rep_bytes=?, rep_frames=?,"
            " truncated=? WHERE id=?",
            (rec.status, rec.ok, rec.failed, time.time(), rec.bytes, rep_bytes, rep_frames, int(rec.truncated), rec.id),
        )
        self.enforce_retention()

    def enforce_retention(self) -> None:
        """Forget the oldest finished jobs beyond ``keep_jobs`` jobs or ``keep_bytes`` of output."""
        rows = self.db.execute("SELECT id, bytes FROM jobs WHERE state != 'running' ORDER BY id DESC").fetchall()
        total = 0
        drop = []
        for i, (job, size) in enumerate(rows):
            total += size
            if i >= self.keep_jobs or (total > self.keep_bytes and i > 0):
                drop.append(job)
        for job in drop:
            self.db.execute("DELETE FROM jobs WHERE id=?", (job,))
            with contextlib.suppress(OSError):
                os.unlink(self.path(job))

    def get(self, job: int) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job,)).fetchone()
        return _row(row) if row else None

    def list(self, uid: int | None) -> list[dict[str, Any]]:
        if uid is None:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY id").fetchall()
        else:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE uid=? ORDER BY id", (uid,)).fetchall()
        out = [_row(r) for r in rows]
        for r in out:  # a running job's counts live in memory
            rec = self.running.get(r["id"])
            if rec is not None:
                r.update(ok=rec.ok, failed=rec.failed, bytes=rec.bytes)
        return out


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(_COLUMNS.split(", "), row, strict=True))
    d["argv"] = json.loads(d["argv"])
    d["batch"] = bool(d["batch"])
    d["truncated"] = bool(d["truncated"])
    return d


class JobRequest(Body):
    """``output``: a job's output, replayed (and followed while it runs)."""

    job: int


class JobService:
    """The master's ``jobs``, ``output`` and ``wait`` requests."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def service(self) -> ServiceTable:
        # `wait` comes through MasterProcs (a gpid or a job id)
        return ServiceTable(
            "jobs",
            requests={
                "jobs": ClientRequest(self._jobs, body=Body),
                "output": ClientRequest(self._output, body=JobRequest),
            },
        )

    def _visible(self, cred: PeerCred) -> int | None:
        """Whose jobs a caller may see: everyone's for root and the master's owner, else their own."""
        return None if has_role(Role.OWNER, cred) else cred.uid

    def _job(self, job: int, cred: PeerCred) -> dict[str, Any]:
        if not 0 <= job < 1 << 63:  # SQLite's integers: a larger one would fail the query itself
            raise GprocError(f"no job {job}")
        row = self.store.get(job)
        who = self._visible(cred)
        if row is None or (who is not None and row["uid"] != who):
            raise GprocError(f"no job {job} (finished jobs are kept up to the retention limit)")
        return row

    async def _jobs(self, link: Link, req: Body, cred: PeerCred) -> None:
        link.send({"t": "ret", "r": {"jobs": self.store.list(self._visible(cred))}})

    async def _output(self, link: Link, req: JobRequest, cred: PeerCred) -> None:
        """Replay a job's output; for a running job, follow it to its end.

        The job's file is the only source: a follower is woken when records are added and reads on
        from where it stopped, so a client that does not read holds nothing here but its place in
        the file (a queue of the records added meanwhile would grow with the job's output). Past
        ``keep_bytes`` a follower sees what a later replay sees: the statuses without the output."""
        row = self._job(req.job, cred)
        link.send({"t": "job", "job": row["id"], "n": row["n"], "absent": "", "state": row["state"]})
        rec = self.store.running.get(row["id"])
        wake = asyncio.Event()

        def follow(_: Out | None) -> None:
            wake.set()

        if rec is not None:
            rec.followers.append(follow)
        sent = 0
        try:
            while True:
                wake.clear()
                ended = rec is None or rec.done.done()
                upto = None if rec is None else rec.bytes
                for out in self.store.records(row["id"], None if upto is None else upto - sent, sent):
                    if not link.send({"t": "out", "g": out}):
                        return
                    await link.drain()
                if ended or rec is None:
                    break
                sent = upto or 0
                if rec.bytes > sent or rec.done.done():
                    continue
                try:
                    async with asyncio.timeout(TICK):
                        await wake.wait()
                except TimeoutError:
                    if not link.send({"t": "tick"}):
                        return
        finally:
            if rec is not None and follow in rec.followers:
                rec.followers.remove(follow)
        link.send({"t": "end"})

    async def wait(self, link: Link, job: int, cred: PeerCred) -> None:
        """The job's exit status, once it ended (ticks keep the client patient meanwhile)."""
        row = self._job(job, cred)
        rec = self.store.running.get(row["id"])
        state, status = row["state"], row["status"]
        if rec is not None:
            while not rec.done.done():
                try:
                    async with asyncio.timeout(TICK):
                        await asyncio.shield(rec.done)
                except TimeoutError:
                    if not link.send({"t": "tick"}):
                        return
            state, status = "done", rec.done.result()
        link.send({"t": "ret", "r": {"job": row["id"], "state": state, "status": status}})
