"""``gproc cp --multicast`` on real hosts: network namespaces on a bridge that floods multicast, a
node daemon in each (launched over ssh, joined to a master on the bridge), packet loss made in each
receiver's namespace (nftables dropping that share of incoming UDP at random: this kernel has no tc
netem). Every receiver's file must be the source's bytes; a frozen receiver is reported while the
others finish; a receiver that hears nothing at first catches up by repair, one that hears nothing at
all gets the file through the tree; garbage and forged packets on the session's port are dropped.
Loss rules are removed after each test, the bed (namespaces, bridge) at the end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.netbed import NetBed, netbed, problem

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.skipif(problem() is not None, reason=problem() or "")]
if shutil.which("nft") is None:
    pytestmark.append(pytest.mark.skip(reason="nft (nftables) is not installed"))

GPROC = [sys.executable, "-m", "gproc"]
MiB = 1 << 20


@dataclass
class Bed:
    net: NetBed
    env: dict[str, str]
    dir: str

    def gproc(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*GPROC, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def source(self, size: int) -> tuple[str, str]:
        """A fresh file of random bytes (no node has it yet) and its SHA-256."""
        data = os.urandom(size)
        path = tempfile.mktemp(dir=self.dir, prefix="src-")
        with open(path, "wb") as f:
            f.write(data)
        return path, hashlib.sha256(data).hexdigest()

    def dest(self) -> str:
        d = tempfile.mkdtemp(dir=self.dir, prefix="dest-")
        for h in self.net.hosts:
            os.mkdir(os.path.join(d, h))
        return d

    def digests(self, dest: str) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for h in self.net.hosts:
            p = os.path.join(dest, h, "f")
            out[h] = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.exists(p) else None  # noqa: SIM115
        return out


def parse(stdout: str) -> tuple[list[dict[str, object]], dict[str, object]]:
    rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    summary = next(r["multicast"] for r in rows if "multicast" in r)
    return [r for r in rows if "nodes" in r], summary


def make_bed(names: list[str]) -> Iterator[Bed]:
    with netbed(names, multicast=True) as net:
        d = tempfile.mkdtemp(prefix="gproc-mcast-test-")
        env = dict(os.environ, GPROC_MASTER=os.path.join(d, "master.sock"), GPROC_KEY=os.path.join(d, "key"))
        env["GPROC_SSH"] = " ".join(net.ssh_command)
        env["PATH"] = os.path.dirname(sys.executable) + ":" + env.get("PATH", "/usr/bin:/bin")
        bed = Bed(net, env, d)
        try:
            subprocess.run([*GPROC, "keygen"], env=env, check=True, capture_output=True, timeout=60)
            up = bed.gproc("launch", "--ssh", f"h[1-{len(names)}]", "--listen", f"{net.gateway}:0",
                           "--bin-root", "/run/xproc")  # fmt: skip
            assert up.returncode == 0, up.stdout + up.stderr
            yield bed
        finally:
            bed.gproc("launch", "--stop", timeout=120)
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def bed4() -> Iterator[Bed]:
    yield from make_bed([f"h{i}" for i in range(1, 5)])


@pytest.fixture
def lossy(bed4: Bed) -> Iterator[Bed]:
    yield bed4
    for h in bed4.net.hosts:
        bed4.net.clear_loss(h)
    assert all(not r for r in bed4.net.rules().values()), bed4.net.rules()


def check_all_got_it(bed: Bed, r: subprocess.CompletedProcess[str], dest: str, digest: str) -> dict[str, object]:
    assert r.returncode == 0, r.stdout + r.stderr
    rows, summary = parse(r.stdout)
    assert [(row["nodes"], row["status"]) for row in rows] == [(f"h[1-{len(bed.net.hosts)}]", 0)], rows
    assert bed.digests(dest) == dict.fromkeys(bed.net.hosts, digest)
    assert summary["files"] == {"/" + os.path.basename(r.args[-2]): digest}
    return summary


@pytest.mark.parametrize("loss", [0, 5])
def test_four_receivers_get_identical_files_under_loss(lossy: Bed, loss: int) -> None:
    for h in lossy.net.hosts:
        lossy.net.loss(h, loss)
    src, digest = lossy.source(4 * MiB + 12345)
    dest = lossy.dest()
    r = lossy.gproc("cp", "--multicast", "--json", "**", src, f"{dest}/%h/f")
    s = check_all_got_it(lossy, r, dest, digest)
    assert s["via"] == {"multicast": "h[1-4]"}, s
    sender, receivers = s["sender"], s["receivers"]
    assert isinstance(sender, dict) and isinstance(receivers, dict)
    if loss:
        assert receivers["entries"] > 0 and receivers["decoded"] > 0, s  # repairs were asked for and used
    # the bytes went once, not once per receiver (the point of multicast)
    assert sender["bytes"] < 1.5 * (4 * MiB), s


def test_frozen_receiver_is_reported_and_the_others_finish(bed4: Bed) -> None:
    src, digest = bed4.source(6 * MiB)
    dest = bed4.dest()
    (pid,) = bed4.net.daemons("h2")
    cp = subprocess.Popen([*GPROC, "cp", "--multicast", "--rate", "2M", "--json", "**", src, f"{dest}/%h/f"],
                          env=bed4.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_joined(bed4.net, "h2", cp)
        os.kill(pid, signal.SIGSTOP)
        out, err = cp.communicate(timeout=120)
    finally:
        os.kill(pid, signal.SIGCONT)
        if cp.poll() is None:
            cp.kill()
            cp.communicate()
    assert cp.returncode == 255, out + err
    rows, _ = parse(out)
    statuses = {row["nodes"]: (row["status"], row["error"]) for row in rows}
    assert statuses == {"h[1,3-4]": (0, ""), "h2": (255, "lost")}, statuses
    got = bed4.digests(dest)
    assert got == {"h1": digest, "h2": None, "h3": digest, "h4": digest}, got  # nothing partial at h2
    # the frozen daemon lives on: resumed, it re-attaches and takes the next copy
    deadline = time.monotonic() + 60
    while bed4.gproc("e", "-w", "h2", "true").returncode != 0:
        assert time.monotonic() < deadline, "h2 did not come back"
        time.sleep(0.5)
    r = bed4.gproc("cp", "--multicast", "--json", "-w", "h2", src, f"{dest}/%h/f")
    assert r.returncode == 0, r.stdout + r.stderr
    assert bed4.digests(dest)["h2"] == digest


def wait_joined(net: NetBed, host: str, cp: subprocess.Popen[str]) -> str:
    """Wait until ``host``'s daemon is a member of a session's group; its address."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert cp.poll() is None, cp.communicate()
        groups = session_groups(net, host)
        if groups:
            return groups[0]
        time.sleep(0.05)
    raise AssertionError(f"{host} never joined the session")


