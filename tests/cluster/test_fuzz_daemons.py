"""Daemon-level fuzzing: malformed connections, from a seeded random schedule, to a running master
(its client socket and its TLS port) and to an interior node (its TLS port), over real sockets. Each
connection sends random bytes, frames with random bodies, oversized headers, or a valid hello followed
by valid messages with fields dropped, repeated or retyped (tests/fuzz/common.py's mutations). The
daemons must close each such connection (or answer it) and keep serving: ``gproc ping`` reaches every
node afterwards and an exec runs everywhere. The seed is printed so a failure can be replayed
(GPROC_FUZZ_SEED)."""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
import struct
from collections.abc import Iterator

import msgpack
import pytest
from tests.cluster.rawpeer import read_to_close
from tests.conftest import LocalCluster, live_lines, start_cluster, stop_cluster
from tests.fuzz.common import mutate_value

from gproc import credential, wire
from gproc.address import parse_address

pytestmark = pytest.mark.cluster

CONNECTIONS = 60  # per endpoint

# messages a peer may validly send after its hello (requests that end or reshape the cluster left out)
CLIENT = [
    {"t": "req", "fn": "ping"},
    {"t": "req", "fn": "select", "nodes": "./.", "w": "node[0-3]"},
    {"t": "req", "fn": "ps", "nodes": "**"},
    {"t": "req", "fn": "jobs"},
    {"t": "req", "fn": "output", "job": 1},
    {"t": "req", "fn": "kill", "gpids": [5], "sig": 0},
    {"t": "req", "fn": "exec", "nodes": "**", "argv": ["/bin/true"], "env": {}, "cwd": "/"},
]
TREE = [
    {"t": "op", "op": 7, "k": "noop", "b": {}, "tg": [0, 3], "r": ["sum"]},
    {"t": "rep", "op": 7, "g": [[["s", 0, ""], [0, 2]]], "end": True},
    {"t": "call", "id": 1, "fn": "attach", "a": {"name": "fz", "id": "88", "parent": 0}},
    {"t": "ret", "id": 1, "err": "no", "kind": "UsageError"},
    {"t": "ping"},
]


@pytest.fixture(scope="module")
def cluster4() -> Iterator[LocalCluster]:
    """Four nodes, fanout 2: node0 and node1 under the master, node2 and node3 under them."""
    c, d = start_cluster(4, 2)
    try:
        yield c
    finally:
        stop_cluster(c, d)


def payload(rnd: random.Random, role: str) -> bytes:
    kind = rnd.randrange(5)
    if kind == 0:
        return rnd.randbytes(rnd.randrange(1, 4096))
    if kind == 1:
        body = rnd.randbytes(rnd.randrange(0, 256))
        return struct.pack(">I", len(body)) + body
    if kind == 2:
        return struct.pack(">I", rnd.choice((wire.MAX_FRAME + 1, 0xFFFFFFFF))) + rnd.randbytes(64)
    hello = wire.hello(role, name="fz", id=str(rnd.randrange(80, 99)), instance="fz")
    if kind == 3:
        hello = mutate_value(hello, rnd)  # type: ignore[assignment]
    out = msgpack.packb(hello, use_bin_type=True)
    frames = [struct.pack(">I", len(out)) + out]
    for msg in rnd.sample(CLIENT if role == "client" else TREE, 2):
        body = msgpack.packb(mutate_value(msg, rnd), use_bin_type=True)
        frames.append(struct.pack(">I", len(body)) + body)
    return b"".join(frames)


def send(connect: object, data: bytes) -> None:
    s = connect()  # type: ignore[operator]
    try:
        s.sendall(data)
        if not isinstance(s, ssl.SSLSocket):  # over TLS the daemon's own timeouts end a silent peer
            s.shutdown(socket.SHUT_WR)  # the client has said all it will
        read_to_close(s, timeout=20.0)  # closed (or answered and closed); a timeout fails the test
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        pass  # closed while we were still sending
    finally:
        s.close()


def test_daemons_survive_malformed_connections(cluster4: LocalCluster) -> None:
    seed = int(os.environ.get("GPROC_FUZZ_SEED", random.randrange(1 << 32)))
    print(f"GPROC_FUZZ_SEED={seed}")
    rnd = random.Random(seed)
    rows = [json.loads(x) for x in cluster4.gproc("i", "--json").stdout.splitlines() if x.strip()]
    node_addr = next(r["address"] for r in rows if r["name"] == "node0")
    assert node_addr, rows

    def unix() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(cluster4.socket)
        return s

    def tls(addr: str) -> object:
        def connect() -> ssl.SSLSocket:
            a = parse_address(addr)
            raw = socket.create_connection((a.host, a.port), timeout=5)
            return credential.client_context(cluster4.key).wrap_socket(raw, server_hostname="gproc")

        return connect

    for connect, role in ((unix, "client"), (tls(cluster4.master_address), "node"), (tls(node_addr), "node")):
        for _ in range(CONNECTIONS):
            send(connect, payload(rnd, role))
    ping = cluster4.gproc("ping", "--json")
    assert ping.returncode == 0, ping.stderr
    assert json.loads(ping.stdout)["counts"] == {"ok": 4}, ping.stdout
    r = cluster4.gproc("e", "**", "echo", "alive")
    assert r.returncode == 0 and live_lines(r.stdout) == {"alive": "node[0-3]"}, r.stderr
