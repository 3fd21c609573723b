"""A daemon's configuration from what an administrator gives: switch values, seed postfix expressions
(``-myId='hostname hostbase'``), the environment (``GPROC_PARENT``), and the defaults.

The front ends pass plain values; this module (below ``daemon``'s callers, above ``overlay``) turns them
into a ``NodeConfig`` and the master's settings, so no front end builds daemon configs itself.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from gproc import credential, postfix
from gproc.address import Address, parse_address, parse_address_list
from gproc.errors import GprocError, UsageError
from gproc.overlay import NodeConfig
from gproc.pids import PidConfig

DEFAULT_PORT = 6666  # the seed's -cmdport


@dataclass
class Timing:
    """Liveness and op-flush settings common to the master and nodes (None: the daemon's default)."""

    heartbeat: float | None = None
    dead_after: float | None = None
    quiet: float | None = None
    hold: float | None = None

    def apply(self, cfg: NodeConfig) -> None:
        if self.heartbeat:
            cfg.heartbeat = self.heartbeat
        if self.dead_after:
            cfg.dead_after = self.dead_after
        if self.quiet is not None:
            cfg.quiet = self.quiet
        if self.hold is not None:
            cfg.hold = self.hold


@dataclass
class MasterSettings:
    """Everything ``daemon.serve_master`` takes."""

    cfg: NodeConfig
    socket: str
    state_dir: str
    ready_file: str | None
    pids: PidConfig
    keep_jobs: int = 1000
    keep_bytes: int = 1 << 30


def _eval(expr: str | None) -> str | None:
    return postfix.evaluate(expr) if expr else None


def _hostname_id() -> str:
    host = socket.gethostname()
    try:
        return postfix.evaluate("hostname hostbase")
    except GprocError:
        return "".join(c if c.isalnum() or c == "_" else "_" for c in host.split(".")[0])[:64] or "0"


def master(
    *,
    socket_path: str,
    port: int | None = None,
    listen: str | None = None,
    address: str | None = None,
    name: str | None = None,
    state: str | None = None,
    key: str | None = None,
    cert: str | None = None,
    ca: str | None = None,
    revoked: str | None = None,
    bin_root: str = "/tmp/xproc",
    ready_file: str | None = None,
    timing: Timing | None = None,
    gpid_block: int | None = None,
    collect_every: float | None = None,
    keep_jobs: int = 1000,
    keep_bytes: int = 1 << 30,
) -> MasterSettings:
    """The master's settings: it listens on ``listen`` (``host:port``), else on ``address`` (a postfix
    expression; all interfaces when absent) at ``port``; its state lives in ``state`` (default
    /var/lib/gproc for root, ~/.local/state/gproc otherwise)."""
    port = DEFAULT_PORT if port is None else port
    where = parse_address(listen, port) if listen else Address(_eval(address) or "", port)
    if state is None:
        state = "/var/lib/gproc" if os.geteuid() == 0 else os.path.expanduser("~/.local/state/gproc")
    key, cert, ca = credential.identity_paths(key, cert, ca)
    if revoked and not cert:
        raise UsageError("--revoked needs per-node certificates (--cert)")
    cfg = NodeConfig(
        name=name or "master", id="0", listen=where, key=key, cert=cert, ca=ca, revoked=revoked, bin_root=bin_root
    )
    (timing or Timing()).apply(cfg)
    pids = PidConfig()
    if gpid_block is not None:
        pids.block = gpid_block
    if collect_every is not None:
        pids.collect_every = collect_every
    pids.__post_init__()
    return MasterSettings(cfg, socket_path, state, ready_file, pids, keep_jobs, keep_bytes)


def node(
    *,
    parent: str | None = None,
    node_id: str | None = None,
    address: str | None = None,
    listen: str | None = None,
    port: int | None = None,
    name: str | None = None,
    key: str | None = None,
    cert: str | None = None,
    ca: str | None = None,
    parent_name: str | None = None,
    bin_root: str = "/tmp/xproc",
    node_socket: str | None = None,
    store_max: int | None = None,
    timing: Timing | None = None,
) -> NodeConfig:
    """A node daemon's config. ``parent``, ``node_id`` and ``address`` may be postfix expressions (the
    seed's); the parent defaults to ``$GPROC_PARENT``, the id to the host's number, the name to the host
    name; ``node_socket`` is the relayed client socket (default binRoot/NAME.sock; "none": no socket)."""
    port = DEFAULT_PORT if port is None else port
    parent_addr = _eval(parent) or os.environ.get("GPROC_PARENT")
    if not parent_addr:
        raise UsageError("a node needs -myParent (its parent's address, or a postfix expression)")
    where = parse_address(listen, port) if listen else Address(_eval(address) or socket.gethostname(), port)
    name = name or socket.gethostname()
    sock = node_socket or os.path.join(bin_root, f"{name}.sock")
    key, cert, ca = credential.identity_paths(key, cert, ca)
    if parent_name and not cert:
        raise UsageError("--parent-name needs per-node certificates (--cert)")
    cfg = NodeConfig(
        name=name,
        id=_eval(node_id) or _hostname_id(),
        parents=parse_address_list(parent_addr, port),
        listen=where,
        key=key,
        cert=cert,
        ca=ca,
        parent_names=[n for n in (parent_name or "").split(",") if n],
        bin_root=bin_root,
        store_max=store_max,
        socket=None if sock == "none" else sock,
    )
    (timing or Timing()).apply(cfg)
    return cfg
