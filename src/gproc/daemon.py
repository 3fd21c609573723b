"""Running daemons: the master, one node, or many nodes in one process (local clusters, scale tests).

This is where services are wired into nodes and the master, and the only place: a new service is a
table (``gproc.services.base.ServiceTable``) installed here.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import ssl
import sys
from dataclasses import dataclass
from typing import Any

from gproc import credential, platform
from gproc.address import Address, parse_address, parse_address_list
from gproc.errors import GprocError
from gproc.master import Master
from gproc.overlay import Node, NodeConfig
from gproc.pids import PidConfig
from gproc.services.base import install
from gproc.services.execute import ExecService, SpawnGate
from gproc.services.files import FileService, MasterFiles
from gproc.services.jobs import JobService, JobStore
from gproc.services.metrics import MasterMetrics, MetricsService
from gproc.services.multicast import MasterMulticast, MulticastService
from gproc.services.procs import MasterProcs, ProcService
from gproc.services.relay import MasterRelay, NodeSocket
from gproc.services.ship import Shipper
from gproc.services.stack import MasterStack, StackService
from gproc.services.stage import StageService
from gproc.services.stdin import StdinService
from gproc.services.sync import MasterSync, SyncService

JOIN_WINDOW = 64  # nodes of one process joining at once


@dataclass
class NodeServices:
    """The services every node runs."""

    execute: ExecService
    procs: ProcService
    stdin: StdinService
    stage: StageService


def node_services(node: Node, gate: SpawnGate | None = None) -> NodeServices:
    """Install the services every node runs (the master too: its ``exec`` feeds input through its
    ``stdin``). Stopping runs in this order: jobs killed first, files dropped last."""
    procs = ProcService(node)
    stdin = StdinService(node)
    stage = StageService(node)
    execute = ExecService(node, gate or SpawnGate(), procs, stdin, stage)
    files = FileService(node, stage.store)
    tables = (
        execute,
        procs,
        stdin,
        stage,
        files,
        SyncService(node, stage.store),
        MetricsService(node),
        StackService(node, procs),
        MulticastService(node, stage.store),
    )
    for table in (service.service() for service in tables):
        install(node, table)
    if node.cfg.socket and not node.is_master:
        install(node, NodeSocket(node, procs, node.cfg.socket).service())
    return NodeServices(execute, procs, stdin, stage)


def build_node(
    cfg: NodeConfig,
    *,
    server_ssl: ssl.SSLContext | None = None,
    client_ssl: ssl.SSLContext | None = None,
    gate: SpawnGate | None = None,
) -> Node:
    """A node daemon with its services."""
    node = Node(cfg, server_ssl=server_ssl, client_ssl=client_ssl)
    node_services(node, gate)
    return node


def build_master(
    cfg: NodeConfig,
    socket_path: str,
    state_dir: str,
    pids: PidConfig | None = None,
    *,
    keep_jobs: int = 1000,
    keep_bytes: int = 1 << 30,
    **kw: Any,
) -> Master:
    """The master with its services: a node's, and those that answer clients."""
    master = Master(cfg, socket_path=socket_path, state_dir=state_dir, **kw)
    stdin = node_services(master).stdin
    store = JobStore(master.state.db, os.path.join(state_dir, "jobs"), keep_jobs, keep_bytes)
    jobs = JobService(store)
    procs = MasterProcs(master, pids or PidConfig(), master.state.db, jobs)
    for table in (jobs.service(), procs.service(), MasterRelay(master).service(), MasterMetrics(master).service()):
        install(master, table, master)
    install(master, MasterStack(master, procs).service(), master)
    shipper = Shipper(master)
    master.equip(procs, store, shipper, stdin)
    install(master, MasterFiles(master, shipper).service(), master)
    install(master, MasterSync(master, shipper).service(), master)
    install(master, MasterMulticast(master, shipper).service(), master)
    return master