def session_groups(net: NetBed, host: str) -> list[str]:
    """The 239.77.x.y groups joined in a host (/proc/net/igmp: hex, in host byte order)."""
    r = subprocess.run(["ip", "netns", "exec", net.hosts[host].netns, "cat", "/proc/net/igmp"],
                       capture_output=True, text=True, timeout=10)  # fmt: skip
    out = []
    for word in r.stdout.split():
        if len(word) == 8 and word.endswith("4DEF"):
            b = bytes.fromhex(word)[::-1]
            out.append(".".join(map(str, b)))
    return sorted(out)


def test_late_receiver_catches_up_by_repair(lossy: Bed) -> None:
    src, digest = lossy.source(6 * MiB)
    dest = lossy.dest()
    lossy.net.loss("h3", 100)  # hears nothing of the session at first
    cp = subprocess.Popen([*GPROC, "cp", "--multicast", "--rate", "3M", "--json", "**", src, f"{dest}/%h/f"],
                          env=lossy.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_joined(lossy.net, "h3", cp)
        time.sleep(1.0)
        lossy.net.clear_loss("h3")
        out, err = cp.communicate(timeout=120)
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.communicate()
    r = subprocess.CompletedProcess(cp.args, cp.returncode, out, err)
    s = check_all_got_it(lossy, r, dest, digest)
    assert s["via"] == {"multicast": "h[1-4]"}, s
    receivers = s["receivers"]
    assert isinstance(receivers, dict) and receivers["entries"] > 0, s


def test_receiver_hearing_nothing_gets_the_file_through_the_tree(lossy: Bed) -> None:
    src, digest = lossy.source(2 * MiB)
    dest = lossy.dest()
    lossy.net.loss("h4", 100)
    r = lossy.gproc("cp", "--multicast", "--json", "**", src, f"{dest}/%h/f")
    s = check_all_got_it(lossy, r, dest, digest)
    assert s["via"] == {"multicast": "h[1-3]", "tree": "h4"}, s
    assert s["gave_up"] == {"no packets for 8 s": "h4"}, s


FORGER = r"""
import os, socket, sys, time
group, port, iface = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(iface))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
s.settimeout(30)
real = s.recv(65536)  # one of the session's own packets
sent = 0
for i in range(400):
    s.sendto(os.urandom(1 + i * 3 % 1500), (group, port))  # garbage
    forged = bytearray(real)  # the session's header, a group still to come, other bytes
    forged[12:16] = (int.from_bytes(real[12:16], "big") + 10 + i % 40).to_bytes(4, "big")
    forged[40 + i % (len(real) - 60)] ^= 0xFF
    s.sendto(bytes(forged), (group, port))
    if i % 8 == 0:
        s.sendto(real, (group, port))  # a replay: only a duplicate
    sent += 2
print(sent, flush=True)
"""


def test_garbage_and_forged_packets_are_dropped(bed4: Bed) -> None:
    src, digest = bed4.source(6 * MiB)
    dest = bed4.dest()
    cp = subprocess.Popen([*GPROC, "cp", "--multicast", "--rate", "2M", "--json", "**", src, f"{dest}/%h/f"],
                          env=bed4.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        group = wait_joined(bed4.net, "h1", cp)
        port = udp_port(bed4.net, "h1")
        h1 = bed4.net.hosts["h1"]
        forger = subprocess.run(["ip", "netns", "exec", h1.netns, sys.executable, "-c", FORGER, group, str(port),
                                 h1.address], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert forger.returncode == 0 and int(forger.stdout) == 800, forger.stderr
        out, err = cp.communicate(timeout=120)
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.communicate()
    r = subprocess.CompletedProcess(cp.args, cp.returncode, out, err)
    s = check_all_got_it(bed4, r, dest, digest)
    assert s["via"] == {"multicast": "h[1-4]"}, s  # no receiver took a forged share (it would not verify)
    receivers = s["receivers"]
    assert isinstance(receivers, dict) and receivers["dropped"] >= 3 * 400, s  # the other three saw them all
    assert bed4.gproc("e", "**", "true").returncode == 0  # every daemon is alive


def udp_port(net: NetBed, host: str) -> int:
    """The port of the UDP socket a host's daemon bound for the session (/proc/net/udp)."""
    r = subprocess.run(["ip", "netns", "exec", net.hosts[host].netns, "cat", "/proc/net/udp"],
                       capture_output=True, text=True, timeout=10)  # fmt: skip
    ports = {int(line.split()[1].split(":")[1], 16) for line in r.stdout.splitlines()[1:]}
    (port,) = ports
    return port


@pytest.fixture(scope="module")
def bed16() -> Iterator[Bed]:
    yield from make_bed([f"h{i}" for i in range(1, 17)])


def test_sixteen_receivers_at_ten_percent_loss(bed16: Bed) -> None:
    try:
        for h in bed16.net.hosts:
            bed16.net.loss(h, 10)
        src, digest = bed16.source(3 * MiB)
        dest = bed16.dest()
        r = bed16.gproc("cp", "--multicast", "--json", "**", src, f"{dest}/%h/f")
        s = check_all_got_it(bed16, r, dest, digest)
        assert s["via"] == {"multicast": "h[1-16]"}, s
        receivers = s["receivers"]
        assert isinstance(receivers, dict) and receivers["suppressed"] > 0, s  # they heard each other
    finally:
        for h in bed16.net.hosts:
            bed16.net.clear_loss(h)
    assert all(not r for r in bed16.net.rules().values())
