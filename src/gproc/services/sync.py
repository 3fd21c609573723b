"""``gproc sync``: DEST on many nodes made a copy of a local tree, moving only what changed.

1. ``fsig`` (every node): for each file of the source tree, the node's copy is the same (size and
   mtime, rsync's quick check: nothing said), missing (``("n", rel)``) or an old version, whose block
   signatures go up as ``("v", rel, sigs)``. These are group keys: nodes holding the same old version
   merge into one node set on the way up, so a thousand nodes with the same version send one
   signature set over each link.
2. The master works out, per distinct old version, which pieces it lacks: the blocks of the new file
   whose signature it does not hold, or the whole file when more than half changed
   (``gproc.blocks``). Pieces are content named by their SHA-256; the exec's ``Shipper`` carries each
   one from the client down to exactly the nodes that lack it: once per link, pipelined, verified.
3. ``fpatch`` (every node that got its pieces): each changed file rebuilt from its old version's
   blocks (copied in the kernel) and the pieces, written under a temporary name and renamed over, as
   the caller (``syncio``); links and directories made; with ``--delete`` the rest removed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from gproc import blocks
from gproc import ranks as rankset
from gproc.errors import StagingError, UsageError
from gproc.messages import Body, Selected
from gproc.services import fileio, syncio
from gproc.services.base import ClientRequest, MasterApi, ServiceTable, typed, with_ticks
from gproc.services.files import MAX_INSTALL_FDS, as_user
from gproc.store import HASH_RE, Entry, Store, parse_manifest

if TYPE_CHECKING:
    from gproc.overlay import Handler, Link, Node, Op
    from gproc.platform import PeerCred
    from gproc.services.ship import Shipper

CACHE_BYTES = 64 << 20  # signatures a node keeps between fsig and fpatch


class SigBody(Body):
    """The ``fsig`` op: the signatures of what this node holds of ``tree`` at ``dest``, as the caller."""

    uid: Annotated[int, msgspec.Meta(ge=0)]
    gid: Annotated[int, msgspec.Meta(ge=0)]
    dest: str
    tree: list[list[Any]]


class PatchBody(SigBody):
    """The ``fpatch`` op: make ``dest`` a copy of ``tree`` from this node's blocks and the received ones."""

    blocks: dict[str, list[str]]
    delete: bool = False


class SyncRequest(Selected, kw_only=True):
    """``sync``: make DEST on the selected nodes a copy of the client's tree (§10.1)."""

    tree: list[Any]
    meta: dict[str, Any]
    dest: str
    blocks: dict[str, Any]
    delete: bool = False


def _node_tree(raw: Any) -> list[list[Any]]:
    """``[[kind, rel, mode, mtime_ns, hash or link target, size]…]`` as the master sends it."""
    ok = isinstance(raw, list) and all(
        isinstance(i, list) and len(i) == 6 and i[0] in ("f", "d", "l") and isinstance(i[1], str)
        and (i[1] == "" or i[1].startswith("/")) and ".." not in i[1].split("/")
        and isinstance(i[2], int) and isinstance(i[3], int) and isinstance(i[4], str) and isinstance(i[5], int)
        for i in raw
    )  # fmt: skip
    if not ok:
        raise StagingError("bad sync tree")
    return list(raw)


