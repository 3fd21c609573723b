"""Reliable multicast side by side: ``gproc cp --multicast`` against udpcast (udp-sender/udp-receiver)
and uftp (uftp/uftpd), on the same namespace bed (tests/netbed.py: one network namespace per receiver
on a bridge flooding multicast, the sender in this namespace on the bridge), the same file, the same
loss (nftables in each receiver's namespace drops that share of incoming UDP at random: this kernel
has no tc netem), one after the other in each configuration.

Per run: throughput per receiver (file size / seconds until every receiver has it), the bytes the
sender put on the bridge (its interface's transmit counter: data, repairs, and for gproc the tree's
TCP traffic too) against file size x receivers (what unicast fan-out from the sender would cost),
the bytes receivers sent back (requests, acknowledgements) and, for gproc, repair requests per
receiver. Every receiver's copy is checked against the source's SHA-256.

    sudo python bench/multicast.py [--size MiB] [--receivers 4,8,16] [--loss 0,1,5] [--write]

Needs root, iproute2, nftables, openssh-server, udpcast, uftp. ``--write`` puts the table in
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.netbed import NetBed, netbed

GPROC = [sys.executable, "-m", "gproc"]
MiB = 1 << 20
TOOL_LIMIT = 600  # seconds one transfer may take (a hung tool fails the benchmark, it does not hang it)
RATE_KBPS = 800_000  # the fixed rate given to uftp and udpcast's ceiling (100 MB/s), as gproc's --rate


def counters(bridge: str) -> tuple[int, int]:
    """(bytes this namespace sent onto the bridge, bytes it received from it)."""
    base = f"/sys/class/net/{bridge}/statistics/"
    with open(base + "tx_bytes") as tx, open(base + "rx_bytes") as rx:
        return int(tx.read()), int(rx.read())


def digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


class Bench:
    def __init__(self, net: NetBed, work: str) -> None:
        self.net, self.work = net, work
        self.env = dict(os.environ, GPROC_MASTER=os.path.join(work, "m.sock"), GPROC_KEY=os.path.join(work, "key"))
        self.env["GPROC_SSH"] = " ".join(net.ssh_command)
        self.env["PATH"] = os.path.dirname(sys.executable) + ":" + self.env.get("PATH", "/usr/bin:/bin")

    def gproc(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*GPROC, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def up(self) -> None:
        for stale in (self.env["GPROC_KEY"], self.env["GPROC_MASTER"]):  # the previous bed's
            if os.path.exists(stale):
                os.unlink(stale)
        subprocess.run([*GPROC, "keygen"], env=self.env, check=True, capture_output=True, timeout=60)
        n = len(self.net.hosts)
        r = self.gproc("launch", "--ssh", f"h[1-{n}]", "--listen", f"{self.net.gateway}:0", "--bin-root", "/run/xproc")
        if r.returncode != 0:
            raise RuntimeError(r.stdout + r.stderr)

    def down(self) -> None:
        self.gproc("launch", "--stop", timeout=120)

    def spawn(self, host: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """A receiver in a host's network namespace, its chatter discarded (ended by ``_end``)."""
        quiet = subprocess.DEVNULL
        return subprocess.Popen(["ip", "netns", "exec", self.net.hosts[host].netns, *argv], stdin=quiet,
                                stdout=quiet, stderr=quiet, start_new_session=True)  # fmt: skip

    def dests(self, tool: str) -> str:
        d = os.path.join(self.work, tool)
        shutil.rmtree(d, ignore_errors=True)
        for h in self.net.hosts:
            os.makedirs(os.path.join(d, h))
        return d

    def verified(self, paths: list[str], want: str) -> int:
        return sum(digest(p) == want for p in paths)

    def run_gproc(self, src: str, want: str) -> dict[str, Any]:
        d = self.dests("gproc")
        r = self.gproc("cp", "--multicast", "--rate", "100M", "--json", "**", src, f"{d}/%h/f")
        rows = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        mc: dict[str, Any] = next((x["multicast"] for x in rows if "multicast" in x), {})
        rec = mc.get("receivers", {})
        n = len(self.net.hosts)
        paths = [os.path.join(d, h, "f") for h in self.net.hosts]
        out = {"ok": self.verified(paths, want), "naks": rec.get("entries", 0) / n,
               "nak_packets": rec.get("naks", 0) / n, "via": mc.get("via"), "status": r.returncode,
               "sender": mc.get("sender"), "overflow": rec.get("overflow")}  # fmt: skip
        shutil.rmtree(d, ignore_errors=True)
        return out

    def after_gproc(self) -> None:
        """Empty the nodes' stores (RAM: their /run), outside what is measured."""
        self.gproc("e", "**", "sh", "-c", "rm -f /run/xproc/store/*.r /run/xproc/store/*.x")

    def run_udpcast(self, src: str, want: str) -> dict[str, Any]:
        d = self.dests("udpcast")
        port = 9000 + os.getpid() % 1000 * 2
        rdv = ["--mcast-rdv-address", "239.78.0.1"]  # the bed's addresses have no broadcast address
        recv = [self.spawn(h, ["udp-receiver", "--interface", "eth0", "--portbase", str(port), "--nokbd", *rdv,
                               "--file", os.path.join(d, h, "f")]) for h in self.net.hosts]  # fmt: skip
        try:
            send = _bounded(["udp-sender", "--file", src, "--interface", self.net.bridge, "--portbase", str(port),
                                   "--min-receivers", str(len(recv)), "--nokbd", "--max-wait", "60", *rdv,
                                   "--max-bitrate", f"{RATE_KBPS // 1000}m"],
                             )  # fmt: skip
            deadline = time.monotonic() + 30
            for p in recv:  # a receiver udp-sender left behind never ends: it counts as not verified
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.1, deadline - time.monotonic()))
        finally:
            for p in recv:
                _end(p)
        paths = [os.path.join(d, h, "f") for h in self.net.hosts]
        out = {"ok": self.verified(paths, want), "status": send.returncode}
        shutil.rmtree(d, ignore_errors=True)
        return out

    def run_uftp(self, src: str, want: str) -> dict[str, Any]:
        d = self.dests("uftp")
        port = 11000 + os.getpid() % 1000 * 2
        recv = []
        for h in self.net.hosts:
            tmp = os.path.join(d, h, ".tmp")
            os.makedirs(tmp)
            recv.append(self.spawn(h, ["uftpd", "-d", "-q", "-p", str(port), "-I", "eth0",
                                           "-D", os.path.join(d, h), "-T", tmp]))  # fmt: skip
        try:
            time.sleep(0.5)
            send = _bounded(["uftp", "-I", self.net.gateway, "-p", str(port), "-R", str(RATE_KBPS),
                                   os.path.basename(src)], cwd=os.path.dirname(src))  # fmt: skip
        finally:
            for p in recv:
                _end(p)
        name = os.path.basename(src)
        paths = [os.path.join(d, h, name) for h in self.net.hosts]
        out: dict[str, Any] = {"ok": self.verified(paths, want), "status": send.returncode}
        if send.returncode:
            out["error"] = (send.stderr + send.stdout).strip().splitlines()[-3:]
        shutil.rmtree(d, ignore_errors=True)
        return out

    def measure(self, tool: str, run: Callable[[str, str], dict[str, Any]], src: str, want: str) -> dict[str, Any]:
        size = os.path.getsize(src)
        n = len(self.net.hosts)
        tx0, rx0 = counters(self.net.bridge)
        t0 = time.monotonic()
        out = run(src, want)
        seconds = time.monotonic() - t0
        tx1, rx1 = counters(self.net.bridge)
        out.update(tool=tool, receivers=n, seconds=round(seconds, 2), mb_s=round(size / seconds / 1e6, 1),
                   sender_x=round((tx1 - tx0) / size, 3), unicast_x=n,
                   back_kb=round((rx1 - rx0) / n / 1e3, 1))  # fmt: skip
        return out


