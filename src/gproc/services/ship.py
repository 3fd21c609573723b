"""Shipping a bundle from the client down the tree (the master's side of ``exec``).

1. A ``have`` op carries the list of files (hash, size, executable) to the job's nodes; each answers
   with the hashes it lacks, merged up the tree as ``("n", hash) -> ranks``.
2. The master asks the client for exactly the files some node lacks (``want``); the client streams
   them over its Unix socket in chunks (``data``), read with the caller's own rights.
3. Each chunk becomes a ``put`` op whose targets are the ranks lacking that file: the overlay routes
   it only into subtrees holding such ranks, so every tree link carries a file at most once, and
   each interior node forwards a chunk before it stores it (pipelining). At most ``WINDOW`` chunks
   are in flight, and the master waits for its own links to drain before sending more.

Nodes that could not take a file (a bad chunk, a full disk, lost) are reported with status 255 and
the reason, and the job runs on the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gproc import ranks as rankset
from gproc import wire
from gproc.errors import GprocError, ProtocolError, StagingError
from gproc.groups import Groups
from gproc.services.base import MasterApi
from gproc.services.stage import HaveBody, PutBody
from gproc.store import Entry, parse_manifest

if TYPE_CHECKING:
    from gproc.overlay import Link

WINDOW = 8  # chunks in flight down the tree: what one link may have queued is at most WINDOW x CHUNK
CLIENT_SILENCE = 60.0  # a client that sends nothing for this long while shipping is gone


class Interrupted(GprocError):
    """The client signalled the job (Ctrl-C) before it started."""


class Shipper:
    """Gets a bundle's files from the client to exactly the nodes that lack them."""

    def __init__(self, master: MasterApi) -> None:
        self.m = master
        self.total_link_bytes = 0  # file bytes carried by tree links, all jobs together

    @staticmethod
    def check(bundle: Any) -> list[Entry]:
        """Validate a bundle from a client before the job starts (StagingError: exit 255)."""
        if not isinstance(bundle, dict):
            raise StagingError("bad bundle")
        return parse_manifest(bundle.get("files"))

    async def distribute(
        self, link: Link, job: int, entries: list[Entry], targets: set[int], only: dict[str, set[int]] | None = None
    ) -> tuple[set[int], Groups]:
        """Ship what the targets lack; returns (ranks ready to run, statuses of ranks that are not).
        ``only``: a file goes to these of its hash's ranks at most (``sync``: those lacking a block)."""
        files: dict[str, tuple[int, bool]] = {}
        for e in entries:
            if e.kind == "f":
                size, x = files.get(e.hash, (e.size, False))
                files[e.hash] = (size, x or e.executable)
        failed = Groups()
        if not files:
            return targets, failed
        t0 = time.monotonic()
        need = await self._have(files, targets, failed, job)
        if only is not None:
            need = {h: ranks & only.get(h, set()) for h, ranks in need.items()}
        ok = targets - _ranks(failed)
        wanted = [h for h in files if need.get(h, set()) & ok]
        sent = 0
        if wanted:
            link.send({"t": "want", "h": wanted})
            try:
                sent = await self._stream(link, job, wanted, files, need, failed)
            except Interrupted:
                failed.add(("s", 255, "interrupted while shipping"), targets - _ranks(failed))
        carried = self._link_bytes({h: (files[h][0], need[h]) for h in wanted})
        self.total_link_bytes += carried
        seconds = round(time.monotonic() - t0, 4)
        link.send({"t": "ship", "files": len(wanted), "bytes": sent, "link_bytes": carried, "seconds": seconds})
        return targets - _ranks(failed), failed

    async def _have(
        self, files: dict[str, tuple[int, bool]], targets: set[int], failed: Groups, job: int
    ) -> dict[str, set[int]]:
        need: dict[str, set[int]] = {}
        body = HaveBody(h=[(h, size, x) for h, (size, x) in files.items()], j=job)  # j: the files stay for it
        for key, enc in (await self.m.request("have", body.wire(), targets)).groups:
            ranks = rankset.decode(enc)
            if key[0] == "n":
                need.setdefault(key[1], set()).update(ranks)
            elif key[0] == "s" and key[1] != 0:
                failed.add(tuple(key), ranks)
        return need

    async def _stream(
        self,
        link: Link,
        job: int,
        wanted: list[str],
        files: dict[str, tuple[int, bool]],
        need: dict[str, set[int]],
        failed: Groups,
    ) -> int:
        """Turn the client's chunks into ``put`` ops; returns the file bytes read from the client."""
        window = asyncio.Semaphore(WINDOW)
        pending: list[asyncio.Future[None]] = []  # the puts in flight, awaited below
        sent = 0
        try:
            for h in wanted:
                size, x = files[h]
                offset = 0
                while True:
                    msg = await self._receive(link)
                    if msg.get("t") != "data" or msg.get("h") != h:
                        raise ProtocolError(f"expected data of {h[:16]}…")
                    if "err" in msg:  # the client could not read it: the nodes lacking it cannot run
                        reason = f"cannot read a file on the client: {str(msg['err'])[:200]}"
                        failed.add(("s", 255, reason), need[h] - _ranks(failed))
                        offset = size
                        break
                    data, off = msg.get("d"), msg.get("o")
                    if not isinstance(data, bytes) or off != offset or offset + len(data) > size:
                        raise ProtocolError(f"bad data frame for {h[:16]}…")
                    tg = need[h] - _ranks(failed)
                    if tg:
                        await window.acquire()
                        for child in list(self.m.children.values()):
                            await child.drain()
                        body = PutBody(h=h, o=off, d=data, z=size, x=x, j=job)
                        pending.append(asyncio.ensure_future(self._put(body, tg, failed, window.release)))
                    sent += len(data)
                    offset += len(data)
                    if offset >= size or not data:
                        break
                if offset < size:
                    failed.add(("s", 255, "a file changed on the client while shipping"), need[h] - _ranks(failed))
            await asyncio.gather(*pending)
        finally:
            for put in pending:  # abandoned (the client interrupted): its op still ends on the nodes
                put.cancel()
        return sent

    async def _put(self, body: PutBody, targets: set[int], failed: Groups, release: Callable[[], None]) -> None:
        try:
            for key, enc in (await self.m.request("put", body.wire(), targets)).groups:
                if key[0] == "s" and key[1] != 0:
                    failed.add(tuple(key), rankset.decode(enc))
        finally:
            release()

    async def _receive(self, link: Link) -> wire.Message:
        try:
            async with asyncio.timeout(CLIENT_SILENCE):
                msg = await link.receive()
        except TimeoutError:
            raise ProtocolError("the client stopped sending files") from None
        if msg.get("t") == "signal":
            raise Interrupted("interrupted")
        return msg

    def _link_bytes(self, sent: dict[str, tuple[int, set[int]]]) -> int:
        """File bytes carried by all tree links: each file once over every link on a path to a node
        that lacked it."""
        total = 0
        topo = self.m.topo
        for size, ranks in sent.values():
            links: set[int] = set()
            for r in ranks:
                while r != 0 and r not in links and r in topo:
                    links.add(r)
                    r = topo[r].parent
            total += size * len(links)
        return total


def _ranks(groups: Groups) -> set[int]:
    out: set[int] = set()
    for _key, ranks in groups.items():
        out |= ranks
    return out