class SyncService:
    """One node's side: signatures of what it holds, then the patch."""

    def __init__(self, node: Node, store: Store) -> None:
        self.node = node
        self.store = store
        # path -> (state, ident, sigs) from the last fsig, for the fpatch that follows it
        self.known: collections.OrderedDict[str, tuple[str, list[int], bytes]] = collections.OrderedDict()
        self.known_bytes = 0

    def service(self) -> ServiceTable:
        ops: dict[str, Handler] = {"fsig": typed(SigBody, self.fsig), "fpatch": typed(PatchBody, self.fpatch)}
        return ServiceTable("sync", ops=ops)

    def _remember(self, path: str, state: str, ident: list[int], sigs: bytes) -> None:
        old = self.known.pop(path, None)
        if old is not None:
            self.known_bytes -= len(old[2])
        self.known[path] = (state, ident, sigs)
        self.known_bytes += len(sigs)
        while self.known_bytes > CACHE_BYTES and self.known:
            self.known_bytes -= len(self.known.popitem(last=False)[1][2])

    async def _signatures(self, uid: int, gid: int, path: str, files: list[list[Any]]) -> str | None:
        """Look at this node's copies of ``files``; remembered for fpatch. The error, if any."""
        r = await as_user(uid, gid, syncio.signatures, {"dest": path, "files": files})
        if "err" in r:
            return str(r["err"])
        for rel, state, ident, sigs in r["files"]:
            self._remember(path + rel, state, ident, sigs)
        return None

    async def fsig(self, op: Op, b: SigBody) -> None:
        uid, gid = b.uid, b.gid
        template, tree = b.dest, _node_tree(b.tree)
        try:
            path = fileio.node_path(template, self.node.cfg.name)
        except fileio.PathError as e:
            op.emit(("e", template, str(e)))
            return
        files = [[rel, size, mtime] for kind, rel, _m, mtime, _h, size in tree if kind == "f"]
        err = await self._signatures(uid, gid, path, files)
        if err is not None:  # said of the template, so that nodes failing alike merge into one group
            op.emit(("e", template, err.replace(path, template, 1)))
            return
        for rel, *_ in files:
            state, _ident, sigs = self.known[path + rel]
            if state == "v":
                op.emit(("v", rel, sigs))
            elif state == "n":
                op.emit(("n", rel))
        op.emit(("s", 0, ""))

    async def fpatch(self, op: Op, b: PatchBody) -> None:
        uid, gid = b.uid, b.gid
        template, tree, new_blocks, delete = b.dest, _node_tree(b.tree), b.blocks, b.delete
        try:
            path = fileio.node_path(template, self.node.cfg.name)
        except fileio.PathError as e:
            op.emit(("s", 1, str(e)))
            return
        unknown = [[rel, size, mtime] for kind, rel, _m, mtime, _h, size in tree
                   if kind == "f" and path + rel not in self.known]  # fmt: skip
        if unknown:  # forgotten since fsig (a restart, a full cache): looked at again
            err = await self._signatures(uid, gid, path, unknown)
            if err is not None:
                op.emit(("s", 1, err.replace(path, template, 1)))
                return
        dirs = [["d", rel, mode, mtime, None, 0] for kind, rel, mode, mtime, _x, _s in tree if kind == "d"]
        keep = [rel for _k, rel, *_ in tree if rel] if delete is True and tree and tree[0][0] == "d" else None
        calls: list[tuple[list[list[Any]], list[str]]] = [([], [])]  # (items, store files) per worker
        try:
            for kind, rel, mode, mtime, extra, size in tree:
                if kind == "d":
                    continue
                if kind == "l":
                    calls[-1][0].append(["l", rel, 0, mtime, extra, 0])
                    continue
                how, pieces = self._how(path + rel, extra, size, new_blocks.get(extra))
                items, stored = calls[-1]
                if stored and len(stored) + len(pieces) > MAX_INSTALL_FDS:
                    calls.append(([], []))
                    items, stored = calls[-1]
                base = len(stored)
                stored.extend(pieces)
                items.append(["f", rel, mode, mtime, _renumber(how, base), size])
        except StagingError as e:
            op.emit(("s", 1, f"{template + rel}: {e}"))
            return
        for n, (items, stored) in enumerate(calls):
            last = n == len(calls) - 1
            args = {"dest": path, "items": (dirs if n == 0 or last else []) + items, "delete": keep, "finish": last}
            fds: list[int] = []
            try:
                for p in stored:
                    fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
                r = await as_user(uid, gid, syncio.patch, args, fds)
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if "err" in r:
                op.emit(("s", 1, str(r["err"]).replace(path, template, 1)))
                return
        for _k, rel, *_ in tree:
            self.known.pop(path + rel, None)
        op.emit(("s", 0, ""))

    def _how(self, path: str, h: str, size: int, new_blocks: Any) -> tuple[list[Any] | None, list[str]]:
        """How ``syncio.patch`` makes one file (descriptors numbered from 0) and the store files it
        reads; StagingError when a piece it needs did not arrive."""
        state, ident, sigs = self.known[path]
        if state == "=":
            return None, []
        if size and self.store.has(h, size):
            return ["w", 0], [self.store.ensure_variant(h, size, False)]
        if state == "n" and size:
            raise StagingError("not received")
        if not isinstance(new_blocks, list):
            new_blocks = [h] if size else []
        runs: list[list[Any]] = []
        pieces: list[str] = []
        for k, x, n in blocks.plan(new_blocks, size, sigs):
            if k == "s":
                assert isinstance(x, str)
                if not self.store.has(x, n):
                    raise StagingError(f"block {x[:16]}… not received")
                pieces.append(self.store.ensure_variant(x, n, False))
                runs.append(["s", len(pieces) - 1, n])
            else:
                runs.append(["o", x, n])
        return ["b", ident, runs], pieces


def _renumber(how: list[Any] | None, base: int) -> list[Any] | None:
    if how is None or base == 0:
        return how
    if how[0] == "w":
        return ["w", how[1] + base]
    return ["b", how[1], [[k, x + base if k == "s" else x, n] for k, x, n in how[2]]]


