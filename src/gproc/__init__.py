"""gproc: run programs across clusters of thousands of nodes as if they were one machine.

The public API: ``Cluster`` (a handle on a master socket), ``Job`` and its events ``Output`` and
``Status``, the error hierarchy in ``gproc.errors``, and ``gproc.local`` for a cluster on this host.

The names are loaded on first use, so that a process importing one small module of the package (the
program starter, a daemon mode) does not pay for the client and asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gproc.client import Cluster, Event, Job, Output, Status
    from gproc.errors import GprocError

__all__ = ["Cluster", "Event", "GprocError", "Job", "Output", "Status"]
__version__ = "0.1.0"

_HOME = {"GprocError": "gproc.errors", **dict.fromkeys(("Cluster", "Event", "Job", "Output", "Status"), "gproc.client")}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'gproc' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
