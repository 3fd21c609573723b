"""What ``gproc launch --slurm`` runs as each task of its ``srun`` step: one node daemon per node.

``python -m gproc.slurmagent`` reads one JSON request on stdin (srun hands the launching process's
stdin to every task, so the cluster credential it carries is never on a command line nor in a file)
and becomes this node's daemon, in this process: the task Slurm tracks, ended with the step. Its place
in the tree comes from ``SLURM_PROCID``: rank r's parent is rank (r-1) // fanout, rank 0's the master
(the request's ``master``, ``HOST:PORT``, or ``:PORT`` for the address srun ran at,
``$SLURM_LAUNCH_NODE_IPADDR``). A parent is reached by its Slurm node name at the launch's port.

Every task starts at once, so before joining, the agent waits (at most ``wait`` seconds) for its parent
to listen; a parent that never does (its daemon failed) is passed over for the nearest ancestor that
does, so one failed node loses no subtree.

A request: ``{"key" (PEM), "master", "names" (the step's nodes in rank order), "fanout", "port",
"bin_root", "debug", "wait"}``. The agent imports the daemon before it reads it: the tasks start
while the master does, and the request comes once the master listens.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from typing import Any

from gproc import daemon, daemonconfig, eventloop
from gproc.address import Address, parse_address
from gproc.errors import GprocError, UsageError


def place(names: list[str], me: str, procid: int) -> int:
    """This node's index in the tree: its rank, unless srun placed ranks in another order than
    ``names`` (then its name's index, which every task computes alike)."""
    if 0 <= procid < len(names) and names[procid] == me:
        return procid
    if me in names:
        return names.index(me)
    raise UsageError(f"this node ({me}) is not in the launch's node list")


def ancestors(index: int, fanout: int) -> list[int]:
    """Indices from the parent up to the top level's (the master's children have none above)."""
    out = []
    while index > 0:
        index = (index - 1) // fanout
        out.append(index)
    return out


def listening(addr: Address, timeout: float) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((addr.host, addr.port), timeout=timeout):
        return True
    return False


def pick_parent(chain: list[Address], wait: float) -> list[Address]:
    """``chain`` (parent first, the master last) from the first member that listens: the parent gets
    ``wait`` seconds to start, the others (started as long ago) a quick look; the master always stays."""
    deadline = time.monotonic() + wait
    for i, addr in enumerate(chain[:-1]):
        while True:
            if listening(addr, 1.0):
                return chain[i:]
            if i > 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    return chain[-1:]


def master_address(spec: str, port: int) -> Address:
    """The request's ``master``: ``HOST:PORT``, or ``:PORT`` (the host srun ran at)."""
    if spec.startswith(":"):
        host = os.environ.get("SLURM_LAUNCH_NODE_IPADDR")
        if not host:
            raise UsageError("no SLURM_LAUNCH_NODE_IPADDR: give the master's address (--address)")
        return Address(host, int(spec[1:]))
    return parse_address(spec, port)


def run(req: dict[str, Any]) -> int:
    me = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    names = [str(n) for n in req["names"]]
    fanout, port = int(req["fanout"]), int(req["port"])
    index = place(names, me, int(os.environ.get("SLURM_PROCID", "-1")))
    master = master_address(str(req["master"]), port)
    chain = [Address(names[i], port) for i in ancestors(index, fanout)] + [master]
    fd = os.memfd_create("gproc-cluster-key", 0)  # the credential as a descriptor, as launchagent hands it
    os.write(fd, str(req["key"]).encode())
    cfg = daemonconfig.node(
        parent=",".join(str(a) for a in pick_parent(chain, float(req.get("wait", 20.0)))),
        node_id=str(index + 1),
        listen=str(Address(me, port)),
        name=me,
        key=f"/proc/self/fd/{fd}",
        bin_root=str(req.get("bin_root") or "/tmp/xproc"),
    )
    daemon.setup_logging(int(req.get("debug", 0)))
    return eventloop.run(daemon.serve_node(cfg))


def main() -> int:
    name = os.environ.get("SLURMD_NODENAME", "?")
    try:
        req = json.loads(sys.stdin.buffer.read())
        if not isinstance(req, dict) or not {"key", "names", "master"} <= req.keys():
            raise ValueError("not a launch request")
    except ValueError as e:
        print(f"gproc slurm agent on {name}: bad request on stdin: {e}", file=sys.stderr)
        return 2
    try:
        return run(req)
    except (GprocError, OSError, ValueError, KeyError) as e:  # one line in srun's log, the launch's reason
        print(f"gproc slurm agent on {name}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
