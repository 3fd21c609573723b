"""Group file operations (SPEC §8, §9): cat, stat, grep, tail [-f], cp and gather on many nodes.

On each node (``FileService``): ``fread``, ``fstat`` and ``flines`` answer for each path, ``ffollow``
streams appended lines until ``funfollow``, ``finstall`` writes a copied tree from the node's store,
``fwalk`` and ``fget`` list and read what ``gather`` fetches, ``flist`` lists a directory (``gproc
mount``; the listings of many nodes reduce to the union of their names, ``reduce.Names``). All of
them act with the caller's rights (``fileio``) and expand ``%h`` in paths to the node's name.

Answers reduce inside the tree. With ``equiv`` (the default) every distinct answer is a group key
(``("c", path, data)``, ``("t", path, type, size, mtime, mode, owner, group, sha256, target)``,
``("g", path, lineno, line)``, ``("m", path, tree)``) and identical answers merge into one node set,
as ``-b`` does for output. With a numeric reducer (``sum``, ``min``, ``max``, ``avg``, ``hist``) each
node gives a number to the op's reducer (``gproc.reduce``) and the master receives one value per
child link, whatever the number of nodes; a node whose answer is not a number says so as a group
``("e", path, reason)``, so errors still arrive per node set.

At the master (``MasterFiles``): the client requests ``files`` (cat/stat), ``lines`` (grep, tail),
``follow`` (tail -f), ``list``, ``cp`` and ``gather``. ``cp`` ships the bytes with the exec's machinery
(``Shipper``: content-addressed, chunks pipelined down the tree, hash-verified, each link carries a
file at most once), then one ``finstall`` op writes them. ``gather`` fetches each distinct file once,
from one node that holds it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import grp
import itertools
import os
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from gproc import platform
from gproc import ranks as rankset
from gproc.bundle import CHUNK
from gproc.errors import GprocError, StagingError, UsageError
from gproc.groups import freeze
from gproc.messages import Body, Selected
from gproc.reduce import Avg, Hist, Max, Min, Names, Reducer, Sum
from gproc.services import fileio
from gproc.services.base import ClientRequest, MasterApi, ServiceTable, typed, with_ticks
from gproc.store import Store, parse_manifest

if TYPE_CHECKING:
    from gproc.overlay import Handler, Link, Node, Op, Request
    from gproc.platform import PeerCred
    from gproc.services.ship import Shipper

WORKER_TIMEOUT = 600.0  # a worker reading a huge file over a slow filesystem; it is killed after this
STAT_FIELDS = ("size", "mtime")
DEFAULT_EDGES: list[int | float] = [0] + [10**k for k in range(10)]  # decades up to 10**9
LINES_LIMIT = 60.0  # grep: seconds a node's search may take (the pattern is the caller's)
FOLLOW_POLL = 0.25  # tail -f: how often a node looks for appended lines
FOLLOW_LIMIT = 24 * 3600.0  # a tail -f whose client never said stop ends after this
FETCH_WINDOW = 8  # gather: chunks asked for at a time
MAX_INSTALL_FDS = 512  # store files handed to one worker


def reducer_for(agg: str, edges: list[float] | None = None) -> Reducer[Any] | None:
    """The reducer of a numeric aggregation (None for ``equiv``/``concat``); UsageError if unknown."""
    simple: dict[str, type[Sum] | type[Min] | type[Max] | type[Avg]] = {"sum": Sum, "min": Min, "max": Max, "avg": Avg}
    if agg in simple:
        return simple[agg]()
    if agg == "hist":
        try:
            return Hist(list(edges) if edges else list(DEFAULT_EDGES))
        except GprocError as e:
            raise UsageError(str(e)) from None
    if agg in ("equiv", "concat"):
        return None
    raise UsageError(f"unknown aggregation {agg[:40]!r} (one of {', '.join(fileio.AGGREGATIONS)})")


def parse_number(data: bytes) -> int | float:
    """A file's content as one number (ValueError when it is not one)."""
    text = data.decode("ascii", "strict").strip()
    try:
        return int(text)
    except ValueError:
        v = float(text)
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("not finite") from None
        return v


