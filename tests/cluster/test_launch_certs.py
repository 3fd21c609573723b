"""``gproc launch --certs`` on real hosts (network namespaces with sshd): each host gets its own key and
certificate in its ssh session's stdin, the cluster's CA key never leaves the launching machine, and
the tree works (an interior host, its child under it) with per-node identity.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from cryptography import x509
from tests.cluster.test_launch import CmdlineWatch, gproc, secret_of
from tests.netbed import NetBed, netbed, problem

from gproc import certs

GPROC = [sys.executable, "-m", "gproc"]
HOSTS = ["c1", "c2", "c3", "c4"]

pytestmark = pytest.mark.skipif(problem() is not None, reason=problem() or "")


@pytest.fixture(scope="module")
def bed() -> Iterator[NetBed]:
    with netbed(HOSTS) as b:
        yield b


@pytest.fixture
def env(bed: NetBed) -> Iterator[dict[str, str]]:
    d = tempfile.mkdtemp(prefix="gproc-launch-certs-test-")
    e = dict(os.environ, GPROC_MASTER=os.path.join(d, "master.sock"), GPROC_KEY=os.path.join(d, "cluster.key"))
    e["GPROC_SSH"] = " ".join(bed.ssh_command)
    e["PATH"] = os.path.dirname(sys.executable) + ":" + e.get("PATH", "/usr/bin:/bin")
    subprocess.run([*GPROC, "keygen"], env=e, check=True, capture_output=True, timeout=60)
    yield e
    if os.path.exists(e["GPROC_MASTER"] + ".launch"):  # a test that failed half-way
        subprocess.run([*GPROC, "launch", "--stop"], env=e, capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def test_launch_gives_each_host_its_own_certificate_and_keeps_the_ca_key(bed: NetBed, env: dict[str, str]) -> None:
    ca_secret = secret_of(env["GPROC_KEY"])
    args = ["launch", "--certs", "--ssh", "c[1-4]", "--fanout", "2", "--listen", f"{bed.gateway}:0"]
    with CmdlineWatch(ca_secret) as watch:
        r = gproc(env, *args, "--bin-root", "/run/xproc", "--json")
    assert watch.sweeps > 0 and not watch.hits, f"the CA key was readable in {sorted(watch.hits)}"
    rows = {row["host"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert r.returncode == 0 and all(row["ok"] for row in rows.values()), r.stdout + r.stderr
    tree = {n["name"]: n for n in map(json.loads, gproc(env, "info", "--json").stdout.splitlines())}
    assert {n for n, row in tree.items() if row["state"] == "up"} == set(HOSTS)
    assert tree["c3"]["parent"] == "c1"  # an interior host admitted its child by the child's certificate
    out = gproc(env, "e", "**", "hostname")
    assert sorted(out.stdout.splitlines()) == sorted(f"{h}: {h}" for h in HOSTS), out.stdout + out.stderr

    for h in HOSTS:
        (pid,) = bed.daemons(h)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[argv.index(b"--key") + 1].startswith(b"/proc/self/fd/"), argv  # its key in a memfd
        # it holds its parent to the name on the parent's certificate (the master's: "master")
        assert argv[argv.index(b"--parent-name") + 1].decode() == tree[h]["parent"], argv
        cert = argv[argv.index(b"--cert") + 1].decode()
        with open(f"/proc/{pid}/root{cert}") as f:  # the host's own /run, seen through its mount namespace
            text = f.read()
        assert certs.cert_names(x509.load_pem_x509_certificate(text.encode())) == [h]
        fds = [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        memfds = [fd for fd in fds if os.readlink(fd).startswith("/memfd:gproc-cluster-key")]
        assert memfds, "no key in a memfd"
        for fd in memfds:  # what it holds is its own key, never the CA's
            with open(fd, "rb") as f:
                assert b"PRIVATE KEY" in (key := f.read()) and ca_secret not in key

    stop = gproc(env, "launch", "--stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert {h: bed.daemons(h) for h in HOSTS} == {h: [] for h in HOSTS}
