"""The node's staging service on its own: where a job's view goes when a private mount is not possible."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from gproc import platform
from gproc.bundle import build
from gproc.overlay import NodeConfig
from gproc.services.stage import StageService


class FakeNode:
    """What StageService needs of a node."""

    def __init__(self, bin_root: str) -> None:
        self.cfg = NodeConfig(name="n0", id="0", bin_root=bin_root)
        self.handlers: dict[str, Any] = {}
        self.rank = 1
        self.log = logging.getLogger("test.stage")
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task


def stocked(tmp_path: Path, argv: list[str]) -> tuple[FakeNode, StageService, dict[str, Any]]:
    """A stage service whose store already holds the bundle of ``argv``."""
    node = FakeNode(str(tmp_path / "bin"))
    stage = StageService(node)  # type: ignore[arg-type]
    b = build(argv, path_env="/usr/bin:/bin", cwd=str(tmp_path))
    assert b is not None
    for e in b.entries.values():
        if e.kind == "f" and not stage.store.has(e.hash, e.size):
            inc = stage.store.begin(e.hash, e.size, e.executable, "t")
            for off, data in b.chunks(e.hash):
                stage.store.write(inc, off, data)
    return node, stage, b.to_wire()


async def run(node: FakeNode, stage: StageService, bundle: dict[str, Any], argv: list[str]) -> str:
    proc = await stage.start(7, bundle, argv, {"PATH": "/usr/bin:/bin"}, os.getuid(), os.getgid())
    out = b""
    loop = asyncio.get_running_loop()
    while True:
        ready = loop.create_future()
        loop.add_reader(proc.stdout, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(proc.stdout)
        data = os.read(proc.stdout, 65536)
        if not data:
            break
        out += data
    assert await proc.exited == 0
    proc.close_pipes()
    await asyncio.gather(*node.tasks)  # the job directory's removal
    node.tasks.clear()
    return out.decode()


def test_without_private_mounts_a_job_directory_is_used_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "private_mounts_possible", lambda: False)
    node, stage, bundle = stocked(tmp_path, ["sh", "-c", "echo $GPROC_BINROOT; pwd"])
    out = asyncio.run(run(node, stage, bundle, ["sh", "-c", "echo $GPROC_BINROOT; pwd"]))
    root, pwd = out.split()
    assert root.startswith(stage.store.jobs + "/7-1-") and pwd == f"{root}{tmp_path}"
    assert not os.path.exists(root) and os.listdir(stage.store.jobs) == []


def test_a_refused_namespace_falls_back_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    async def refuse(*args: Any) -> None:
        calls.append(args)
        raise platform.NamespaceError(1, "unshare: Operation not permitted")

    monkeypatch.setattr(platform, "private_mounts_possible", lambda: True)
    monkeypatch.setattr(platform, "spawn_private", refuse)
    node, stage, bundle = stocked(tmp_path, ["sh", "-c", "echo $GPROC_BINROOT"])
    for _ in range(2):
        out = asyncio.run(run(node, stage, bundle, ["sh", "-c", "echo $GPROC_BINROOT"]))
        assert "/jobs/7-1-" in out
    assert len(calls) == 1 and stage.private_failed  # tried once, then straight to a job directory


class FakeOp:
    kind = "test"

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.out: list[tuple[Any, ...]] = []

    def emit(self, key: tuple[Any, ...]) -> None:
        self.out.append(key)


def test_files_a_job_was_told_are_here_stay_until_it_starts(tmp_path: Path) -> None:
    """``have`` for job 5 finds its file in a bounded store: another job's file may not evict it
    before job 5 starts (it would then fail: "not in the store")."""
    import hashlib

    from gproc.errors import StagingError

    node = FakeNode(str(tmp_path / "bin"))
    node.cfg.store_max = 100
    stage = StageService(node)  # type: ignore[arg-type]
    old, new = b"o" * 60, b"n" * 60
    h_old, h_new = hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest()
    stage.store.write(stage.store.begin(h_old, 60, False, "t"), 0, old)
    ops = stage.service().ops  # the handlers as a node runs them: bodies decoded first
    have = FakeOp({"h": [[h_old, 60, False]], "j": 5})
    ops["have"](have)  # type: ignore[arg-type]
    assert have.out == [("s", 0, "")]
    put = FakeOp({"h": h_new, "o": 0, "d": new, "z": 60, "x": False, "j": 6})
    with pytest.raises(StagingError, match="No space left in the store"):
        ops["put"](put)  # type: ignore[arg-type]
    assert stage.store.has(h_old, 60)
    stage.store.unpin(("put", 5))  # job 5 started and ended: its file may go now
    ops["put"](put)  # type: ignore[arg-type]
    assert put.out == [("s", 0, "")] and stage.store.has(h_new, 60) and not stage.store.has(h_old, 60)