async def as_user(
    uid: int,
    gid: int,
    fn: str | fileio.Operation,
    args: dict[str, Any],
    fds: list[int] | None = None,
    limit: float | None = None,
) -> dict[str, Any]:
    """Run a ``fileio`` operation with the rights of ``uid``/``gid``: in a thread when the daemon
    already is that user, else in a forked child that became that user (only a root daemon can).
    With ``limit`` (seconds) always in a child, killed when it takes longer: work whose cost the
    caller controls (a regular expression) must not hold a daemon thread."""
    euid = os.geteuid()
    if uid == euid and limit is None:
        run = fileio.OPERATIONS[fn] if isinstance(fn, str) else fn
        return await asyncio.to_thread(run, args, list(fds or []))
    if uid != euid and euid != 0:
        raise StagingError(f"node daemon runs as uid {euid} and cannot act for uid {uid}")
    groups = platform.user_groups(uid, gid)
    seconds = WORKER_TIMEOUT if limit is None else limit
    answer = await asyncio.to_thread(fileio.forked, uid, gid, groups, fn, args, list(fds or []), seconds)
    if answer is None:
        name = fn if isinstance(fn, str) else fn.__name__
        raise StagingError(f"{name} failed or took longer than {seconds:.0f} s")
    return answer


# ---- op bodies and client requests ------------------------------------------------------------------

Id = Annotated[int, msgspec.Meta(ge=0)]
Paths = Annotated[list[str], msgspec.Meta(min_length=1)]


class AsUser(Body):
    """What every files op carries: the caller, whose rights the node acts with."""

    uid: Id
    gid: Id


class ReadBody(AsUser, kw_only=True):
    """The ``fread`` op: each path's content (a number each, with a numeric reducer)."""

    paths: Paths


class StatBody(ReadBody, kw_only=True):
    """The ``fstat`` op: each path's facts (its ``field``, with a numeric reducer)."""

    field: str = "size"


class LinesBody(ReadBody, kw_only=True):
    """The ``flines`` op: lines matching ``pattern`` (grep), or the ``last`` lines (tail -n)."""

    pattern: str | None = None
    last: int | None = None
    ignore_case: bool = False
    invert: bool = False


class FollowBody(ReadBody, kw_only=True):
    """The ``ffollow`` op: the ``last`` lines of the first path, then those appended (tail -f)."""

    last: int = 10


class UnfollowBody(Body):
    """The ``funfollow`` op: end the ``ffollow`` op ``op`` here."""

    op: int


class WalkBody(ReadBody, kw_only=True):
    """The ``fwalk`` op: each path's tree (``recursive``) with a SHA-256 per file."""

    recursive: bool = False


class ListBody(ReadBody, kw_only=True):
    """The ``flist`` op: one path's names with their attributes (``names``: false, only the path's
    own), into the ``names`` reducer."""

    names: bool = True


class GetBody(AsUser, kw_only=True):
    """The ``fget`` op: ``n`` bytes at offset ``o`` of ``rel`` under ``path``."""

    path: str
    rel: str
    o: int
    n: int


class InstallBody(AsUser, kw_only=True):
    """The ``finstall`` op: write the shipped ``tree`` (a manifest, ``store.parse_manifest``) at
    ``dest``, with each entry's ``meta`` (``[mtime, uid, gid]``); ``owner``: keep those owners."""

    dest: str
    tree: list[Any]
    meta: dict[str, Any]
    owner: bool = False


class FilesRequest(Selected, kw_only=True):
    """``files``: ``cat`` or ``stat`` (``what``) of paths, reduced with ``agg`` (§10.1)."""

    what: str
    paths: list[str]
    agg: str = "equiv"
    edges: list[int | float] | None = None
    field: str = "size"


class ListRequest(Selected, kw_only=True):
    """``list``: one directory on the selected nodes, the union of their names (§10.1)."""

    paths: list[str]
    names: bool = True


class LinesRequest(Selected, kw_only=True):
    """``lines``: grep (``pattern``) or tail -n (``last``) on the selected nodes."""

    paths: list[str]
    pattern: str | None = None
    last: int | None = None
    ignore_case: bool = False
    invert: bool = False


class FollowRequest(Selected, kw_only=True):
    """``follow``: tail -f of one path on the selected nodes."""

    paths: list[str]
    last: int = 10


class GatherRequest(Selected, kw_only=True):
    """``gather``: the selected nodes' copies of paths, to the client."""

    paths: list[str]
    recursive: bool = False


