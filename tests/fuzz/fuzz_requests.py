"""Client requests as the master parses them: a real master (``daemon.build_master``, its services
and state database in a scratch directory) with four plain nodes grafted under it over memory links,
answering ``serve_client`` for each input.

The input is one byte choosing the caller (the master's owner or an unprivileged user), then a
msgpack request. The master must answer every request with replies it can encode, errors of
documented kinds included, and never reach its last-resort handler (which logs "client request
failed" and answers "internal error"). ``shutdown`` is left out: it would end the master under test.
No input runs a program: the nodes have no exec service, and the master's own refuses."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from typing import Any

from common import mutate_structured, structured

from gproc import errors, wire
from gproc.daemon import build_master
from gproc.overlay import Link, Node, NodeConfig
from gproc.platform import PeerCred

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import memlink

OWNER = PeerCred(os.getpid(), os.getuid(), os.getgid())
NOBODY = PeerCred(1, 65534, 65534)


class _Writer:
    """Where the master's replies go: packed (so each must be encodable) and kept."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.transport = self

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def abort(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _Failures(logging.Handler):
    """Errors the master logs: its last-resort handler, or a service failing in the background."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _refuse_exec(*_: Any) -> None:
    raise AssertionError("an exec op reached the master itself")


class Bench:
    """The master under test, built once for the whole run (a master per input would be most of the cost)."""

    def __init__(self) -> None:
        # under the run's scratch directory when it gives one (libFuzzer ends the process with exit(),
        # which skips Python's clean-up)
        self.dir = tempfile.mkdtemp(prefix="gproc-fuzz-master-", dir=os.environ.get("GPROC_FUZZ_TMP"))
        self.loop = asyncio.new_event_loop()
        self.failures = _Failures()
        self.nodes: list[Node] = []
        logging.getLogger().addHandler(self.failures)
        self.master = self.loop.run_until_complete(self._build())

    async def _build(self) -> Any:
        cfg = NodeConfig(name="m", id="m", bin_root=os.path.join(self.dir, "bin"))
        ctx = memlink.context()
        m = build_master(cfg, os.path.join(self.dir, "sock"), self.dir, server_ssl=ctx, client_ssl=ctx)
        m.requests.pop("shutdown")
        m.handlers["exec"] = _refuse_exec
        for i in range(4):  # n1 n2 under the master, n3 n4 under n1
            node = Node(NodeConfig(name=f"n{i + 1}", id=str(i + 1)), server_ssl=ctx, client_ssl=ctx)
            parent = m if i < 2 else self.nodes[0]
            memlink.graft(parent, node, i + 1, [] if i < 2 else [m])
            self.nodes.append(node)
        return m

    async def ask(self, req: dict[str, Any], cred: PeerCred) -> list[wire.Message]:
        reader = asyncio.StreamReader()
        reader.feed_eof()  # the client sends nothing more: signals and input end at once
        writer = _Writer()
        link = Link(reader, writer, {"name": "client"})  # type: ignore[arg-type]
        async with asyncio.timeout(20):
            await self.master.serve_client(link, req, cred)
        for _ in range(3):  # what the request started in the tree runs on a little
            await asyncio.sleep(0)
        return [wire.unpack(frame[4:]) for frame in writer.sent]


BENCH: Bench | None = None


def one(data: bytes) -> None:
    global BENCH
    if BENCH is None:
        BENCH = Bench()
    if not data:
        return
    req = structured(data[1:])
    if not isinstance(req, dict):
        return
    replies = BENCH.loop.run_until_complete(BENCH.ask(req, NOBODY if data[0] & 1 else OWNER))
    failed, BENCH.failures.records[:] = list(BENCH.failures.records), []
    assert not failed, "\n".join(logging.Formatter().format(r) for r in failed)
    for msg in replies:
        if msg["t"] == "error":
            assert msg.get("kind") in errors._kinds(), msg
            assert "internal error" not in str(msg.get("msg")), msg


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    return mutate_structured(data, max_size, seed, prefix=1)
