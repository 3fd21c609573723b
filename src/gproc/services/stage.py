"""Staging on a node: the ``have`` and ``put`` ops that fill the store, and a job's view to run from.

``have`` answers which of a bundle's files this node lacks (keys ``("n", hash)``); ``put`` carries one
chunk of one file to exactly the ranks that lack it, so a tree link carries a file at most once and an
interior node forwards each chunk to its children as soon as it arrives (the overlay forwards an op
before running it). Both handlers are synchronous, so chunks are written inline, in arrival order;
the file enters the store once its hash is verified.

For ``exec``, ``prepare`` builds the job's view (see ``gproc.store``) and the command that runs the
program through its shipped ELF interpreter, so the executable and every shared object it maps come
from binRoot. With ``-p`` (Linux, root) the view lives in a fresh tmpfs at binRoot inside a private
mount namespace, gone with the job's last process; otherwise in ``binRoot/jobs/<job>``, removed once
the job's process group is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import posixpath
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gproc import platform, privateview, wire
from gproc.errors import StagingError
from gproc.messages import Body
from gproc.privateview import PrivateView
from gproc.services.base import ServiceTable, typed
from gproc.store import (
    HASH_RE,
    MAX_SIZE,
    Entry,
    Incoming,
    Manifests,
    Placer,
    Store,
    View,
    check_path,
    link_placer,
    remove_tree,
)

if TYPE_CHECKING:
    from gproc.overlay import Node, Op

INCOMING_IDLE = 120.0  # a partial file untouched this long (its sender died) is dropped
GROUP_POLL = 0.5  # how often a finished job's process group is checked for stragglers


@dataclass
class Launch:
    """A job ready to start: its command, its view's root, and how the view gets built."""

    cmd: platform.Command
    view: str
    entries: list[Entry]
    uid: int
    gid: int


class HaveBody(Body):
    """The ``have`` op: which of these files (``[hash, size, executable]``) does this node lack; the
    ones it has stay for job ``j`` until it starts."""

    h: list[tuple[str, int, bool]]
    j: int | None = None


class PutBody(Body):
    """The ``put`` op: ``d``, the bytes at offset ``o`` of the file with hash ``h`` (``z`` bytes,
    executable ``x``), shipped for job ``j``."""

    h: str
    o: int
    d: bytes
    z: int
    x: bool
    j: int


