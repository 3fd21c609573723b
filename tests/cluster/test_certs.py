"""Per-node certificates over real TLS and real sockets: a node joins only under the name on its
certificate, a foreign, expired or revoked certificate is refused, and bad certificate files are one line.

Every daemon here is a separate process started by the test (tests.cluster.daemons); the raw TLS
clients accept any server certificate, so a refusal they see is the master's."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from tests.cluster.daemons import Daemon, wait_until
from tests.cluster.rawpeer import messages, read_to_close

from gproc import certs, credential, wire
from gproc.address import parse_address
from gproc.overlay import Node, NodeConfig

pytestmark = pytest.mark.cluster

GPROC = [sys.executable, "-m", "gproc"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPROC, *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Bed:
    """A cluster CA, its certificates, a master started with one, and the daemons started since."""

    dir: str
    daemons: list[Daemon] = field(default_factory=list)
    master: Daemon | None = None
    address: str = ""

    @property
    def ca(self) -> str:
        return os.path.join(self.dir, "cluster.key")

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "m.sock")

    @property
    def revoked(self) -> str:
        return os.path.join(self.dir, "revoked")

    def cert(self, name: str) -> str:
        path = os.path.join(self.dir, f"{name}.crt")
        if not os.path.exists(path):
            r = run("keygen", "--key", self.ca, "--node", name, "--out", self.dir)
            assert r.returncode == 0, r.stderr
        return path

    def start_master(self) -> None:
        ready = os.path.join(self.dir, "m.ready")
        self.master = Daemon(
            "m",
            "--cert",
            self.cert("master"),
            "--listen",
            "127.0.0.1:0",
            "--socket",
            self.socket,
            "--state",
            os.path.join(self.dir, "state"),
            "--revoked",
            self.revoked,
            "--ready-file",
            ready,
            log=os.path.join(self.dir, "master.log"),
        )
        self.daemons.append(self.master)
        wait_until(lambda: os.path.exists(ready), 30, "the master to listen")
        with open(ready) as f:
            self.address = f.read().strip()

    def node(
        self, name: str, nid: str, parent: str | None = None, cert: str | None = None, *more: str
    ) -> tuple[Daemon, str]:
        """Start node ``name`` (with its own certificate unless told); (daemon, its listening address)."""
        ready = os.path.join(self.dir, f"{name}.ready")
        d = Daemon(
            "s",
            "--cert",
            cert or self.cert(name),
            "--parent",
            parent or self.address,
            "--name",
            name,
            "--id",
            nid,
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            ready,
            "--node-socket",
            "none",
            "--bin-root",
            os.path.join(self.dir, "bin-" + name),
            *more,
            log=os.path.join(self.dir, f"{name}.log"),
        )
        self.daemons.append(d)
        wait_until(lambda: os.path.exists(ready), 30, f"{name} to listen")
        with open(ready) as f:
            return d, f.read().strip()

    def states(self) -> dict[str, str]:
        r = subprocess.run(
            [*GPROC, "i", "--json"], env={**os.environ, "GPROC_MASTER": self.socket}, capture_output=True, text=True
        )
        return {row["name"]: row["state"] for row in map(json.loads, r.stdout.split("\n")[:-1])}

    def log(self, who: str) -> str:
        with open(os.path.join(self.dir, f"{who}.log")) as f:
            return f.read()


@pytest.fixture
def bed(tmpdir_short: str) -> Iterator[Bed]:
    b = Bed(tmpdir_short)
    r = run("keygen", "--key", b.ca)
    assert r.returncode == 0, r.stderr
    b.start_master()
    try:
        yield b
    finally:
        for d in reversed(b.daemons):
            d.end()


def raw_client(bed: Bed, cert: str, key: str) -> ssl.SSLSocket:
    """A TLS client presenting ``cert`` that trusts any server: only the master can refuse here."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    a = parse_address(bed.address)
    return ctx.wrap_socket(socket.create_connection((a.host, a.port), timeout=5), server_hostname="gproc")


def hello_answer(bed: Bed, cert: str, key: str) -> bytes:
    """What the master sends back to a client presenting ``cert`` that says hello as "intruder", until
    it closes (it does: no certificate is for that name)."""
    s = raw_client(bed, cert, key)
    try:
        s.sendall(wire.pack(wire.hello("node", name="intruder", id="9", instance="x")))
    except (ssl.SSLError, OSError):
        pass  # refused already while sending: as good
    try:
        return read_to_close(s)
    finally:
        s.close()


def refused_by_master(bed: Bed, cert: str, key: str) -> None:
    """The master refuses a client presenting ``cert``: not one byte back (TLS 1.3: the client's
    handshake ends before the server has judged its certificate, and this client trusts any server),
    while the same client with a node certificate of the cluster gets the master's hello back (and then
    an error: the certificate is n1's)."""
    assert hello_answer(bed, cert, key) == b""
    valid = messages(hello_answer(bed, bed.cert("n1"), os.path.join(bed.dir, "n1.key")))
    assert [m["t"] for m in valid] == ["hello", "error"], valid
    assert valid[1]["msg"] == "node intruder presents the certificate of n1", valid
    assert "intruder" not in bed.states()


