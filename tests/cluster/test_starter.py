"""Programs started through a starter process (``platform.Starter``, ``gproc.spawnd``).

A worker process hosting hundreds of nodes starts its programs through a small process holding five
descriptors. These tests force that path (``starter_above=0``) on a small local cluster and check
that a job cannot tell the difference, and that a starter that dies loses nothing but the statuses
of the programs it had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster, Output, Status, platform

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def started() -> Iterator[LocalCluster]:
    c, d = start_cluster(8, 4, starter_above=0)
    try:
        yield c
    finally:
        stop_cluster(c, d)


def outputs(events: list[object]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in events:
        if isinstance(e, Output):
            out.setdefault(e.data.decode(), set()).add(e.nodes)
    return out


async def running(c: Cluster, job: int) -> int:
    rows, _ = await c.ps()
    return sum(1 for r in rows if r["job"] == job)


def starters_of(c: LocalCluster) -> list[psutil.Process]:
    """The starter processes under this cluster's worker processes."""
    from gproc import local

    rec = local.UpRecord.load(c.socket)
    assert rec is not None
    found = []
    for pid, _ in rec.procs[1:]:
        for child in psutil.Process(pid).children():
            if any("gproc_spawnd" in a for a in child.cmdline()):
                found.append(child)
    return found


def test_a_program_is_the_starters_child_and_sees_what_a_direct_one_sees(started: LocalCluster, tmp_path) -> None:
    # its parent is the starter; it holds only 0-2 (plus ls's own directory), starts in the client's
    # directory, gets SIGPIPE and SIGINT at their defaults (the starter ignores SIGINT) and its exit status
    script = (
        "tr '\\0' ' ' < /proc/$PPID/cmdline; echo; ls /proc/self/fd | sort -n | tr '\\n' ' '; pwd;"
        " grep SigIgn /proc/self/status; exit 3"
    )

    async def go() -> tuple[int, list[object]]:
        c = Cluster(started.socket, timeout=60)
        return await c.run(["sh", "-c", script], "**", localbin=True, cwd=str(tmp_path))

    status, events = asyncio.run(go())
    assert status == 3
    statuses = [e for e in events if isinstance(e, Status)]
    assert [(s.count, s.status) for s in statuses] == [(8, 3)]
    lines = outputs(events)
    assert [line for line in lines if "gproc_spawnd" in line], lines  # sh's parent: the starter
    assert f"0 1 2 3 {tmp_path}\n" in lines, lines
    sigign = [line for line in lines if line.startswith("SigIgn:")]
    assert len(sigign) == 1, lines
    mask = int(sigign[0].split()[1], 16)
    assert mask & (1 << (signal.SIGPIPE - 1)) == 0 and mask & (1 << (signal.SIGINT - 1)) == 0, sigign
    assert starters_of(started), "no starter process under the workers"


def test_a_missing_program_is_reported_per_node(started: LocalCluster) -> None:
    r = started.gproc("e", "-localbin", "**", "/no/such/program")
    assert r.returncode == 127  # the node's own program, not found: as in a shell
    assert "cannot run /no/such/program" in r.stdout + r.stderr


def test_a_job_started_through_the_starter_is_killed_through_its_job(started: LocalCluster) -> None:
    async def go() -> tuple[int | None, float]:
        c = Cluster(started.socket, timeout=60)
        job = await c.exec(["sleep", "30"], include="node[0-3]", localbin=True)
        t0 = time.monotonic()
        async with asyncio.timeout(20):
            while True:  # every node has started its program
                if await running(c, job.id) == 4:
                    break
                await asyncio.sleep(0.1)
        await c.kill(job=job.id, sig=signal.SIGTERM)
        async with asyncio.timeout(20):
            _ = [e async for e in job]
        return job.exit_status, time.monotonic() - t0

    status, took = asyncio.run(go())
    assert status == 128 + signal.SIGTERM
    assert took < 20


