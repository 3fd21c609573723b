"""``gproc mount``: the cluster as a file system (FUSE, through pyfuse3 over libfuse 3), a front end
over the client API only. ``view`` maps paths to what ``sources`` reads; ``serve`` runs a mount
until it is unmounted, told to stop, or its master goes away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

from gproc import platform
from gproc.errors import ConnectError, GprocError, UsageError

WATCH_EVERY = 1.0  # seconds between looks at the master
WATCH_MISSES = 3  # the master is gone after this many looks in a row find it absent


def serve(
    mountpoint: str,
    socket: str,
    nodes: str | None,
    include: str | None,
    exclude: str | None,
    ttl: float,
    ready: Callable[[], None],
) -> int:
    """Mount the cluster at ``mountpoint`` and serve it; ``ready()`` once mounted. Root's mount is
    shared with every user (``allow_other``), each seeing what the master lets that user see."""
    try:
        import pyfuse3
        import pyfuse3.asyncio
    except ImportError:
        raise UsageError("gproc mount needs pyfuse3: pip install 'gproc[mount]' (and libfuse3 with fuse3)") from None

    from gproc.client import Cluster
    from gproc.fs.sources import Sources
    from gproc.fs.view import ClusterFS

    pyfuse3.asyncio.enable()
    if not os.path.isdir(mountpoint):
        raise UsageError(f"cannot mount on {mountpoint}: not a directory")
    shared = os.geteuid() == 0
    owner = (os.geteuid(), os.getegid())
    sources = Sources(socket, nodes, include, exclude, ttl, shared, owner)
    ops = ClusterFS(sources, 0.0 if shared else min(ttl, 1.0))
    # no default_permissions: the nodes and the master check each request as its user, and the kernel
    # would otherwise ask for attributes at every step of a path walk (a round trip through the tree)
    options = {"fsname=gproc", "subtype=gproc"} | ({"allow_other"} if shared else set())

    async def watch() -> None:
        """End the mount once it was unmounted here or the master has been unreachable for a few
        looks in a row. (The kernel does not end it on unmount while a process that unshared its
        mount namespace meanwhile, a private job, still holds a copy: closing the device does.)"""
        misses = 0
        while misses < WATCH_MISSES:
            await asyncio.sleep(WATCH_EVERY)
            if not platform.is_mounted(mountpoint):
                break
            try:
                conn = await Cluster(socket, timeout=WATCH_EVERY * 2).connect()
                conn.close()
                misses = 0
            except GprocError:
                misses += 1
        pyfuse3.terminate()

    async def main() -> None:
        await sources.node_names(owner)  # the master is there and the selection is good, before mounting
        try:
            pyfuse3.init(ops, mountpoint, options)
        except RuntimeError as e:
            raise UsageError(f"cannot mount on {mountpoint}: {e}") from None
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(watch())
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, pyfuse3.terminate)
            ready()
            await pyfuse3.main()
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            pyfuse3.close(unmount=platform.is_mounted(mountpoint))

    try:
        asyncio.run(main())
    except ConnectError as e:
        raise ConnectError(f"{e} (nothing mounted)") from None
    finally:
        sources.close()
    return 0