def names(bed: Bed) -> list[str]:
    r = subprocess.run(
        [*GPROC, "e", "**", "sh", "-c", "echo $GPROC_NAME"],
        env={**os.environ, "GPROC_MASTER": bed.socket},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return sorted(r.stdout.splitlines())


def test_nodes_with_their_certificates_join_through_an_interior_node(bed: Bed) -> None:
    n1, a1 = bed.node("n1", "1")
    # n2 from the configuration file's keys (cert, ca); under n1, which checks its certificate
    conf = os.path.join(bed.dir, "gproc.toml")
    with open(conf, "w") as f:
        f.write(f'cert = "{bed.cert("n2")}"\nca = "{bed.dir}/ca.crt"\n[node]\nkey = "{bed.dir}/n2.key"\n')
    ready = os.path.join(bed.dir, "n2.ready")
    bed.daemons.append(
        Daemon(
            *("s", "--config", conf, "--parent", a1, "--name", "n2", "--id", "2", "--node-socket", "none"),
            *("--listen", "127.0.0.1:0", "--bin-root", os.path.join(bed.dir, "bin-n2"), "--ready-file", ready),
            log=os.path.join(bed.dir, "n2.log"),
        )
    )
    wait_until(lambda: bed.states() == {"n1": "up", "n2": "up"}, 30, "n1 and n2 to register")
    assert names(bed) == ["n1: n1", "n2: n2"]
    # n1 dies: n2 re-attaches to the master (its ancestor), with a statement signed for the master
    n1.signal(signal.SIGKILL)
    wait_until(lambda: names(bed) == ["n2: n2"], 30, "n2 to re-attach to the master")
    assert "refused" not in bed.log("master")


@pytest.mark.parametrize("under_interior", [False, True])
def test_a_node_presenting_another_nodes_certificate_is_refused(bed: Bed, under_interior: bool) -> None:
    n1, a1 = bed.node("n1", "1")
    wait_until(lambda: bed.states() == {"n1": "up"}, 30, "n1 to register")
    parent = a1 if under_interior else bed.address
    imp = subprocess.run(
        [sys.executable, "-m", "tests.cluster.impostor", bed.cert("n1"), parent, "n2", os.path.join(bed.dir, "bin-i")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert imp.returncode == 1, (imp.returncode, imp.stderr)
    assert imp.stderr.strip().splitlines()[-1] == "gproc: node n2 presents the certificate of n1", imp.stderr
    refusals = [ln for ln in bed.log("n1" if under_interior else "master").splitlines() if "certificate of n1" in ln]
    assert len(refusals) == 1 and "refused" in refusals[0], refusals
    assert bed.states() == {"n1": "up"} and n1.alive()


def test_a_certificate_of_another_ca_is_refused(bed: Bed) -> None:
    other = os.path.join(bed.dir, "other")
    credential.keygen(os.path.join(other, "cluster.key"))
    key, cert, _ = certs.issue(os.path.join(other, "cluster.key"), "n1", other)
    refused_by_master(bed, cert, key)


def test_an_expired_certificate_is_refused(bed: Bed) -> None:
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    out = os.path.join(bed.dir, "old")
    key, cert, _ = certs.issue(bed.ca, "n1", out, not_before=start, days=1)
    refused_by_master(bed, cert, key)
    # and a daemon given it says so in one line, without trying
    r = run("s", "--cert", cert, "--parent", bed.address, "--name", "n1", "--node-socket", "none", timeout=30)
    assert (
        r.returncode == 1
        and r.stderr.strip()
        == f"gproc: {cert}: certificate expired on {start + datetime.timedelta(days=1):%Y-%m-%d %H:%M} UTC"
    ), r.stderr


def test_a_client_without_a_certificate_is_refused(bed: Bed) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    a = parse_address(bed.address)
    s = ctx.wrap_socket(socket.create_connection((a.host, a.port), timeout=5), server_hostname="gproc")
    try:
        s.sendall(wire.pack(wire.hello("node", name="intruder", id="9", instance="x")))
    except (ssl.SSLError, OSError):
        pass
    assert read_to_close(s) == b""
    s.close()


def test_a_revoked_node_is_disconnected_after_sighup_and_refused(bed: Bed) -> None:
    n1, a1 = bed.node("n1", "1")
    n2, _ = bed.node("n2", "2")
    n3, _ = bed.node("n3", "3", parent=a1)  # revoked under an interior node: n1 closes its link
    wait_until(lambda: bed.states() == {"n1": "up", "n2": "up", "n3": "up"}, 30, "three nodes to register")
    for name in ("n2", "n3"):
        r = run("keygen", "--revoke", bed.cert(name), "--revoked", bed.revoked)
        assert r.returncode == 0, r.stderr
    assert n2.wait(2) is None and n3.wait(0.1) is None  # the file alone changes nothing: the master reads it on SIGHUP
    assert bed.master is not None
    bed.master.signal(signal.SIGHUP)
    assert n2.wait(30) == 1 and n3.wait(30) == 1, "revoked nodes still running"
    for name in ("n2", "n3"):
        serial = certs.serial_text(certs.load_cert(bed.cert(name)).serial_number)
        assert bed.log(name).strip().splitlines()[-1] == f"gproc: node {name}: certificate {serial} is revoked"
    assert "n2: certificate" in bed.log("master") and "n3: certificate" in bed.log("master")
    assert bed.states() == {"n1": "up", "n2": "lost", "n3": "lost"} and n1.alive()


@pytest.mark.parametrize("garble", ["missing", "garbage", "other key", "no ca"])
def test_bad_certificate_files_are_one_line(bed: Bed, garble: str) -> None:
    cert = bed.cert("n1")
    args = ["--cert", cert]
    if garble == "missing":
        args = ["--cert", os.path.join(bed.dir, "nothere.crt")]
    elif garble == "garbage":
        bad = os.path.join(bed.dir, "bad.crt")
        with open(bad, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        args = ["--cert", bad, "--key", os.path.join(bed.dir, "n1.key")]
    elif garble == "other key":
        args += ["--key", os.path.join(bed.dir, "master.key")]
    else:
        args += ["--ca", os.path.join(bed.dir, "none.crt")]
    for mode in (["s", "--parent", bed.address, "--name", "n1"], ["m", "--socket", os.path.join(bed.dir, "x.sock")]):
        r = run(*mode, *args, "--node-socket" if mode[0] == "s" else "--state", os.path.join(bed.dir, "x"), timeout=30)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("gproc: ") and "Traceback" not in r.stderr, r.stderr


def test_a_garbled_revoked_list_keeps_the_old_one(bed: Bed) -> None:
    n1, _ = bed.node("n1", "1")
    wait_until(lambda: bed.states() == {"n1": "up"}, 30, "n1 to register")
    with open(bed.revoked, "w") as f:
        f.write("not-a-serial\n")
    assert bed.master is not None
    bed.master.signal(signal.SIGHUP)
    wait_until(lambda: "not reloaded" in bed.log("master"), 10, "the master to log the bad list")
    assert bed.master.alive() and n1.alive()


def test_a_local_cluster_with_certificates(tmpdir_short: str) -> None:
    sock = os.path.join(tmpdir_short, "g")
    up = run("up", "--local", "6", "--fanout", "2", "--certs", "--socket", sock)
    try:
        assert up.returncode == 0, up.stderr
        r = subprocess.run(
            [*GPROC, "e", "**", "sh", "-c", "echo $GPROC_NAME"],
            env={**os.environ, "GPROC_MASTER": sock},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert sorted(r.stdout.splitlines()) == sorted(f"node{i}: node{i}" for i in range(6)), r.stdout + r.stderr
    finally:
        assert run("down", "--socket", sock).returncode == 0


def test_a_node_refuses_a_parent_of_another_ca(bed: Bed) -> None:
    """The other way round: a parent (here a master) whose certificate is not of the node's CA is
    refused by the node, which never sends it a hello."""
    other = os.path.join(bed.dir, "other")
    credential.keygen(os.path.join(other, "cluster.key"))
    certs.issue(os.path.join(other, "cluster.key"), "master", other)
    ready = os.path.join(other, "ready")
    fake = Daemon(
        *("m", "--cert", os.path.join(other, "master.crt"), "--listen", "127.0.0.1:0", "--ready-file", ready),
        *("--socket", os.path.join(other, "m.sock"), "--state", os.path.join(other, "state")),
        log=os.path.join(other, "master.log"),
    )
    bed.daemons.append(fake)
    wait_until(lambda: os.path.exists(ready), 30, "the other master to listen")
    with open(ready) as f:
        where = f.read().strip()

    async def join() -> None:
        cfg = NodeConfig(name="n1", id="1", parents=[parse_address(where)], key=os.path.join(bed.dir, "n1.key"))
        cfg.cert, cfg.ca = bed.cert("n1"), os.path.join(bed.dir, "ca.crt")
        n = Node(cfg)
        try:
            with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
                await n._join(cfg.parents[0])
        finally:
            await n.stop()

    asyncio.run(join())
    r = subprocess.run(
        [*GPROC, "i", "--json"],
        env={**os.environ, "GPROC_MASTER": os.path.join(other, "m.sock")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr  # nobody joined it


def test_a_node_pinned_to_the_master_refuses_another_node_at_its_address(bed: Bed) -> None:
    """--parent-name: a node certificate holder at the address a node expects its master at (here n1,
    an honest node, standing in) cannot stand in for the master."""
    _, a1 = bed.node("n1", "1")
    n2, _ = bed.node("n2", "2", a1, None, "--parent-name", "master")
    bed.node("n3", "3", None, None, "--parent-name", "master")  # the real master: joins
    wait_until(lambda: f"parent {a1} presents the certificate of n1, not master" in bed.log("n2"), 30, "n2 to refuse")
    wait_until(lambda: bed.states().get("n3") == "up", 30, "n3 to join the master")
    assert "n2" not in bed.states() and n2.alive()  # it keeps trying, and says why each time
