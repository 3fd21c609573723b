"""Op bodies as a node's op handler table takes them: a node with every node service
(``daemon.build_node``, its store in a scratch directory) runs each input as an op on itself, through
``Node.start_op`` as an op from its parent would run, so each body is converted to its type
(``services.base.typed``) before the handler sees it.

The input is one byte choosing the op kind, then the msgpack body. The op must end, within seconds,
with statuses only of the documented kinds: never "internal error" (a handler failing on a body its
type let through) and nothing logged as an error. Only ops that change nothing outside the node's
scratch directory are run: not ``exec``, ``put``, ``allocate`` (it waits for gpid blocks from a
master there is none of) or the files ops, which act on the caller's files."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from typing import Any

from common import mutate_structured, structured

from gproc.daemon import build_node
from gproc.overlay import Node, NodeConfig

KINDS = ("noop", "signal", "hold", "ps", "kill", "wait", "collect", "pidstat", "have", "counters", "metrics",
         "proctop", "funfollow")  # fmt: skip


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Bench:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="gproc-fuzz-bodies-", dir=os.environ.get("GPROC_FUZZ_TMP"))
        self.loop = asyncio.new_event_loop()
        self.failures = _Failures()
        logging.getLogger().addHandler(self.failures)
        self.node: Node = self.loop.run_until_complete(self._build())
        self.next_id = 1

    async def _build(self) -> Node:
        from memlink import context

        ctx = context()
        node = build_node(NodeConfig(name="f", id="f", bin_root=os.path.join(self.dir, "bin")), server_ssl=ctx,
                          client_ssl=ctx)  # fmt: skip
        node.rank = 1
        return node

    async def run(self, kind: str, body: dict[str, Any]) -> list[list[Any]]:
        out: list[list[Any]] = []
        ended = asyncio.Event()

        def sink(groups: list[list[Any]], end: bool, value: Any = None) -> None:
            out.extend(groups)
            if end:
                ended.set()

        self.next_id += 1
        self.node.start_op(self.next_id, kind, body, {1}, sink, reducer=self.node.reducers.get(kind))
        async with asyncio.timeout(10):
            await ended.wait()
        return out


BENCH: Bench | None = None


def one(data: bytes) -> None:
    global BENCH
    if BENCH is None:
        import sys

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # memlink
        BENCH = Bench()
    if not data:
        return
    body = structured(data[1:])
    if not isinstance(body, dict):
        return
    kind = KINDS[data[0] % len(KINDS)]
    groups = BENCH.loop.run_until_complete(BENCH.run(kind, body))
    failed, BENCH.failures.records[:] = list(BENCH.failures.records), []
    assert not failed, "\n".join(logging.Formatter().format(r) for r in failed)
    for key, _ranks in groups:
        assert key[0] != "s" or "internal error" not in str(key[2]), (kind, body, key)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    return mutate_structured(data, max_size, seed, prefix=1)