def _bounded(argv: list[str], cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """A sender run for at most TOOL_LIMIT seconds (then killed: status -1)."""
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_LIMIT)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -1, "", f"killed after {TOOL_LIMIT:.0f} s")


def _end(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="MiB (default 256)")
    ap.add_argument("--receivers", default="4,8,16")
    ap.add_argument("--loss", default="0,1,5", help="percent")
    ap.add_argument("--tools", default="gproc,udpcast,uftp")
    ap.add_argument("--limit", type=float, default=600, help="seconds one transfer may take")
    ap.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    a = ap.parse_args()
    global TOOL_LIMIT
    TOOL_LIMIT = a.limit
    rows: list[dict[str, Any]] = []
    work = tempfile.mkdtemp(prefix="gproc-bench-mcast-", dir="/var/tmp")
    try:
        src = os.path.join(work, "payload")
        with open(src, "wb") as f:
            for _ in range(a.size):
                f.write(os.urandom(MiB))
        want = digest(src) or ""
        for n in (int(x) for x in a.receivers.split(",")):
            with netbed([f"h{i}" for i in range(1, n + 1)], multicast=True) as net:
                b = Bench(net, work)
                b.up()
                try:
                    for loss in (float(x) for x in a.loss.split(",")):
                        for h in net.hosts:
                            net.loss(h, loss)
                        for tool in a.tools.split(","):
                            with open(src, "r+b") as f:  # new bytes: no node may have them already
                                f.write(os.urandom(64))
                            want = digest(src) or ""
                            run = {"gproc": b.run_gproc, "udpcast": b.run_udpcast, "uftp": b.run_uftp}[tool]
                            row = b.measure(tool, run, src, want)
                            if tool == "gproc":
                                b.after_gproc()
                            row["loss"] = loss
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                        for h in net.hosts:
                            net.clear_loss(h)
                finally:
                    b.down()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(rows, a)
    print(table)
    if a.write:
        record(table)
    return 0


def render(rows: list[dict[str, Any]], a: argparse.Namespace) -> str:
    cmd = f"python bench/multicast.py --size {a.size} --receivers {a.receivers} --loss {a.loss} --tools {a.tools}"
    lines = [
        f"## Reliable multicast: gproc cp --multicast vs udpcast vs uftp ({a.size} MiB)",
        "",
        f"Command: `sudo {cmd} --write`",
        "",
        "| receivers | loss % | tool | verified | s | MB/s per receiver | sender bytes / file | unicast would be "
        "| bytes back per receiver (kB) | repair requests per receiver |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        naks = f"{r['naks']:.1f} ({r['nak_packets']:.1f} packets)" if "naks" in r else "-"
        lines.append(f"| {r['receivers']} | {r['loss']:g} | {r['tool']} | {r['ok']}/{r['receivers']} "
                     f"| {r['seconds']} | {r['mb_s']} | {r['sender_x']} | {r['unicast_x']} | {r['back_kb']} "
                     f"| {naks} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def record(table: str) -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    with open(path) as f:
        text = f.read()
    head = table.splitlines()[0]
    start = text.find(head.split(" (")[0])
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + table + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + table
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