class StageService:
    """One node's store, its ``have``/``put`` handlers, and job views."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.store = Store(node.cfg.bin_root, node.cfg.store_max)
        self.put_pins: dict[int, float] = {}  # jobs whose received files stay until they start, by last chunk
        self.incoming: dict[tuple[int, str], Incoming] = {}
        self.private_failed = False  # a private mount was refused here once: do not try again
        self.bytes_received = 0  # file bytes this node stored for itself
        self.stored_at = 0.0  # time.monotonic() when the last file was stored (benchmarks compare nodes)
        self.job_dirs: set[str] = set()
        self.manifests = Manifests()  # a job's nodes and a program's jobs carry the same manifest

    def service(self) -> ServiceTable:
        return ServiceTable(
            "stage",
            ops={
                "have": typed(HaveBody, self.have),
                "put": typed(PutBody, self.put),
                "counters": typed(Body, self.counters),
            },
            stop=self.close,
        )

    def counters(self, op: Op, b: Body) -> None:
        """Bytes and frames this node received over its parent link, file bytes it stored, and when
        (monotonic clock) it stored the last one."""
        parent = self.node.parent
        c = parent.counter if parent is not None else wire.Counter()
        op.emit(("c", c.bytes_in, c.frames_in, self.bytes_received, round(self.stored_at, 4)))
        op.emit(("s", 0, ""))

    def close(self) -> None:
        """Node stopping: drop partial files and the views of jobs (their processes are killed)."""
        for inc in self.incoming.values():
            self.store.abort(inc)
        self.incoming.clear()
        for d in list(self.job_dirs):
            remove_tree(d)
        self.job_dirs.clear()

    # ---- filling the store ----

    def have(self, op: Op, b: HaveBody) -> None:
        if not all(_need_item(h, size) for h, size, _ in b.h):
            op.emit(("s", 255, "bad have request"))
            return
        self.store.ensure()
        job = b.j
        for h, size, x in b.h:
            if not self.store.has(h, size):
                op.emit(("n", h))
            elif self.store.max_bytes is not None and job is not None:  # kept for the job until it starts
                self.store.pin(("put", job), [self.store.name(h, x), self.store.name(h, not x)])
                self.put_pins[job] = time.monotonic()
        op.emit(("s", 0, ""))

    def put(self, op: Op, b: PutBody) -> None:
        h, off, data, size, x, job = b.h, b.o, b.d, b.z, b.x, b.j
        if not _need_item(h, size):
            op.emit(("s", 255, "bad file chunk"))
            return
        key = (job, h)
        inc = self.incoming.get(key)
        if inc is None:
            if off != 0:
                op.emit(("s", 255, f"chunk of {h[:16]}… without its start"))
                return
            self._expire()
            inc = self.incoming[key] = self.store.begin(h, size, x, str(job))
            if self.store.max_bytes is not None:
                self.store.pin(("put", job), [self.store.name(h, x)])
                self.put_pins[job] = time.monotonic()
        try:
            done = self.store.write(inc, off, data)
        except StagingError:
            self.store.abort(inc)
            del self.incoming[key]
            raise
        self.bytes_received += len(data)
        if done:
            del self.incoming[key]
            self.stored_at = time.monotonic()
        op.emit(("s", 0, ""))

    def _expire(self) -> None:
        now = time.monotonic()
        for key, inc in list(self.incoming.items()):
            if now - inc.touched > INCOMING_IDLE:
                self.store.abort(inc)
                del self.incoming[key]
        for job, t in list(self.put_pins.items()):  # received for a job that never started here
            if now - t > INCOMING_IDLE and not any(k[0] == job for k in self.incoming):
                self.store.unpin(("put", job))
                del self.put_pins[job]

    # ---- running from the view ----

    async def start(
        self,
        job: int,
        bundle: Any,
        argv: list[str],
        env: dict[str, str],
        uid: int,
        gid: int,
        *,
        stdin: bool = False,
        spawner: platform.Spawner | None = None,
    ) -> platform.Process:
        """Stage the job's bundle and start it (through ``spawner``'s program starter where it has
        one); StagingError or OSError when it cannot."""
        if not isinstance(bundle, dict):
            raise StagingError("bad bundle")
        store, pin = self.store, object()
        if store.max_bytes is not None:  # the job's files stay until its last process is gone
            files = bundle.get("files")
            files = files if isinstance(files, list) else []
            names = [store.name(f[2], bool(f[4] & 0o111)) for f in files if _file_item(f)]
            store.pin(pin, names, uid)
            store.unpin(("put", job))
            self.put_pins.pop(job, None)
        try:
            proc = await self._start(job, bundle, argv, env, uid, gid, stdin, spawner)
        except BaseException as e:
            store.unpin(pin)
            if not isinstance(e, OSError):
                raise
            run = bundle.get("run")
            built_for = run.get("machine") if isinstance(run, dict) else None
            here = os.uname().machine
            if e.errno == errno.ENOEXEC and isinstance(built_for, str) and built_for != here:
                raise OSError(e.errno, f"{e.strerror} (built for {built_for[:40]}, this node is {here})") from None
            raise
        if store.max_bytes is not None:
            self.node.spawn(self._unpin_when_done(proc, pin))
        return proc

    async def _start(
        self,
        job: int,
        bundle: dict[str, Any],
        argv: list[str],
        env: dict[str, str],
        uid: int,
        gid: int,
        stdin: bool,
        spawner: platform.Spawner | None,
    ) -> platform.Process:
        private = bool(bundle.get("private")) and platform.private_mounts_possible() and not self.private_failed
        if private:
            launch = self.prepare(bundle, argv, env, uid, gid, self.store.root, stdin)
            view = PrivateView(self.store.root, self.store.dir, bundle.get("files"), uid, gid)
            enter = functools.partial(privateview.enter, view, launch.entries)
            try:
                if spawner is not None:
                    return await spawner.start_private(launch.cmd, view.to_wire(), enter)
                return await platform.spawn_private(enter, launch.cmd)
            except platform.NamespaceError as e:
                self.node.log.warning("private mount namespace refused (%s): staging in a per-job directory", e)
                self.private_failed = True
        root = os.path.join(self.store.jobs, f"{job}-{self.node.rank}-{secrets.token_hex(4)}")
        launch = self.prepare(bundle, argv, env, uid, gid, root, stdin)
        os.mkdir(root, 0o700)
        self.job_dirs.add(root)
        try:
            proc = await platform.spawn_built(lambda: self._build(launch, link_placer(self.store)), launch.cmd)
        except BaseException:
            self._forget_dir(root)
            raise
        self.node.spawn(self._remove_when_done(proc, root))
        return proc

    def prepare(
        self,
        bundle: dict[str, Any],
        argv: list[str],
        env: dict[str, str],
        uid: int,
        gid: int,
        view: str,
        stdin: bool = False,
    ) -> Launch:
        """Check a bundle against the store and work out the command; nothing is written yet."""
        entries = self.manifests.parse(bundle.get("files"))
        self.store.ensure()
        for e in entries:
            if e.kind == "f":
                self.store.ensure_variant(e.hash, e.size, e.executable)
        cwd = bundle.get("cwd")
        cwd = _in(view, check_path(cwd, "working directory")) if cwd is not None else view
        run = bundle.get("run")
        cmd_argv, executable = (argv, None) if run is None else _command(view, run, argv)
        env = {**env, "GPROC_BINROOT": view}
        cmd = platform.Command(cmd_argv, cwd, env, executable, uid, gid, platform.user_groups(uid, gid), stdin)
        return Launch(cmd, view, entries, uid, gid)

    @staticmethod
    def _build(launch: Launch, place: Placer) -> None:
        with View(launch.view) as v:
            v.build(launch.entries, place)
            v.give(launch.uid, launch.gid)

    async def _remove_when_done(self, proc: platform.Process, root: str) -> None:
        """Remove a job's directory once its last process (the whole process group) is gone."""
        with contextlib.suppress(asyncio.CancelledError):
            await proc.exited
            while platform.group_alive(proc.pid):
                await asyncio.sleep(GROUP_POLL)
            await asyncio.to_thread(self._forget_dir, root)

    async def _unpin_when_done(self, proc: platform.Process, pin: object) -> None:
        try:
            await proc.exited
            while platform.group_alive(proc.pid):
                await asyncio.sleep(GROUP_POLL)
        finally:
            self.store.unpin(pin)

    def _forget_dir(self, root: str) -> None:
        remove_tree(root)
        self.job_dirs.discard(root)


