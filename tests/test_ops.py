"""The overlay without subprocesses: nodes in one process over in-memory links on a virtual clock
(tests/memlink.py). Admission, re-attachment, upward calls, ``Node.request`` with reducers and the
flush timing of an op (window, hold, quiet) run through the real code in milliseconds."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.memlink import Net, context, graft, run

from gproc import daemon
from gproc import ranks as rankset
from gproc.errors import RegistrationError, UsageError
from gproc.master import Master
from gproc.overlay import Node, NodeConfig, Op
from gproc.platform import PeerCred
from gproc.reduce import GroupsReducer, Sum
from gproc.services.base import ClientRequest, Role, ServiceTable, has_role, install
from gproc.services.relay import RelayLink


def make_master(net: Net, tmp: Path, **cfg: Any) -> Master:
    m = daemon.build_master(
        net.config("master", [], **cfg),
        os.path.join(tmp, "master.sock"),
        os.path.join(tmp, "state"),
        server_ssl=context(),
        client_ssl=context(),
    )
    net.listen(m)
    return m


def ok_ranks(groups: list[list[Any]]) -> set[int]:
    out: set[int] = set()
    for key, enc in groups:
        if key[0] == "s" and key[1] == 0:
            out |= rankset.decode(enc)
    return out


async def tree(net: Net, master: Master, shape: list[int], **cfg: Any) -> list[Node]:
    """Nodes under the master, ``shape[i]`` children for each node of level i; all attached."""
    level: list[Node | Master] = [master]
    made: list[Node] = []
    for depth, k in enumerate(shape):
        last = depth == len(shape) - 1
        nxt: list[Node | Master] = []
        for p in level:
            assert p.listen_address is not None
            for i in range(k):
                n = net.node(f"{p.cfg.name}-{i}" if p is not master else f"n{i}", [p.listen_address], not last, **cfg)
                await net.start(n)
                nxt.append(n)
                made.append(n)
        await net.attached(*[n for n in nxt if isinstance(n, Node)])
        level = nxt
    return made


async def stop_all(master: Master, nodes: list[Node]) -> None:
    await asyncio.gather(*(n.stop() for n in [*nodes, master]))


def grown(master: Master, shape: list[int]) -> list[Node]:
    """A tree of ``shape`` grafted under the master (no handshakes: thousands of nodes quickly)."""
    made: list[Node] = []
    level: list[tuple[Node, list[Node]]] = [(master, [])]
    rank = 1
    for k in shape:
        nxt: list[tuple[Node, list[Node]]] = []
        for p, above in level:
            for _ in range(k):
                n = Node(NodeConfig(name=f"g{rank}", id=f"g{rank}"), server_ssl=context(), client_ssl=context())
                graft(p, n, rank, above)
                rank += 1
                made.append(n)
                nxt.append((n, [p, *above]))
        level = nxt
    return made


def test_a_tree_joins_and_answers_a_noop(tmp_path: Path) -> None:
    async def go() -> None:
        net = Net()
        master = make_master(net, tmp_path)
        nodes = await tree(net, master, [2, 3])
        assert sorted(master.up_ranks()) == sorted(n.rank for n in nodes if n.rank is not None)
        reply = await master.request("noop", {}, master.up_ranks())
        assert ok_ranks(reply.groups) == master.up_ranks() and reply.end
        await stop_all(master, nodes)

    run(go())


# ---- reducers through the tree -----------------------------------------------------------------


def sampler(value: Callable[[Node], Any]) -> Callable[[Op], None]:
    def handler(op: Op) -> None:
        op.give(value(op.node))
        op.emit(("s", 0, ""))

    return handler


async def master_bytes(tmp: Path, shape: list[int]) -> dict[str, tuple[Any, int]]:
    """Over a tree of ``shape``: the sum of the ranks, and the groups of a distinct key per node,
    each with the reply bytes that reached the master."""
    master = make_master(Net(), tmp)
    nodes = grown(master, shape)
    out: dict[str, tuple[Any, int]] = {}
    for name, reducer, value in (
        ("sum", Sum(), lambda n: n.rank),
        ("groups", GroupsReducer(), lambda n: (["v", n.rank], [n.rank])),
    ):
        for n in nodes:
            n.handlers["sample"] = sampler(value)
        req = master.request("sample", {}, master.up_ranks(), reducer)
        reply = await req.wait()
        assert ok_ranks(reply.groups) == master.up_ranks()
        out[name] = (reply.value, req.op.bytes_in)
        for n in nodes:
            del n.handlers["sample"]
    await stop_all(master, nodes)
    return out


def test_a_sum_over_10000_nodes_reaches_the_master_in_the_bytes_of_1000(tmp_path: Path) -> None:
    """Ten children under the master each way: 1,110 or 10,110 nodes below them, the master receives
    the same handful of bytes (a few more digits of the sum); a groups reducer with a distinct key
    per node grows with the nodes."""

    async def go() -> None:
        small = await master_bytes(tmp_path / "a", [10, 10, 10])
        big = await master_bytes(tmp_path / "b", [10, 10, 100])
        assert small["sum"][0] == sum(range(1, 1111)) and big["sum"][0] == sum(range(1, 10111))
        assert big["sum"][1] <= small["sum"][1] + 10 * 4  # ten replies, each a few bytes of digits longer
        assert big["sum"][1] < 1000
        assert len(big["groups"][0]) == 10110
        assert big["groups"][1] > 5 * small["groups"][1]

    run(go())


# ---- admission and re-attachment --------------------------------------------------------------


def test_a_child_is_held_until_its_parent_attaches(tmp_path: Path) -> None:
    async def go() -> None:
        net = Net()
        master = make_master(net, tmp_path)
        a = net.node("a", [master.listen_address])  # type: ignore[list-item]
        b = net.node("b", [a.listen_address])  # type: ignore[list-item]
        await net.start(b)  # its parent is not attached yet
        await asyncio.sleep(5.0)
        assert not b.registered.is_set()
        await net.start(a)
        await net.attached(a, b)
        assert master.topo[b.rank].parent == a.rank  # type: ignore[index]
        await stop_all(master, [a, b])

    run(go())


def test_an_id_taken_by_another_name_is_refused_for_good(tmp_path: Path) -> None:
    async def go() -> None:
        net = Net()
        master = make_master(net, tmp_path)
        a = net.node("a", [master.listen_address])  # type: ignore[list-item]
        await net.start(a)
        await net.attached(a)
        intruder = net.node("other", [master.listen_address], id="a")  # type: ignore[list-item]
        await net.start(intruder)
        async with asyncio.timeout(30):
            await intruder.stopped.wait()
        assert isinstance(intruder.fatal, RegistrationError) and "already taken" in str(intruder.fatal)
        assert a.registered.is_set() and master.topo[a.rank].state == "up"  # type: ignore[index]
        await stop_all(master, [a])

    run(go())


def test_a_node_whose_parent_dies_reattaches_to_the_grandparent_with_its_rank(tmp_path: Path) -> None:
    async def go() -> None:
        net = Net()
        master = make_master(net, tmp_path, heartbeat=0.5, dead_after=2.0)
        a = net.node("a", [master.listen_address])  # type: ignore[list-item]
        b = net.node("b", [a.listen_address])  # type: ignore[list-item]
        for n in (a, b):
            await net.start(n)
        await net.attached(a, b)
        rank = b.rank
        assert rank is not None and master.topo[rank].parent == a.rank
        await a.stop()
        async with asyncio.timeout(30):
            while not (b.registered.is_set() and b.parent_address == master.listen_address):
                await asyncio.sleep(0.05)
        assert b.rank == rank and master.topo[rank].parent == 0 and master.topo[rank].state == "up"
        reply = await master.request("noop", {}, {rank})
        assert ok_ranks(reply.groups) == {rank}
        await stop_all(master, [b])

    run(go())


# ---- upward calls -----------------------------------------------------------------------------


def test_an_upward_call_travels_hop_by_hop_and_errors_come_back(tmp_path: Path) -> None:
    async def go() -> None:
        net = Net()
        master = make_master(net, tmp_path)
        nodes = await tree(net, master, [1, 1])
        leaf = nodes[-1]

        async def echo(args: dict[str, Any]) -> Any:
            if args.get("fail"):
                raise UsageError("refused here")
            return {"echo": args["x"]}

        master.calls["echo"] = echo
        assert await leaf.call_up("echo", {"x": [1, "two"]}) == {"echo": [1, "two"]}
        with pytest.raises(UsageError, match="refused here"):  # of the kind raised at the master
            await leaf.call_up("echo", {"fail": True})
        with pytest.raises(RegistrationError, match="unknown call"):
            await leaf.call_up("nope", {})
        await stop_all(master, nodes)

    run(go())


# ---- when results go up -----------------------------------------------------------------------


def scripted(op: Op) -> Any:
    """Emit the lines the op's script gives this node at the given times, then end."""

    async def play() -> None:
        t0 = asyncio.get_running_loop().time()
        for at, line in op.body["s"].get(op.node.cfg.name, []):
            await asyncio.sleep(t0 + at - asyncio.get_running_loop().time())
            if line is not None:
                op.emit(("o", 1, 0, line.encode()))
        op.emit(("s", 0, ""))

    return play()


