"""The event loop gproc runs on: uvloop where installed (a default dependency: faster sockets and TLS,
and TLS read buffers resident only as far as they are used), else asyncio's own.

Apart from ``gproc.platform`` so that a client command needs none of the daemons' process machinery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when installed, else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