class MasterSync:
    """The master's side: the ``sync`` client request."""

    def __init__(self, master: MasterApi, shipper: Shipper) -> None:
        self.m = master
        self.shipper = shipper

    def service(self) -> ServiceTable:
        return ServiceTable("sync-master", requests={"sync": ClientRequest(self.sync, body=SyncRequest)})

    async def sync(self, link: Link, req: SyncRequest, cred: PeerCred) -> None:
        tree, new_blocks = self._check(req)
        dest = req.dest
        targets, absent = self.m.selection(req)
        link.send({"t": "job", "job": 0, "n": len(targets), "absent": ",".join(sorted(absent))})
        base = {"uid": cred.uid, "gid": cred.gid, "dest": dest, "tree": tree, "gather": True}
        sig_req = self.m.request("fsig", base, targets)
        looked = await with_ticks(link, sig_req.wait())
        assert looked is not None
        failed: dict[tuple[Any, ...], set[int]] = {}
        versions: dict[str, list[tuple[bytes | None, set[int]]]] = {}  # rel -> (sigs, ranks)
        for key, enc in looked.groups:
            ranks = rankset.decode(enc)
            if key[0] == "v":
                versions.setdefault(key[1], []).append((key[2], ranks))
            elif key[0] == "n":
                versions.setdefault(key[1], []).append((None, ranks))
            elif key[0] == "e":
                failed.setdefault(("s", 1, str(key[2])), set()).update(ranks)
            elif key[0] == "s" and key[1] != 0:
                failed.setdefault(tuple(key), set()).update(ranks)
        need: dict[str, set[int]] = {}
        sizes: dict[str, int] = {}
        for kind, rel, _mode, _mtime, h, size in tree:
            if kind != "f" or not size:
                continue
            bl = new_blocks.get(h) or [h]
            b = blocks.block_size(size)
            for sigs, ranks in versions.get(rel, []):
                if blocks.send_whole(bl, sigs):
                    need.setdefault(h, set()).update(ranks)
                    sizes[h] = size
                    continue
                assert sigs is not None
                for i in blocks.missing(bl, sigs):
                    need.setdefault(bl[i], set()).update(ranks)
                    sizes[bl[i]] = min(b, size - i * b)
        bad = set().union(*failed.values()) if failed else set()
        ok = targets - bad
        pieces = [Entry("f", "/" + h, h, sizes[h], 0o444) for h in need]
        tag = secrets.randbits(48)
        shipped = await with_ticks(link, self.shipper.distribute(link, tag, pieces, ok, only=need))
        assert shipped is not None
        ready, not_shipped = shipped
        groups = [[list(key), self.m.fold(ranks), len(ranks)] for key, ranks in failed.items()]
        groups += [[list(key), self.m.fold(ranks), len(ranks)] for key, ranks in not_shipped.items()]
        if ready:
            body = {**base, "blocks": new_blocks, "delete": req.delete}
            whole = await with_ticks(link, self.m.request("fpatch", body, ready).wait())
            assert whole is not None
            groups += [[key, self.m.fold_intervals(enc), rankset.count(enc)] for key, enc in whole.groups]
        stats = {"sig_bytes": sig_req.op.bytes_in, "versions": sum(len(v) for v in versions.values()),
                 "pieces": len(pieces), "piece_bytes": sum(sizes.values())}  # fmt: skip
        link.send({"t": "ret", "r": {"groups": groups, "absent": sorted(absent), "targets": len(targets), **stats}})

    @staticmethod
    def _check(req: SyncRequest) -> tuple[list[list[Any]], dict[str, list[str]]]:
        """The request's tree as nodes take it, and the block hashes of its large files."""
        raw, meta, dest, new_blocks = req.tree, req.meta, req.dest, req.blocks
        try:
            fileio.check_template(dest)
        except fileio.PathError as e:
            raise UsageError(str(e)) from None
        entries = sorted(parse_manifest(raw), key=lambda ent: ent.path)
        if not entries:
            raise UsageError("nothing to sync")
        top = entries[0].path
        if any(ent.path != top and not ent.path.startswith(top + "/") for ent in entries):
            raise UsageError("sync takes one source")
        links = {i[1]: i[2] for i in raw or [] if isinstance(i, list) and i and i[0] == "l"}  # targets verbatim
        tree: list[list[Any]] = []
        for ent in entries:
            m = meta.get(ent.path)
            mtime = m[0] if isinstance(m, list) and m and isinstance(m[0], int) else 0
            rel = ent.path[len(top) :]
            extra = ent.hash if ent.kind == "f" else links.get(ent.path, ent.target) if ent.kind == "l" else ""
            tree.append([ent.kind, rel, ent.mode, mtime, extra, ent.size])
            if ent.kind == "f" and blocks.block_count(ent.size) > 1:
                bl = new_blocks.get(ent.hash)
                if not (isinstance(bl, list) and len(bl) == blocks.block_count(ent.size)
                        and all(isinstance(x, str) and HASH_RE.match(x) for x in bl)):  # fmt: skip
                    raise UsageError(f"bad block hashes for {ent.path[:200]}")
        return tree, {h: v for h, v in new_blocks.items() if isinstance(h, str) and isinstance(v, list)}