async def rep_times(tmp: Path, script: dict[str, list[list[Any]]], leaves: int) -> list[float]:
    """Times (from the op's start) at which the master received a reply from its one child, an
    interior node whose leaves follow ``script``."""
    net = Net()
    master = make_master(net, tmp, window=0.01, quiet=0.25, hold=3.0)
    nodes = await tree(net, master, [1, leaves], window=0.01, quiet=0.25, hold=3.0)
    for n in nodes:
        n.handlers["script"] = scripted
    loop = asyncio.get_running_loop()
    times: list[float] = []
    on_rep = master._on_rep

    def spy(link: Any, msg: Any) -> None:
        times.append(round(loop.time() - t0, 3))
        on_rep(link, msg)

    master._on_rep = spy  # type: ignore[method-assign]
    t0 = loop.time()
    await master.request("script", {"s": script}, {n.rank for n in nodes[1:] if n.rank is not None})
    await stop_all(master, nodes)
    return times


def test_an_interior_node_holds_replies_until_every_child_answered_once(tmp_path: Path) -> None:
    """Children answering at 0.1 s and 1 s: one reply goes up, when the last child ends."""
    times = run(rep_times(tmp_path, {"n0-0": [[0.1, None]], "n0-1": [[1.0, None]]}, 2))
    assert times == [pytest.approx(1.0, abs=0.005)]


