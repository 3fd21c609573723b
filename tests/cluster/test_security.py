"""Only holders of the cluster credential can join; garbage closes one connection and nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import struct

import msgpack
import pytest
from tests.cluster.rawpeer import messages, read_to_close
from tests.conftest import LocalCluster, live_lines

from gproc import credential, wire
from gproc.address import parse_address
from gproc.errors import GprocError
from gproc.overlay import Node, NodeConfig

pytestmark = pytest.mark.cluster


def still_serves(c: LocalCluster) -> None:
    r = c.gproc("e", "**", "echo", "alive")
    assert r.returncode == 0 and live_lines(r.stdout) == {"alive": "node[0-15]"}, r.stderr
    rows = [json.loads(x) for x in c.gproc("i", "--json").stdout.splitlines() if x.strip()]
    assert not [r for r in rows if r["name"] == "intruder" and r["state"] == "up"]


def tls_connect(addr: str, key: str) -> ssl.SSLSocket:
    a = parse_address(addr)
    raw = socket.create_connection((a.host, a.port), timeout=5)
    return credential.client_context(key).wrap_socket(raw, server_hostname="gproc")


def registered(addr: str, key: str, nid: str) -> tuple[ssl.SSLSocket, bytes]:
    """A raw peer that registered as node "intruder" under ``addr``: its socket and what it read."""
    s = tls_connect(addr, key)
    s.sendall(wire.pack(wire.hello("node", name="intruder", id=nid, instance="x")))
    s.settimeout(5)
    buf = b""
    while buf.count(b"welcome") == 0:
        chunk = s.recv(65536)
        assert chunk, f"{addr} closed a valid registration"
        buf += chunk
    return s, buf


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True


def test_raw_socket_and_garbage_cannot_register(cluster16: LocalCluster) -> None:
    a = parse_address(cluster16.master_address)
    for payload in (
        b"",
        b"GET / HTTP/1.0\r\n\r\n",
        os.urandom(4096),
        wire.pack(wire.hello("node", name="intruder", id="9")),
    ):
        s = socket.create_connection((a.host, a.port), timeout=5)
        s.sendall(payload)
        if not payload:
            s.shutdown(socket.SHUT_WR)  # a peer that connects and says nothing is cut at the handshake timeout
        assert closed_by_peer(s)
        s.close()
    still_serves(cluster16)


def presenting(own: str) -> ssl.SSLContext:
    """A TLS client that presents the credential ``own`` and accepts any server: the master's
    check of the client's certificate is then the only one that can refuse."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(own)
    return ctx


def test_other_credential_cannot_register(cluster16: LocalCluster, tmpdir_short: str) -> None:
    other = credential.keygen(os.path.join(tmpdir_short, "other.key"))
    a = parse_address(cluster16.master_address)
    # TLS 1.3: the client's handshake ends before the server has judged the client's certificate, so
    # the hello is sent; the master must refuse it (an alert, or a close) without one byte of reply
    s = presenting(other).wrap_socket(socket.create_connection((a.host, a.port), timeout=5), server_hostname="gproc")
    try:
        s.sendall(wire.pack(wire.hello("node", name="intruder", id="9", instance="x")))
    except (ssl.SSLError, OSError):
        pass  # refused already while sending: as good
    assert read_to_close(s) == b"", "the master answered a peer with a foreign certificate"
    s.close()

    async def try_join() -> None:  # and a node refuses a parent without the cluster's certificate
        cfg = NodeConfig(name="intruder", id="99", parents=[parse_address(cluster16.master_address)], key=other)
        n = Node(cfg)
        with pytest.raises((ssl.SSLError, OSError, GprocError, EOFError, asyncio.IncompleteReadError)):
            await n._join(cfg.parents[0])
        await n.stop()

    asyncio.run(try_join())
    still_serves(cluster16)