def test_a_starter_that_dies_loses_only_its_programs_statuses(started: LocalCluster) -> None:
    async def go() -> tuple[int | None, list[object], tuple[int, list[object]]]:
        c = Cluster(started.socket, timeout=60)
        job = await c.exec(["sleep", "3"], "**", localbin=True)
        async with asyncio.timeout(20):
            while not starters_of(started) or await running(c, job.id) < 8:
                await asyncio.sleep(0.1)
        for s in starters_of(started):
            s.kill()  # SIGKILL: no exit report for the sleeps it started
        async with asyncio.timeout(30):
            events = [e async for e in job]
        again = await c.run(["echo", "still here"], "**", localbin=True)
        return job.exit_status, events, again

    status, _, (again_status, again_events) = asyncio.run(go())
    assert status == 255  # the programs' ends are unknown
    assert again_status == 0 and outputs(again_events) == {"still here\n": {"node[0-7]"}}


def test_spawner_falls_back_to_starting_directly(tmp_path) -> None:
    # a request too large for the starter's datagram, and a missing file, through a Spawner that
    # uses the starter for everything (this process's own descriptors count, so threshold 0)
    async def go() -> tuple[int, int, str]:
        sp = platform.Spawner(starter_above=0)
        try:
            big = {**os.environ, **{f"BIG{i}": "x" * 60_000 for i in range(5)}}  # 300 kB: no datagram
            p = sp.start(platform.Command(["sh", "-c", 'exit "$(( ${#BIG4} / 60000 ))"'], str(tmp_path), big))
            direct = await asyncio.wait_for(p.exited, 10)
            p.close_pipes()
            q = sp.start(platform.Command(["sh", "-c", "exit 7"], None, dict(os.environ)))
            assert sp.starter is not None and sp.starter.alive
            through = await asyncio.wait_for(q.exited, 10)
            q.close_pipes()
            try:
                sp.start(platform.Command(["/no/such/program"], None, {}))
            except FileNotFoundError as e:
                missing = str(e)
            return direct, through, missing
        finally:
            sp.close()

    a, b, missing = platform.run(go())
    assert (a, b) == (1, 7) and "/no/such/program" in missing


def test_starter_survives_malformed_requests() -> None:
    # a peer that sends garbage, wrong descriptors or nothing gets errors, and the starter keeps serving
    import json
    import subprocess

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = subprocess.Popen(platform.starter_argv(theirs.fileno()), pass_fds=[theirs.fileno()])
    theirs.close()
    mine.settimeout(10)
    try:
        for junk in (b"\xff\x00not json", b"[1, 2]", json.dumps({"s": 1, "path": "/bin/true"}).encode()):
            mine.send(junk)
            assert "errno" in json.loads(mine.recv(65536))

        def request(seq: int) -> bytes:
            return json.dumps({"s": seq, "path": "/bin/true", "argv": ["true"], "env": {}, "cwd": "/"}).encode()

        r, w = os.pipe()
        socket.send_fds(mine, [request(2)], [r])
        assert json.loads(mine.recv(65536))["errno"]  # one descriptor instead of three
        os.close(r)
        os.close(w)

        def devnulls() -> list[int]:
            return [os.open(os.devnull, os.O_RDWR) for _ in range(3)]

        fds = devnulls()
        socket.send_fds(mine, [request(3)], fds)
        for fd in fds:
            os.close(fd)
        reply = json.loads(mine.recv(65536))
        assert reply["s"] == 3 and reply["pid"] > 0
        ended = json.loads(mine.recv(65536))
        assert ended == {"x": reply["pid"], "status": 0}
        if os.geteuid() == 0:  # private views: bad ones are refused, one failing half-way is left
            home = os.readlink("/proc/self/ns/mnt")
            views: list[object] = [
                "junk",
                {"at": 1},
                {"at": "/nonexistent-gproc", "keep": "/", "files": [["f", "../x", 0, 0, 0]], "uid": 0, "gid": 0},
                {"at": "/nonexistent-gproc", "keep": "/nonexistent-gproc", "files": [], "uid": 0, "gid": 0},
            ]
            for seq, view in enumerate(views, 10):
                req = json.loads(request(seq))
                socket.send_fds(mine, [json.dumps({**req, "view": view}).encode()], fds := devnulls())
                for fd in fds:
                    os.close(fd)
                reply = json.loads(mine.recv(65536))
                assert reply["s"] == seq and "pid" not in reply and reply["kind"], reply
                assert os.readlink(f"/proc/{p.pid}/ns/mnt") == home  # back in its own namespace
    finally:
        mine.close()  # it ends when its socket closes
        assert p.wait(timeout=10) == 0