def test_an_interior_node_holds_replies_no_longer_than_hold(tmp_path: Path) -> None:
    """A child silent past ``hold`` (3 s): what the others said goes up at 3 s, the rest at its end."""
    times = run(rep_times(tmp_path, {"n0-0": [[0.1, None]], "n0-1": [[10.0, None]]}, 2))
    assert times == [pytest.approx(3.0, abs=0.005), pytest.approx(10.0, abs=0.005)]


def test_after_the_first_reply_news_goes_up_once_quiet(tmp_path: Path) -> None:
    """Both children print at once (the reply goes ``quiet`` after the last first word), one prints
    again at 5 s (up ``quiet`` later: the other is still running and silent), both end at 20 s (up
    at once: an ending goes up without waiting)."""
    script = {"n0-0": [[0.0, "a"], [20.0, None]], "n0-1": [[0.0, "a"], [5.0, "b"], [20.0, None]]}
    times = run(rep_times(tmp_path, script, 2))
    assert times == [
        pytest.approx(0.26, abs=0.005),
        pytest.approx(5.26, abs=0.005),
        pytest.approx(20.0, abs=0.005),
    ]


def test_a_service_table_wires_its_ops_reducers_and_requests(tmp_path: Path) -> None:
    """A service declared in a table and installed on every node: the master's request reduces with
    the reducer the table names for the op; a name two services claim is refused."""

    async def go() -> None:
        net = Net()
        master = make_master(net, tmp_path)
        nodes = await tree(net, master, [3, 2])

        def count(op: Op) -> None:
            op.give(1)
            op.emit(("s", 0, ""))

        table = ServiceTable("count", ops={"count": count}, reducers={"count": Sum()})
        for n in [master, *nodes]:
            install(n, table)
        reply = await master.request("count", {}, master.up_ranks())
        assert reply.value == len(nodes) == 9
        with pytest.raises(ValueError, match="already handled"):
            install(nodes[0], ServiceTable("again", ops={"count": count}))
        await stop_all(master, nodes)

    run(go())


def test_the_master_checks_a_requests_role_before_its_handler(tmp_path: Path) -> None:
    """One place answers client requests (the master's socket and relayed ones): a caller without
    the role a request's table names gets a usage error of that kind, the handler never runs."""

    async def go() -> None:
        master = make_master(Net(), tmp_path)
        ran: list[int] = []

        async def handler(link: Any, req: Any, cred: PeerCred) -> None:
            ran.append(cred.uid)
            link.send({"t": "ret", "r": {}})

        master.requests["drill"] = ClientRequest(handler, Role.OWNER, "drill")
        master.requests["look"] = ClientRequest(handler)
        stranger, owner = PeerCred(1, os.getuid() + 12345, 1), PeerCred(1, os.getuid(), 1)
        for fn, cred, kind in (("drill", stranger, "UsageError"), ("drill", owner, None), ("look", stranger, None),
                               ("shutdown", stranger, "UsageError"), ("nope", owner, "UsageError")):  # fmt: skip
            link = RelayLink({"name": "test"})
            await master.serve_client(link, {"t": "req", "fn": fn}, cred)
            reply = link.outbox[0][0]
            assert (reply.get("kind") if reply["t"] == "error" else None) == kind, (fn, reply)
        assert ran == [owner.uid, stranger.uid]
        assert not has_role(Role.ROOT, owner) or os.getuid() == 0
        await master.stop()

    run(go())
