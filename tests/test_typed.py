"""Typed op bodies, client requests and upward calls (messages.Body): every one a daemon handles is
declared with its type, converted where it enters; one that is not its type gets one clear answer
naming the field, and the daemon goes on answering."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.memlink import Net, context, graft, run

from gproc import daemon
from gproc import ranks as rankset
from gproc.master import ExecRequest
from gproc.messages import Body
from gproc.overlay import Node, NodeConfig
from gproc.platform import PeerCred
from gproc.services.execute import ExecBody
from gproc.services.relay import RelayLink

OWNER = PeerCred(1, os.getuid(), os.getgid())


def make_master(tmp: Path) -> Any:
    net = Net()
    m = daemon.build_master(
        net.config("master", []), str(tmp / "m.sock"), str(tmp / "state"), server_ssl=context(), client_ssl=context()
    )
    net.listen(m)
    return m


def test_every_op_request_and_call_a_daemon_handles_declares_its_type(tmp_path: Path) -> None:
    """The tables as the daemon wires them: no handler left taking a raw map."""

    async def go() -> None:
        m = make_master(tmp_path)
        untyped_ops = sorted(k for k, h in m.handlers.items() if k != "noop" and not hasattr(h, "body"))
        untyped_requests = sorted(k for k, r in m.requests.items() if r.body is None)
        untyped_calls = sorted(k for k, c in m.calls.items() if not hasattr(c, "body"))
        assert (untyped_ops, untyped_requests, untyped_calls) == ([], [], [])
        assert {"exec", "ps", "put", "fread", "metrics"} <= set(m.handlers)
        await m.stop()

    run(go())


async def statuses(m: Any, kind: str, body: dict[str, Any], rank: int) -> list[Any]:
    whole = await m.request(kind, body, {rank}).wait(timeout=10)
    return [key for key, enc in whole.groups if key[0] == "s" and rankset.decode(enc) == {rank}]


def test_a_body_that_is_not_its_type_fails_the_op_there_and_the_node_goes_on(tmp_path: Path) -> None:
    async def go() -> None:
        m = make_master(tmp_path)
        node = Node(NodeConfig(name="n1", id="n1", bin_root=str(tmp_path / "bin")), server_ssl=context(),
                    client_ssl=context())  # fmt: skip
        daemon.node_services(node)
        graft(m, node, 1, [])
        bad = await statuses(m, "signal", {"job": "seven", "sig": 15}, 1)
        assert bad == [["s", 255, "bad signal body: Expected `int`, got `str` - at `$.job`"]]
        missing = await statuses(m, "hold", {"job": 7}, 1)
        assert missing == [["s", 255, "bad hold body: Object missing required field `on`"]]
        assert await statuses(m, "signal", {"job": 7, "sig": 15}, 1) == [["s", 1, ""]]  # no such job: typed, run
        assert await statuses(m, "noop", {}, 1) == [["s", 0, ""]]
        await m.stop()
        await node.stop()

    run(go())


@pytest.mark.parametrize(
    ("req", "why"),
    [
        ({"fn": "kill", "sig": "TERM", "gpids": [5]}, "bad kill request: Expected `int`, got `str` - at `$.sig`"),
        ({"fn": "exec", "argv": "true", "nodes": "./."}, "bad exec request: Expected `array`, got `str` - at `$.argv`"),
        ({"fn": "ps", "nodes": 3}, "bad ps request: Expected `str | null`, got `int` - at `$.nodes`"),
        ({"fn": "output"}, "bad output request: Object missing required field `job`"),
        ({"fn": "files", "what": "cat", "paths": ["/x"], "edges": ["a"]}, "Expected `int | float`, got `str`"),
    ],
)
def test_a_request_that_is_not_its_type_gets_one_usage_error_naming_the_field(
    tmp_path: Path, req: dict[str, Any], why: str
) -> None:
    async def go() -> None:
        m = make_master(tmp_path)
        link = RelayLink({"name": "test"})
        await m.serve_client(link, {"t": "req", **req}, OWNER)
        replies = [msg for msg, _ in link.outbox]
        assert len(replies) == 1 and replies[0]["t"] == "error" and replies[0]["kind"] == "UsageError", replies
        assert why in replies[0]["msg"] and replies[0]["code"] == 2
        link = RelayLink({"name": "test"})
        await m.serve_client(link, {"t": "req", "fn": "info"}, OWNER)  # and the master answers on
        assert link.outbox[0][0]["t"] == "ret"
        await m.stop()

    run(go())


def test_what_the_master_sends_is_what_a_node_takes() -> None:
    """The exec body the master builds from a request converts back into the node's type unchanged."""
    req = msgspec.convert({"t": "req", "fn": "exec", "argv": ["a"], "env": {"K": "v"}, "timeout": 3}, ExecRequest)
    body = ExecBody(argv=req.argv, env=req.env, uid=1, gid=2, job=9, timeout=req.timeout, redeliver=True)
    assert msgspec.convert(body.wire(), ExecBody) == body
    assert isinstance(Body().wire(), dict)