@pytest.mark.parametrize(
    "frames",
    [
        [struct.pack(">I", 0xFFFFFFF0)],  # a frame header beyond the size limit
        [struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1"],  # not msgpack
        [wire.pack({"t": "hello", "v": 999, "role": "node", "name": "intruder", "id": "9"})],  # wrong version
        [wire.pack({"t": "hello", "v": wire.PROTOCOL_VERSION, "role": "node", "name": "in truder", "id": "9"})],
        [struct.pack(">I", 3) + msgpack.packb([1, 2])],  # a frame that is not a message
        [wire.pack(wire.hello("node", name="intruder", id="0"))],  # id taken by node0 under the master
    ],
)
def test_authenticated_but_malformed_peer_is_closed(cluster16: LocalCluster, frames: list[bytes]) -> None:
    s = tls_connect(cluster16.master_address, cluster16.key)
    for f in frames:
        s.sendall(f)
    got = read_to_close(s)  # the master closes it (a timeout here fails the test)
    s.close()
    assert not [m for m in messages(got) if m.get("t") == "welcome"], "a malformed peer was admitted"
    still_serves(cluster16)


def test_registered_child_sending_garbage_is_dropped_alone(cluster16: LocalCluster) -> None:
    """A peer that registers properly and then misbehaves loses its link; everyone else carries on."""
    s, _ = registered(cluster16.master_address, cluster16.key, "77")
    s.sendall(wire.pack({"t": "op", "op": 1, "k": "exec", "b": {}, "tg": [0, 0]}))  # ops never travel up
    assert closed_by_peer(s)
    s.close()
    rows = [json.loads(x) for x in cluster16.gproc("i", "--json").stdout.splitlines() if x.strip()]
    assert [r["state"] for r in rows if r["name"] == "intruder"] == ["lost"]
    still_serves(cluster16)


def test_child_cannot_register_nodes_outside_its_subtree(cluster16: LocalCluster) -> None:
    """A registered child of an interior node asks for attaches it may not make: another node
    placed straight under the master, and a reannounce in another's name. Both are refused, and when
    its link goes it is reported lost with nothing left behind that nobody would ever report."""
    rows = [json.loads(x) for x in cluster16.gproc("i", "--json").stdout.splitlines() if x.strip()]
    node0 = next(r["address"] for r in rows if r["name"] == "node0")
    s, buf = registered(node0, cluster16.key, "78")
    calls = [
        {"name": "ghost", "id": "79", "instance": "y", "parent": 0},  # not under this link
        {"name": "ghost", "id": "79", "instance": "y"},  # a reannounce, but not of itself
        {"name": "ghost", "id": "79", "instance": "y", "parent": [0]},
    ]
    for i, a in enumerate(calls, 1):
        s.sendall(wire.pack({"t": "call", "id": i, "fn": "attach", "a": a}))
    rets: dict[int, dict] = {}
    while len(rets) < len(calls):
        chunk = s.recv(65536)
        assert chunk, "node0 closed the link instead of refusing the calls"
        buf += chunk
        rets = {m["id"]: m for m in messages(buf) if m.get("t") == "ret"}
    assert all(r.get("err") and "r" not in r for r in rets.values()), rets
    s.close()
    for _ in range(100):
        rows = [json.loads(x) for x in cluster16.gproc("i", "--json").stdout.splitlines() if x.strip()]
        if [r["state"] for r in rows if r["name"] == "intruder"] == ["lost"]:
            break
    assert [r["state"] for r in rows if r["name"] == "intruder"] == ["lost"], rows
    assert not [r for r in rows if r["name"] == "ghost"], rows
    ping = cluster16.gproc("ping", "--json")
    assert ping.returncode == 0 and json.loads(ping.stdout)["counts"] == {"ok": 16}, ping.stdout
    still_serves(cluster16)


def test_client_socket_survives_garbage(cluster16: LocalCluster) -> None:
    for payload in (
        os.urandom(100),
        struct.pack(">I", 0xFFFFFFFF),
        wire.pack({"t": "hello", "v": wire.PROTOCOL_VERSION, "role": "client"})
        + wire.pack({"t": "req", "fn": "exec", "argv": "notalist"}),
    ):
        s = socket.socket(socket.AF_UNIX)
        s.connect(cluster16.socket)
        s.sendall(payload)
        got = read_to_close(s)  # the master closes it (a timeout here fails the test)
        s.close()
        errors = [m for m in messages(got) if m.get("t") == "error"]
        assert len(errors) == 1, messages(got)
        if b"notalist" in payload:  # past the hello: refused by the request's own check
            assert "version" not in errors[0]["msg"], errors
    still_serves(cluster16)
