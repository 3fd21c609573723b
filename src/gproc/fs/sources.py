"""What the mount shows, read through the client API as the user who asks, each answer kept for a
short time (``ttl``) so that ``ls -l`` and a shell's lookups of one directory cost one request.

A user here is ``(uid, gid)`` as FUSE reports the calling process. A mount that root shares with
everyone (``allow_other``) asks the master as that user (``Dialers``); any other mount is used only by
its owner, whose connections are the mount process's own.
"""

from __future__ import annotations

import asyncio
import pwd
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gproc import platform
from gproc.client import Cluster, FileAnswer, Listing
from gproc.fs.dialers import Dialers
from gproc.fs.names import class_name

T = TypeVar("T")
User = tuple[int, int]  # uid, gid


def node_template(path: str) -> str:
    """A path on one node as a node path template: every ``%`` is itself."""
    return path.replace("%", "%%")


def merged_template(path: str) -> str:
    """A path of the merged view as a template: ``%h`` stays the node's name, any other ``%`` is
    itself."""
    return "%h".join(part.replace("%", "%%") for part in path.split("%h"))


class Sources:
    """The cluster as the mount sees it, per user, cached for ``ttl`` seconds."""

    def __init__(
        self,
        socket: str,
        nodes: str | None,
        include: str | None,
        exclude: str | None,
        ttl: float,
        shared: bool,
        owner: User,
    ) -> None:
        self.socket = socket
        self.selection = {"nodes": nodes, "w": include, "x": exclude}
        self.ttl = ttl
        self.shared = shared
        self.owner = owner
        self.dialers = Dialers(socket) if shared else None
        self._clusters: dict[int, Cluster] = {}
        self._cache: dict[tuple[Any, ...], tuple[float, asyncio.Future[Any]]] = {}

    def cluster(self, who: User) -> Cluster:
        """A client that the master sees as ``who``."""
        uid = who[0] if self.shared else self.owner[0]
        c = self._clusters.get(uid)
        if c is None:
            dial = self.dialers.dialer(uid, who[1]) if self.dialers is not None and uid != self.owner[0] else None
            c = self._clusters[uid] = Cluster(self.socket, dial=dial)
        return c

    def close(self) -> None:
        for _expiry, fut in self._cache.values():
            fut.cancel()
        self._cache.clear()
        if self.dialers is not None:
            self.dialers.close()

    def _start(self, key: tuple[Any, ...], make: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        """The answer for ``key``: the cached one while fresh, else a new request (the cache owns it)."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] >= now:
            return hit[1]
        fut: asyncio.Future[Any] = asyncio.ensure_future(make())
        self._cache[key] = (float("inf"), fut)  # the time counts from the answer, not the question

        def answered(f: asyncio.Future[Any]) -> None:
            if self._cache.get(key, (0.0, None))[1] is f:
                if f.cancelled() or f.exception() is not None:
                    del self._cache[key]  # a failure is asked again, not remembered
                else:
                    self._cache[key] = (time.monotonic() + self.ttl, f)

        fut.add_done_callback(answered)
        if len(self._cache) > 4096:
            self._cache = {k: v for k, v in self._cache.items() if v[0] >= now}
        return fut

    async def _cached(self, key: tuple[Any, ...], make: Callable[[], Awaitable[T]]) -> T:
        """One answer per key and ttl: callers that ask meanwhile share the request in flight."""
        return await asyncio.shield(self._start(key, make))

    def _cache_get(self, key: tuple[Any, ...]) -> Awaitable[Any] | None:
        """The answer for ``key`` if it is cached and fresh (None otherwise)."""
        hit = self._cache.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return asyncio.shield(hit[1])

    def _key(self, who: User, *what: Any) -> tuple[Any, ...]:
        return (who[0] if self.shared else self.owner[0], *what)

    async def node_names(self, who: User) -> list[str]:
        """The selected nodes, by name."""

        async def make() -> list[str]:
            r = await self.cluster(who).request("select", **self.selection)
            return list(r["names"])

        return await self._cached(self._key(who, "names"), make)

    async def listing(self, who: User, node: str | None, path: str, names: bool = True) -> Listing:
        """``path`` listed on one node (its own ``%`` literal) or merged over the selection; without
        ``names`` only what ``path`` itself is (``"."``)."""
        c = self.cluster(who)
        if node is None:
            group, template = c.group(**self._group_args()), merged_template(path)
        else:
            group, template = c.group(include=node), node_template(path)
        whole = self._cache_get(self._key(who, "list", node, path))
        if whole is not None:  # a full listing answers the smaller question too
            return await whole
        key = self._key(who, "list" if names else "self", node, path)
        return await self._cached(key, lambda: group.listdir(template, names))

    async def classes(self, who: User, path: str) -> tuple[dict[str, bytes], list[FileAnswer]]:
        """``path``'s contents over the selection: one name per set of nodes with identical contents
        (the name is the node set), and the nodes that could not read it."""

        async def make() -> tuple[dict[str, bytes], list[FileAnswer]]:
            (res,) = await self.cluster(who).group(**self._group_args()).cat(merged_template(path))
            out: dict[str, bytes] = {}
            errors: list[FileAnswer] = []
            for a in sorted(res.answers, key=lambda a: (-a.count, a.nodes)):
                if a.kind == "data":
                    out[class_name(a.nodes, set(out))] = a.data
                else:
                    errors.append(a)
            return out, errors

        return await self._cached(self._key(who, "classes", path), make)

    async def read(self, who: User, node: str, path: str) -> FileAnswer:
        """One node's file (read when opened, never cached: an open sees the file as it is)."""
        (res,) = await self.cluster(who).group(include=node).cat(node_template(path))
        return res.answers[0] if res.answers else FileAnswer(path, node, 1, "error", error="no answer", status=255)

    def forget(self, who: User, what: str) -> None:
        """Ask again next time (``ps``, ``jobs``: a name not known yet may be a new one)."""
        self._cache.pop(self._key(who, what), None)

    async def procs(self, who: User) -> dict[int, dict[str, Any]]:
        """The processes of the space that ``who`` may see: its own (every one for root)."""

        async def make() -> dict[int, dict[str, Any]]:
            rows, _errors = await self.cluster(who).ps(**self._group_args())
            if who[0] == 0:
                return {r["gpid"]: r for r in rows}
            mine = {str(who[0]), platform.user_name(who[0])}
            return {r["gpid"]: r for r in rows if r.get("user") in mine}

        return await self._cached(self._key(who, "ps"), make)

    async def jobs(self, who: User) -> dict[int, dict[str, Any]]:
        """The jobs the master keeps for ``who`` (every one for root)."""

        async def make() -> dict[int, dict[str, Any]]:
            return {int(j["id"]): j for j in await self.cluster(who).jobs()}

        return await self._cached(self._key(who, "jobs"), make)

    def _group_args(self) -> dict[str, Any]:
        return {"nodes": self.selection["nodes"], "include": self.selection["w"], "exclude": self.selection["x"]}


def user_id(name: str, default: int) -> int:
    """The uid a ``ps`` row's user name stands for (``default`` when unknown here)."""
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return default