def _need_item(h: str, size: int) -> bool:
    """A file's hash and size as ``have`` and ``put`` carry them (their types checked already)."""
    return HASH_RE.match(h) is not None and 0 <= size <= MAX_SIZE


def _in(view: str, path: str) -> str:
    """Where a bundle path is inside the view."""
    return view if path == "/" else view.rstrip("/") + path


def _command(view: str, run: Any, argv: list[str]) -> tuple[list[str], str | None]:
    """The command that starts the shipped program: through its shipped ELF interpreter, with ld.so
    told to find libraries only in the view (``--inhibit-cache``, ``--library-path``, ``--preload``
    in load order), or directly for a static executable. Returns (argv, executable)."""
    if not isinstance(run, dict):
        raise StagingError("bad run description")
    exe, interp, head, libs, ldso = run.get("exe"), run.get("interp"), run.get("head"), run.get("libs"), run.get("ldso")
    if not (isinstance(head, list) and head and all(_head_item(h) for h in head)):
        raise StagingError("bad run description: argv head")
    if not (isinstance(libs, list) and isinstance(ldso, list) and all(isinstance(x, str) for x in ldso)):
        raise StagingError("bad run description: libraries")
    libs = [_in(view, check_path(p, "library path")) for p in libs]
    args = [_in(view, check_path(t, "script path")) if is_path else t for t, is_path in head] + argv[1:]
    exe = _in(view, check_path(exe, "executable"))
    if interp is None:
        return args, exe
    cmd = [_in(view, check_path(interp, "ELF interpreter"))]
    if "inhibit-cache" in ldso:
        cmd.append("--inhibit-cache")
    dirs = list(dict.fromkeys(posixpath.dirname(p) for p in libs))
    if dirs and not any(":" in d or ";" in d for d in dirs):
        cmd += ["--library-path", ":".join(dirs)]
    if "preload" in ldso and libs and not any(":" in p or " " in p for p in libs):
        cmd += ["--preload", ":".join(libs)]
    if "argv0" in ldso:
        cmd += ["--argv0", args[0]]
    return [*cmd, exe, *args[1:]], None


def _file_item(f: Any) -> bool:
    """A manifest's file entry, well enough formed to name its store file (parse_manifest checks all)."""
    return (
        isinstance(f, list)
        and len(f) == 5
        and f[0] == "f"
        and isinstance(f[2], str)
        and HASH_RE.match(f[2]) is not None
        and isinstance(f[4], int)
    )


def _head_item(h: Any) -> bool:
    return isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) and isinstance(h[1], bool)