@pytest.mark.skipif(not platform.private_mounts_possible(), reason="private views need Linux and root")
def test_a_private_start_given_up_by_its_caller_leaves_no_program(tmp_path: Path) -> None:
    # The daemon stops waiting (its task is cancelled: the node stops) while the starter builds the
    # view: the program it then starts is ended, not left running with nobody reading its output.
    from gproc.privateview import PrivateView

    (tmp_path / "store").mkdir()
    (tmp_path / "bin").mkdir()
    view = PrivateView(str(tmp_path / "bin"), str(tmp_path / "store"), [["d", "/", 0o755]], 0, 0).to_wire()

    async def main() -> tuple[list[int], list[int]]:
        starter = platform.Starter(asyncio.get_running_loop())
        try:
            ok = await starter.start_in_view(platform.Command(["/bin/sleep", "30"], None, {}), view)
            running = [c.pid for c in psutil.Process(starter.pid).children()]  # the one not given up
            os.kill(ok.pid, signal.SIGKILL)
            await ok.exited
            ok.close_pipes()
            task = asyncio.ensure_future(starter.start_in_view(platform.Command(["/bin/sleep", "30"], None, {}), view))
            await asyncio.sleep(0)  # the request is sent
            task.cancel()
            left: list[int] = [0]
            async with asyncio.timeout(10):
                while starter._waiting or left:  # its answer settled, then its program ended
                    await asyncio.sleep(0.05)
                    left = [c.pid for c in psutil.Process(starter.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
            return running, left
        finally:
            with contextlib.suppress(psutil.Error):  # whatever a failed run left (ours, by pid)
                for child in psutil.Process(starter.pid).children():
                    child.kill()
            starter.close()

    running, left = asyncio.run(main())
    assert len(running) == 1 and left == []


@pytest.mark.skipif(not platform.private_mounts_possible(), reason="private views need Linux and root")
def test_private_starts_wait_for_a_place_and_give_it_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # At most VIEWS_IN_FLIGHT requests are at the starter; the others wait their turn, one that gives
    # up while waiting takes no place with it, and every place is back at the end.
    from gproc.privateview import PrivateView

    monkeypatch.setattr(platform, "VIEWS_IN_FLIGHT", 2)
    (tmp_path / "store").mkdir()
    (tmp_path / "bin").mkdir()
    view = PrivateView(str(tmp_path / "bin"), str(tmp_path / "store"), [["d", "/", 0o755]], 0, 0).to_wire()

    async def main() -> tuple[list[int], int, int]:
        starter = platform.Starter(asyncio.get_running_loop())
        most = 0

        async def one() -> int:
            nonlocal most
            proc = await starter.start_in_view(platform.Command(["/bin/true"], None, {}), view)
            most = max(most, starter._in_flight)
            status = await proc.exited
            proc.close_pipes()
            return status

        try:
            tasks = [asyncio.ensure_future(one()) for _ in range(8)]
            await asyncio.sleep(0)
            tasks[5].cancel()  # still waiting for a place
            done = await asyncio.gather(*tasks, return_exceptions=True)
            statuses = [d for d in done if isinstance(d, int)]
            return statuses, most, starter._in_flight + len(starter._slot_waiters)
        finally:
            starter.close()

    statuses, most, left = asyncio.run(main())
    assert statuses == [0] * 7 and most <= 2 and left == 0
