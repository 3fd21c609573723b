"""The chaos cluster: a master, interior daemons and worker processes of many nodes, each a process
of its own that a fault can kill, freeze or restart; and, as root, a few hosts in network namespaces
whose links a fault can slow, make lossy or cut.

Layout: the master; ``interior`` single-node daemons (``mid0`` …) under it; worker processes of
``per_worker`` nodes each (``n0`` …), whose top nodes attach to an interior daemon with another as
fallback (``-myParent`` with a comma list) and whose other nodes attach below those tops in the same
process; and ``hosts`` daemons (``h0`` …) in network namespaces on a bridge, attached to the master
over the bridge. A killed process is started again with the same switches, on the same address.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tests import netbed

from gproc import credential


@dataclass
class Proc:
    """One daemon process of the bed (all of its nodes live and die with it)."""

    name: str
    kind: str  # master | mid | worker | host
    argv: list[str]
    log: str
    nodes: list[str]
    popen: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    starts: int = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        self.frozen = False
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the process group we started (the daemon and any program it runs)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
        if sig == signal.SIGSTOP:
            self.frozen = True
        elif sig == signal.SIGCONT:
            self.frozen = False

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)


def _wait_file(path: str, proc: Proc, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(path) as f:
            text = f.read().strip()
            if text:
                return text
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited while starting (see {proc.log})")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not start within {timeout:.0f}s")


@dataclass
class Bed:
    nodes: int
    interior: int
    per_worker: int
    hosts: int
    heartbeat: float = 1.0
    dead_after: float = 3.5
    debug: int = int(os.environ.get("GPROC_CHAOS_DEBUG", "0"))  # the daemons' -debug level (their logs)
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="gpc-", dir="/tmp"))
    procs: dict[str, Proc] = field(default_factory=dict)
    net: netbed.NetBed | None = None
    master_address: str = ""
    qdiscs: set[str] = field(default_factory=set)  # hosts with a netem qdisc now
    cut: set[str] = field(default_factory=set)  # hosts whose link is down now
    no_hosts: str | None = None  # why there are no hosts in network namespaces (no link faults)

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "g")

    @property
    def key(self) -> str:
        return os.path.join(self.dir, "cluster.key")

    @property
    def state(self) -> str:
        return os.path.join(self.dir, "state")

    def names(self) -> list[str]:
        return [n for p in self.procs.values() for n in p.nodes]

    def _py(self) -> list[str]:
        return [sys.executable, "-m", "gproc"]

    def _liveness(self) -> list[str]:
        return ["--heartbeat", str(self.heartbeat), "--dead-after", str(self.dead_after), "--debug", str(self.debug)]

    def up(self) -> Bed:
        """Start everything; return once every node is registered (or raise, leaving ``close`` to clean)."""
        credential.keygen(self.key)
        host = "127.0.0.1"
        self.no_hosts = netbed.problem() if self.hosts else "none asked for"
        if self.no_hosts is None:
            self.net = netbed.NetBed([f"h{i}" for i in range(self.hosts)]).up()
            host = self.net.gateway  # the namespaced hosts reach the master over the bridge
        ready = os.path.join(self.dir, "master.addr")
        m = Proc(
            "master",
            "master",
            [
                *self._py(),
                "m",
                "--socket",
                self.socket,
                "--state",
                self.state,
                "--key",
                self.key,
                "--ready-file",
                ready,
                *self._liveness(),
                "--listen",
                f"{host}:0",
            ],
            os.path.join(self.dir, "master.log"),
            [],
        )
        self.procs["master"] = m
        m.start()
        self.master_address = _wait_file(ready, m)
        m.argv[-1] = self.master_address  # a restarted master listens where the nodes look for it
        mids: list[str] = []
        for i in range(self.interior):
            name = f"mid{i}"
            rf = os.path.join(self.dir, f"{name}.addr")
            argv = [*self._node_args(name, str(1000 + i), self.master_address), "--ready-file", rf,
                    "--listen", "127.0.0.1:0"]  # fmt: skip
            p = Proc(name, "mid", argv, os.path.join(self.dir, f"{name}.log"), [name])
            self.procs[name] = p
            p.start()
            addr = _wait_file(rf, p)
            p.argv[-1] = addr  # the same port after a restart: its former children find it again
            mids.append(addr)
        placed = self.interior
        w = 0
        while placed < self.nodes - (len(self.net.hosts) if self.net else 0):
            k = min(self.per_worker, self.nodes - placed - (len(self.net.hosts) if self.net else 0))
            parent = self.master_address if not mids else f"{mids[w % len(mids)]},{mids[(w + 1) % len(mids)]}"
            tops = max(1, k // 3)
            entries = []
            for j in range(k):
                idx = placed + j
                entries.append(
                    {
                        "index": idx,
                        "name": f"n{idx}",
                        "id": str(idx),
                        "parent": parent if j < tops else placed + j % tops,
                        "listen": j < tops,
                        "socket": os.path.join(self.dir, "s", f"n{idx}.sock"),
                    }
                )
            spec = {
                "key": self.key,
                "master": self.master_address,
                "host": "127.0.0.1",
                "heartbeat": self.heartbeat,
                "dead_after": self.dead_after,
                "bin_root": os.path.join(self.dir, "bin"),
                "nodes": entries,
            }
            path = os.path.join(self.dir, f"worker{w}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            name = f"worker{w}"
            argv = [*self._py(), "_worker", path, "--debug", str(self.debug)]
            p = Proc(name, "worker", argv, os.path.join(self.dir, f"{name}.log"), [str(e["name"]) for e in entries])
            self.procs[name] = p
            placed += k
            w += 1
        os.makedirs(os.path.join(self.dir, "s"), exist_ok=True)
        for p in self.procs.values():
            if p.kind == "worker":
                p.start()
        if self.net is not None:
            for i, h in enumerate(self.net.hosts.values()):
                name = h.name
                argv = ["ip", "netns", "exec", h.netns, *self._node_args(name, str(2000 + i), self.master_address)]
                p = Proc(name, "host", argv, os.path.join(self.dir, f"{name}.log"), [name])
                self.procs[name] = p
                p.start()
        self.wait_up(60.0 + self.nodes / 4)
        return self

    def _node_args(self, name: str, nid: str, parent: str) -> list[str]:
        return [*self._py(), "s", f"-myParent={parent}", f"-myId={nid}", "--name", name, "--key", self.key,
                "--node-socket", os.path.join(self.dir, "s", f"{name}.sock"),
                f"-binRoot={os.path.join(self.dir, 'bin', name)}", *self._liveness()]  # fmt: skip

    def up_names(self) -> set[str]:
        """The nodes the master has up now (empty when it cannot be asked)."""
        import asyncio

        from gproc.client import Cluster
        from gproc.errors import GprocError

        async def ask() -> set[str]:
            info = await Cluster(self.socket, timeout=5.0).info()
            return {str(r["name"]) for r in info["nodes"] if r.get("state") == "up"}

        try:
            return asyncio.run(ask())
        except (GprocError, OSError):
            return set()

    def wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = set(self.names())
        have: set[str] = set()
        while time.monotonic() < deadline:
            have = self.up_names()
            if want <= have:
                return
            dead = [p.name for p in self.procs.values() if not p.alive()]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited (logs in {self.dir})")
            time.sleep(0.3)
        raise RuntimeError(f"not up within {timeout:.0f}s: {sorted(want - have)[:10]}")

    # ---- faults on network links (hosts in namespaces) ----

    def _tc(self, host: str, *args: str) -> None:
        assert self.net is not None
        ns = self.net.hosts[host].netns
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", *args], capture_output=True, timeout=20, check=True)

    def netem(self, host: str, loss: float, delay_ms: int) -> str:
        """Loss and delay on the host's link (what it sends; the master's side is the bridge's);
        returns the qdisc used. Kernels without ``sch_netem`` (some containers) get a token bucket
        instead: a slow link (8 kbit/s per ms of delay asked less) whose short queue drops."""
        try:
            self._tc(host, "replace", "dev", "eth0", "root", "netem", "loss", f"{loss}%", "delay", f"{delay_ms}ms")
            kind = "netem"
        except subprocess.CalledProcessError:
            rate = max(64, 20_000 // max(1, delay_ms))
            self._tc(host, "replace", "dev", "eth0", "root", "tbf", "rate", f"{rate}kbit", "burst", "16kb",
                     "latency", f"{max(20, delay_ms * 2)}ms")  # fmt: skip
            kind = f"tbf {rate}kbit"
        self.qdiscs.add(host)
        return kind

    def clear_netem(self, host: str) -> None:
        if host in self.qdiscs:
            self._tc(host, "del", "dev", "eth0", "root")
            self.qdiscs.discard(host)

    def set_link(self, host: str, up: bool) -> None:
        assert self.net is not None
        veth = self.net.hosts[host].veth
        subprocess.run(["ip", "link", "set", veth, "up" if up else "down"], capture_output=True, timeout=20, check=True)
        (self.cut.discard if up else self.cut.add)(host)

    def heal(self) -> None:
        """End every fault now: links up, no netem, frozen processes resumed, dead ones started again."""
        for h in list(self.cut):
            self.set_link(h, True)
        for h in list(self.qdiscs):
            self.clear_netem(h)
        for p in self.procs.values():
            if p.frozen:
                p.signal(signal.SIGCONT)
        for p in self.procs.values():
            if not p.alive():
                p.start()

    def close(self) -> None:
        """Stop every process we started (by process group), remove the bed and the directory."""
        for p in self.procs.values():
            p.kill()
        if self.net is not None:
            self.net.close()  # the namespaces take their qdiscs with them
            self.net = None
        shutil.rmtree(self.dir, ignore_errors=True)
