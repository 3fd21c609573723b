"""gproc: run programs across clusters of thousands of nodes as if they were one machine.

The public API: ``Cluster`` (a handle on a master socket), ``Job`` and its events ``Output`` and
``Status``, the error hierarchy in ``gproc.errors``, and ``gproc.local`` for a cluster on this host.
"""

from gproc.client import Cluster, Event, Job, Output, Status
from gproc.errors import GprocError

__all__ = ["Cluster", "Event", "GprocError", "Job", "Output", "Status"]
__version__ = "0.1.0"