def setup_logging(level: int, stream: Any = None) -> None:
    """``-debug`` 0 shows warnings, 1-4 information, 5-10 everything."""
    lvl = logging.WARNING if level <= 0 else logging.INFO if level < 5 else logging.DEBUG
    logging.basicConfig(level=lvl, stream=stream or sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")


async def serve_master(
    cfg: NodeConfig,
    socket_path: str,
    state_dir: str,
    ready_file: str | None = None,
    pids: PidConfig | None = None,
    *,
    keep_jobs: int = 1000,
    keep_bytes: int = 1 << 30,
) -> int:
    """Run the master until Ctrl-C (which shuts the whole tree down)."""
    platform.raise_fd_limit()
    master = build_master(cfg, socket_path, state_dir, pids, keep_jobs=keep_jobs, keep_bytes=keep_bytes)
    await master.start()
    loop = asyncio.get_running_loop()
    platform.install_shutdown_signals(loop, lambda: _forget(master.spawn(master.shutdown_tree())))
    platform.install_reload_signal(loop, master.reload_revoked)
    if ready_file:
        _write_atomic(ready_file, str(master.listen_address))
    await master.stopped.wait()
    return 0


async def serve_node(cfg: NodeConfig, ready_file: str | None = None) -> int:
    """Run one node daemon until the tree shuts down (0) or it is refused for good (1).

    ``ready_file`` receives the listening address once the node listens (before it has joined)."""
    platform.raise_fd_limit()
    node = build_node(cfg)
    loop = asyncio.get_running_loop()
    platform.install_shutdown_signals(loop, lambda: _forget(node.spawn(node.stop())))
    await node.start()
    if ready_file:
        _write_atomic(ready_file, str(node.listen_address or ""))
    await node.stopped.wait()
    if node.fatal is not None:
        print(f"gproc: {node.fatal}", file=sys.stderr)
        return 1
    return 0


async def serve_many(spec: dict[str, Any]) -> int:
    """Many nodes in one OS process, as ``gproc up --local`` lays them out.

    ``spec``: ``{"key", "master", "host", "heartbeat", "dead_after", "bin_root", "nodes": [{"name",
    "id", "parent": index or -1 or addresses ("HOST:PORT,…", a daemon of another process: fault
    tests split a tree over many processes), "listen": bool, "socket": client socket path or
    absent}]}`` and
    optionally ``"config"``: other ``NodeConfig`` fields (``quiet``, ``hold``, ``edits`` …); parents
    come before their children; each node stages under ``bin_root/<name>``.
    """
    platform.raise_fd_limit()
    # shared by the nodes of this process, except with per-node certificates (each its own)
    server_ssl = credential.server_context(spec["key"])
    client_ssl = credential.client_context(spec["key"])
    master_addr = parse_address(spec["master"])
    host = spec.get("host", "127.0.0.1")
    # one per process: its nodes take turns starting programs; "starter_above": descriptors from which
    # they go through a starter process (platform.Starter; -1: never), for benchmarks
    gate = SpawnGate(starter_above=spec.get("starter_above", platform.STARTER_ABOVE))
    joining: collections.deque[Node] = collections.deque()
    nodes: dict[int, Node] = {}
    for entry in spec["nodes"]:
        parent_idx = entry["parent"]
        if isinstance(parent_idx, str):
            parents = parse_address_list(parent_idx)
            parent_idx = -1
        else:
            parent = master_addr if parent_idx < 0 else nodes[parent_idx].listen_address
            assert parent is not None, "a parent in this process must listen"
            parents = [parent]
        cfg = NodeConfig(
            name=entry["name"],
            id=entry["id"],
            parents=parents,
            listen=Address(host, 0) if entry.get("listen") else None,
            **({"key": spec["key"]} | _identity(entry.get("cert"))),
            heartbeat=spec.get("heartbeat", 1.0),
            dead_after=spec.get("dead_after", 3.5),
            bin_root=os.path.join(spec["bin_root"], entry["name"]) if "bin_root" in spec else "/tmp/xproc",
            socket=entry.get("socket"),
            **spec.get("config", {}),
        )
        if parent_idx >= 0:  # start a node once its parent here is attached: no refused handshakes
            await _registered(nodes[parent_idx])
        shared = {} if cfg.cert else {"server_ssl": server_ssl, "client_ssl": client_ssl}
        node = build_node(cfg, gate=gate, **shared)
        await node.start()
        nodes[entry["index"]] = node
        joining.append(node)
        while len(joining) >= JOIN_WINDOW:  # thousands of simultaneous TLS handshakes time out and retry
            await _registered(joining.popleft())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    platform.install_shutdown_signals(loop, stop.set)

    async def all_stopped() -> None:
        for n in nodes.values():
            await n.stopped.wait()
        stop.set()

    watcher = asyncio.ensure_future(all_stopped())
    await stop.wait()
    watcher.cancel()
    await asyncio.gather(*(n.stop() for n in nodes.values()), return_exceptions=True)
    gate.spawner.close()
    return 0


def _identity(cert: str | None) -> dict[str, Any]:
    """NodeConfig fields of a node with its own certificate (key and CA beside it), else none."""
    if not cert:
        return {}
    key, cert, ca = credential.identity_paths(None, cert, None)
    return {"key": key, "cert": cert, "ca": ca}


async def _registered(node: Node, timeout: float = 120.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            await node.registered.wait()
    except TimeoutError:
        logging.getLogger("gproc.daemon").warning("%s not attached after %.0fs", node.cfg.name, timeout)


def _forget(task: object) -> None:
    """Signal handlers start a task the node owns; nothing to return."""


def serve_many_file(path: str) -> int:
    with open(path) as f:
        spec = json.load(f)
    return platform.run(serve_many(spec))


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


__all__ = [
    "GprocError",
    "build_master",
    "build_node",
    "node_services",
    "parse_address_list",
    "serve_many",
    "serve_master",
    "serve_node",
    "setup_logging",
]