class CpRequest(Selected, kw_only=True):
    """``cp``: ship ``tree`` (with ``meta``) to the selected nodes and install it at ``dest``."""

    tree: list[Any]
    meta: dict[str, Any]
    dest: str
    owner: bool = False


class FileService:
    """One node's side: answer reads and stats, install copied trees."""

    def __init__(self, node: Node, store: Store) -> None:
        self.node = node
        self.store = store
        self.unfollowed: set[int] = set()  # ids of ``tail -f`` ops told to end

    def service(self) -> ServiceTable:
        ops: dict[str, Handler] = {
            "fread": typed(ReadBody, self.fread),
            "fstat": typed(StatBody, self.fstat),
            "finstall": typed(InstallBody, self.finstall),
            "fwalk": typed(WalkBody, self.fwalk),
            "fget": typed(GetBody, self.fget),
            "flines": typed(LinesBody, self.flines),
            "ffollow": typed(FollowBody, self.ffollow),
            "funfollow": typed(UnfollowBody, self.funfollow),
            "flist": typed(ListBody, self.flist),
        }
        return ServiceTable("files", ops=ops)

    def _where(self, op: Op, template: str) -> str | None:
        try:
            return fileio.node_path(template, self.node.cfg.name)
        except fileio.PathError as e:
            op.emit(("e", template, str(e)))
            return None

    async def _answers(self, op: Op, b: ReadBody, fn: str, **args: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """For each path of ``b``: ``fn``'s answer on this node, as the caller; a path that cannot
        be expanded or answered is emitted as an error group instead."""
        uid, gid = b.uid, b.gid
        for template in b.paths:
            path = self._where(op, template)
            if path is None:
                continue
            r = await as_user(uid, gid, fn, {**args, "path": path})
            if "err" in r:  # said of the template, so that nodes failing alike merge into one group
                op.emit(("e", template, str(r["err"]).replace(path, template, 1)))
            else:
                yield template, r

    async def fread(self, op: Op, b: ReadBody) -> None:
        async for template, r in self._answers(op, b, "read"):
            if op.reducer is None:
                op.emit(("c", template, r["data"]))
                continue
            try:
                op.give(parse_number(r["data"]))
            except (ValueError, UnicodeDecodeError):
                op.emit(("e", template, f"{template}: not a number: {r['data'][:40]!r}"))

    async def fstat(self, op: Op, b: StatBody) -> None:
        field = b.field
        # reduced to a size or mtime: no SHA-256 (it would read every byte for nothing)
        async for template, r in self._answers(op, b, "stat", hash=op.reducer is None):
            if op.reducer is not None:
                op.give(r[field] if field in STAT_FIELDS else r["size"])
            else:
                r["owner"], r["group"] = platform.user_name(r["owner"]), _group_name(r["group"])
                keys = ("type", "size", "mtime", "mode", "owner", "group", "sha256", "target")
                op.emit(("t", template, *(r[k] for k in keys)))

    async def flines(self, op: Op, b: LinesBody) -> None:
        """``grep`` and ``tail -n``: each selected line as ``("g", path, number, line)``, so the same
        line at the same place on many nodes is one group."""
        uid, gid, last = b.uid, b.gid, b.last
        args = {"pattern": b.pattern, "ignore_case": b.ignore_case, "invert": b.invert, "last": last}
        if not (b.pattern is not None or (last is not None and 0 <= last <= fileio.MAX_LINES)):
            raise StagingError("bad lines request")
        for template in b.paths:
            path = self._where(op, template)
            if path is None:
                continue
            r = await as_user(uid, gid, "lines", {**args, "path": path}, limit=LINES_LIMIT)
            if "err" in r:
                op.emit(("e", template, str(r["err"]).replace(path, template, 1)))
                continue
            for number, line in r["lines"]:
                op.emit(("g", template, number, line))
            if not r["lines"]:
                op.emit(("z", template))  # answered, nothing selected (grep's exit status 1)

    async def ffollow(self, op: Op, b: FollowBody) -> None:
        """``tail -f``: the last lines, then lines as they are appended (``("g", path, 0, line)``: the
        same new line on many nodes in one flush window is one group) until ``funfollow`` names this
        op or ``FOLLOW_LIMIT`` passes."""
        uid, gid = b.uid, b.gid
        template = b.paths[0]
        path = self._where(op, template)
        if path is None:
            return
        first = await as_user(uid, gid, "lines", {"path": path, "last": b.last})
        st = await as_user(uid, gid, "stat", {"path": path})
        if "err" in first or "err" in st:
            op.emit(("e", template, str(first.get("err") or st.get("err")).replace(path, template, 1)))
            return
        for number, line in first["lines"]:
            op.emit(("g", template, number, line))
        offset, partial = int(st["size"]), b""
        deadline = asyncio.get_running_loop().time() + FOLLOW_LIMIT
        try:
            while op.id not in self.unfollowed and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(FOLLOW_POLL)
                r = await as_user(uid, gid, "read_range", {"path": path, "o": offset, "n": fileio.MAX_READ})
                if "err" in r:
                    op.emit(("e", template, str(r["err"]).replace(path, template, 1)))
                    return
                if not r["data"]:
                    continue
                offset += len(r["data"])
                *done, partial = (partial + r["data"]).split(b"\n")
                for line in done:
                    op.emit(("g", template, 0, line))
        finally:
            self.unfollowed.discard(op.id)

    def funfollow(self, op: Op, b: UnfollowBody) -> None:
        """End a ``tail -f`` op here (its client left)."""
        target = b.op
        if target in self.node.ops:
            self.unfollowed.add(target)
        op.emit(("s", 0, ""))

    async def flist(self, op: Op, b: ListBody) -> None:
        """A directory's names with their attributes (``"."``: the path itself) to the op's reducer
        (``Names``: the union of every node's names); an error as ``("e", path, reason)``."""
        if len(b.paths) != 1 or op.reducer is None:
            raise StagingError("flist lists one path into a reducer")
        path = self._where(op, b.paths[0])
        if path is None:
            return
        r = await as_user(b.uid, b.gid, "list", {"path": path, "names": b.names})
        if "err" in r:
            op.emit(("e", b.paths[0], str(r["err"]).replace(path, b.paths[0], 1)))
        else:
            op.give(r["entries"])

    async def fwalk(self, op: Op, b: WalkBody) -> None:
        """What ``gather`` will fetch: each path's tree with a SHA-256 per file; nodes holding the
        same tree merge into one group ``("m", path, entries)``."""
        uid, gid = b.uid, b.gid
        for template in b.paths:
            path = self._where(op, template)
            if path is None:
                continue
            r = await as_user(uid, gid, "walk", {"path": path, "recursive": b.recursive})
            if "err" in r:
                op.emit(("e", template, str(r["err"]).replace(path, template, 1)))
            else:
                op.emit(("m", template, freeze(r["entries"])))

    async def fget(self, op: Op, b: GetBody) -> None:
        """One chunk of one file for ``gather`` (sent to one node holding that content)."""
        uid, gid, template, rel, offset, n = b.uid, b.gid, b.path, b.rel, b.o, b.n
        path = self._where(op, template)
        if path is None:
            return
        if rel:
            if rel.startswith("/") or ".." in rel.split("/"):
                raise StagingError("bad gather request: path escapes")
            path = os.path.join(path, rel)
        r = await as_user(uid, gid, "read_range", {"path": path, "o": offset, "n": n})
        # "b", not "d": a reply key starting with "d" is a line edit (merge.py)
        op.emit(("e", template, str(r["err"])) if "err" in r else ("b", r["data"]))

    async def finstall(self, op: Op, b: InstallBody) -> None:
        """Write a shipped tree at DEST (``%h`` expanded) from this node's store, as the caller."""
        uid, gid, dest, tree, meta, keep_owner = b.uid, b.gid, b.dest, b.tree, b.meta, b.owner
        entries = parse_manifest(tree)  # validates paths and kinds (link targets are taken verbatim below)
        raw_links = {i[1]: i[2] for i in tree if isinstance(i, list) and i and i[0] == "l"}
        path = self._where(op, dest)
        if path is None:
            return
        first: list[list[Any]] = []  # directories and links, written with the first files
        files: list[tuple[Any, int]] = []
        for e in sorted(entries, key=lambda e: e.path):
            m = meta.get(e.path)
            mtime = m[0] if isinstance(m, list) and m and isinstance(m[0], int) else 0
            if e.kind == "f":
                files.append((e, mtime))
            elif e.kind == "l":
                first.append(["l", e.path, 0, mtime, raw_links.get(e.path, e.target)])
            else:
                first.append(["d", e.path, e.mode, mtime, 0])
        owners = None
        if keep_owner and uid == 0:  # cp -p by root: each entry keeps the owner it had on the client
            owners = {p: m[1:3] for p, m in meta.items() if isinstance(m, list) and len(m) == 3}
        # at most MAX_INSTALL_FDS store files per worker; directories get their times again at the end
        batches = [files[i : i + MAX_INSTALL_FDS] for i in range(0, len(files), MAX_INSTALL_FDS)] or [[]]
        into_dir: bool | None = None  # decided by the first batch: later ones must not see its work
        r: dict[str, Any] = {}
        for n, batch in enumerate(batches):
            items = first if n == 0 else []
            fds: list[int] = []
            try:
                for e, mtime in batch:
                    stored = self.store.ensure_variant(e.hash, e.size, e.executable)
                    fds.append(os.open(stored, os.O_RDONLY | os.O_CLOEXEC))
                    items = [*items, ["f", e.path, e.mode, mtime, len(fds) - 1]]
                args = {"dest": path, "items": items, "owners": owners, "into_dir": into_dir}
                r = await as_user(uid, gid, "install", args, fds)
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if "err" in r:
                break
            into_dir = bool(r.get("into_dir"))
        if "err" not in r and len(batches) > 1:
            dirs = [i for i in first if i[0] == "d"]
            r = await as_user(
                uid, gid, "install", {"dest": path, "items": dirs, "owners": owners, "into_dir": into_dir}
            )
        if "err" in r:
            op.emit(("s", 1, str(r["err"])))
        else:
            op.emit(("s", 0, ""))


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class MasterFiles:
    """The master's side: the ``files`` (cat/stat) and ``cp`` client requests."""

    def __init__(self, master: MasterApi, shipper: Shipper) -> None:
        self.m = master
        self.shipper = shipper

    def service(self) -> ServiceTable:
        return ServiceTable(
            "files-master",
            requests={
                "files": ClientRequest(self.files, body=FilesRequest),
                "cp": ClientRequest(self.cp, body=CpRequest),
                "gather": ClientRequest(self.gather, body=GatherRequest),
                "lines": ClientRequest(self.lines, body=LinesRequest),
                "follow": ClientRequest(self.follow, body=FollowRequest),
                "list": ClientRequest(self.listdir, body=ListRequest),
            },
        )

    async def files(self, link: Link, req: FilesRequest, cred: PeerCred) -> None:
        """``cat`` or ``stat`` of paths on the selected nodes, reduced with ``agg``."""
        what, paths = req.what, req.paths
        if what not in ("cat", "stat"):
            raise UsageError("files: what must be cat or stat")
        reducer = reducer_for(req.agg, req.edges)
        if not paths:
            raise UsageError("no paths given")
        try:
            for p in paths:
                fileio.check_template(p)
        except fileio.PathError as e:
            raise UsageError(str(e)) from None
        field = req.field
        if field not in STAT_FIELDS:
            raise UsageError(f"stat field must be one of {', '.join(STAT_FIELDS)}")
        targets, absent = self.m.selection(req)
        kind = {"cat": "fread", "stat": "fstat"}[what]
        # numeric answers: one op per path, so each path gets its own value
        batches = [[p] for p in paths] if reducer is not None else [paths]

        async def one(batch: list[str]) -> dict[str, Any]:
            body = StatBody(uid=cred.uid, gid=cred.gid, paths=batch, field=field)
            r = self.m.request(kind, {**body.wire(), "gather": True}, targets, reducer)
            whole = await r.wait()
            value = whole.value
            if isinstance(reducer, Avg):
                value = {"mean": Avg.mean(value), "count": value[1]}
            elif isinstance(reducer, Hist):
                value = {"edges": reducer.edges, "counts": value}
            groups = [[key, self.m.fold_intervals(enc), rankset.count(enc)] for key, enc in whole.groups]
            return {"paths": batch, "value": value, "groups": groups, "rep_bytes": r.op.bytes_in}

        results = await with_ticks(link, asyncio.gather(*(one(b) for b in batches)))
        link.send({"t": "ret", "r": {"results": results, "absent": sorted(absent), "targets": len(targets)}})

    async def listdir(self, link: Link, req: ListRequest, cred: PeerCred) -> None:
        """A directory on the selected nodes: the union of their names (``Names``), and the nodes
        that could not list it, grouped by reason."""
        if len(req.paths) != 1:
            raise UsageError("list takes one path")
        try:
            fileio.check_template(req.paths[0])
        except fileio.PathError as e:
            raise UsageError(str(e)) from None
        targets, absent = self.m.selection(req)
        body = ListBody(uid=cred.uid, gid=cred.gid, paths=req.paths, names=req.names)
        r = self.m.request("flist", {**body.wire(), "gather": True}, targets, Names())
        whole = await with_ticks(link, r.wait())
        assert whole is not None
        found, truncated = whole.value
        groups = [[key, self.m.fold_intervals(enc), rankset.count(enc)] for key, enc in whole.groups]
        entries = [[n, *a] for n, a in sorted(found.items())]
        link.send({"t": "ret", "r": {"entries": entries, "truncated": truncated, "groups": groups,
                                     "absent": sorted(absent), "rep_bytes": r.op.bytes_in}})  # fmt: skip

    async def lines(self, link: Link, req: LinesRequest, cred: PeerCred) -> None:
        """``grep`` (``pattern``) or ``tail -n`` (``last``) on the selected nodes, lines merged."""
        paths, pattern, last = req.paths, req.pattern, req.last
        if not paths:
            raise UsageError("no paths given")
        if not (pattern is not None or (last is not None and last >= 0)):
            raise UsageError("give a pattern or a number of lines")
        if pattern is not None:
            import re

            try:
                re.compile(pattern)
            except re.error as e:
                raise UsageError(f"bad pattern: {e}") from None
        try:
            for p in paths:
                fileio.check_template(p)
        except fileio.PathError as e:
            raise UsageError(str(e)) from None
        targets, absent = self.m.selection(req)
        body = LinesBody(uid=cred.uid, gid=cred.gid, paths=paths, pattern=pattern, last=last,
                         ignore_case=req.ignore_case, invert=req.invert)  # fmt: skip
        whole = await with_ticks(link, self.m.request("flines", {**body.wire(), "gather": True}, targets).wait())
        assert whole is not None
        groups = [[key, self.m.fold_intervals(enc), rankset.count(enc)] for key, enc in whole.groups]
        link.send({"t": "ret", "r": {"groups": groups, "absent": sorted(absent)}})

    async def follow(self, link: Link, req: FollowRequest, cred: PeerCred) -> None:
        """``tail -f``: lines streamed to the client (``out`` frames) until it leaves (Ctrl-C), then
        every node is told to stop and the op ends."""
        paths, last = req.paths, req.last
        if len(paths) != 1:
            raise UsageError("tail -f follows one path")
        if not 0 <= last <= fileio.MAX_LINES:
            raise UsageError(f"tail: lines must be 0 to {fileio.MAX_LINES}")
        try:
            fileio.check_template(paths[0])
        except fileio.PathError as e:
            raise UsageError(str(e)) from None
        targets, absent = self.m.selection(req)
        link.send({"t": "job", "job": 0, "n": len(targets), "absent": ",".join(sorted(absent))})
        r = self.m.request("ffollow", FollowBody(uid=cred.uid, gid=cred.gid, paths=paths, last=last).wire(), targets)
        gone = asyncio.ensure_future(link.receive())  # "stop", or the client closing, ends it
        try:
            stream = asyncio.ensure_future(self._stream(link, r))
            await asyncio.wait({gone, stream}, return_when=asyncio.FIRST_COMPLETED)
            if not stream.done():
                await self.m.request("funfollow", UnfollowBody(op=r.op.id).wire(), targets).wait(timeout=30.0)
                await asyncio.wait_for(stream, 30.0)
        finally:
            gone.cancel()
        link.send({"t": "end"})

    async def _stream(self, link: Link, r: Request) -> None:
        async for part in r:
            if part.groups:
                out = [[key, self.m.fold_intervals(enc), rankset.count(enc)] for key, enc in part.groups]
                link.send({"t": "out", "g": out})

    async def gather(self, link: Link, req: GatherRequest, cred: PeerCred) -> None:
        """Bring the selected nodes' copies of paths to the client: the trees first (identical trees
        as one group), then each distinct file's bytes once, read from one node that holds it (so
        they cross each tree link at most once), as ``data`` frames; ``ret`` ends with the trees."""
        paths = req.paths
        if not paths:
            raise UsageError("no paths given")
        try:
            for p in paths:
                fileio.check_template(p)
        except fileio.PathError as e:
            raise UsageError(str(e)) from None
        targets, absent = self.m.selection(req)
        body = WalkBody(uid=cred.uid, gid=cred.gid, paths=paths, recursive=req.recursive)
        walked = await with_ticks(link, self.m.request("fwalk", {**body.wire(), "gather": True}, targets).wait())
        assert walked is not None
        trees: list[list[Any]] = []
        errors: list[list[Any]] = []
        sources: dict[str, tuple[int, str, str, int]] = {}  # sha256 -> (rank, path, rel, size)
        for key, enc in walked.groups:
            ranks = rankset.decode(enc)
            if key[0] == "m":
                trees.append([key[1], key[2], self.m.fold(ranks)])
                for kind, rel, digest, size, *_ in key[2]:
                    if kind == "f" and digest not in sources:
                        sources[digest] = (min(ranks), key[1], rel, size)
            else:
                errors.append([key[-1], self.m.fold(ranks), len(ranks)])
        fetched = await with_ticks(link, self._fetch(link, cred, sources))
        assert fetched is not None
        errors += fetched
        link.send({"t": "ret", "r": {"trees": trees, "errors": errors, "absent": sorted(absent)}})

    async def _fetch(
        self, link: Link, cred: PeerCred, sources: dict[str, tuple[int, str, str, int]]
    ) -> list[list[Any]]:
        """Each distinct file, chunk by chunk from its one source node, to the client in order; at
        most ``FETCH_WINDOW`` chunks asked for at a time."""
        errors: list[list[Any]] = []
        chunks = [(h, o) for h, (_r, _p, _rel, size) in sources.items() for o in range(0, max(size, 1), CHUNK)]
        pending: collections.deque[tuple[str, int, asyncio.Future[Any]]] = collections.deque()
        failed: set[str] = set()

        def ask(h: str, o: int) -> asyncio.Future[Any]:
            rank, path, rel, _size = sources[h]
            body = GetBody(uid=cred.uid, gid=cred.gid, path=path, rel=rel, o=o, n=CHUNK)
            return asyncio.ensure_future(self.m.request("fget", body.wire(), {rank}).wait())

        it = iter(chunks)
        for h, o in itertools.islice(it, FETCH_WINDOW):
            pending.append((h, o, ask(h, o)))
        while pending:
            h, o, fut = pending.popleft()
            whole = await fut
            nxt = next(it, None)
            if nxt is not None:
                pending.append((*nxt, ask(*nxt)))
            if h in failed:
                continue
            data = next((key[1] for key, _enc in whole.groups if key[0] == "b"), None)
            if data is None:
                failed.add(h)
                why = next((str(key[-1]) for key, _enc in whole.groups), "no answer")
                errors.append([why, self.m.fold({sources[h][0]}), 1])
                continue
            link.send({"t": "data", "h": h, "o": o, "d": data})
            await link.drain()
        return errors

    async def cp(self, link: Link, req: CpRequest, cred: PeerCred) -> None:
        """Ship a tree to the selected nodes, then install it at DEST on each (as the caller)."""
        tree, meta, dest = req.tree, req.meta, req.dest
        try:
            fileio.check_template(dest)
        except fileio.PathError as e:
            raise UsageError(str(e)) from None
        entries = parse_manifest(tree)
        if not entries:
            raise UsageError("nothing to copy")
        targets, absent = self.m.selection(req)
        link.send({"t": "job", "job": 0, "n": len(targets), "absent": ",".join(sorted(absent))})
        tag = secrets.randbits(48)  # names the partial files of this transfer in each store
        shipped = await with_ticks(link, self.shipper.distribute(link, tag, entries, targets))
        assert shipped is not None
        ready, failed = shipped
        groups = [[list(key), self.m.fold(ranks), len(ranks)] for key, ranks in failed.items()]
        if ready:
            body = InstallBody(uid=cred.uid, gid=cred.gid, dest=dest, tree=tree, meta=meta, owner=req.owner)
            whole = await with_ticks(link, self.m.request("finstall", {**body.wire(), "gather": True}, ready).wait())
            assert whole is not None
            groups += [[key, self.m.fold_intervals(enc), rankset.count(enc)] for key, enc in whole.groups]
        link.send({"t": "ret", "r": {"groups": groups, "absent": sorted(absent), "targets": len(targets)}})
