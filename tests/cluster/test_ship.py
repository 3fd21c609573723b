"""Shipping programs down a real local cluster: content addressing per link, staging, -p, -f, errors."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ClusterShell.NodeSet import NodeSet
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster, Output, Status, platform
from gproc.bundle import build

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")]
PRIVATE = platform.private_mounts_possible()  # else -p falls back to a per-job directory
needs_private = pytest.mark.skipif(not PRIVATE, reason="private mount namespaces need Linux and root")

# A 7-node tree, fanout 2: node0 and node1 under the master, node[2,4] under node0, node[3,5] under
# node1, node6 under node2 (three levels).
N = 7
PARENT = {0: None, 1: None, 2: 0, 3: 1, 4: 0, 5: 1, 6: 2}


@pytest.fixture(scope="module")
def tree7() -> Iterator[LocalCluster]:
    c, d = start_cluster(N, 2)
    try:
        yield c
    finally:
        stop_cluster(c, d)


def make_prog(where: Path, lib_kb: int = 0) -> Path:
    """bin/prog and lib/libmark.so.1 (RPATH $ORIGIN/../lib), with bytes no other test ships."""
    mark = secrets.token_hex(8)
    for d in ("bin", "lib", "src"):
        (where / d).mkdir(parents=True, exist_ok=True)
    pad = f'static const char pad[{lib_kb * 1024 + 1}] = "{mark}";' if lib_kb else ""
    (where / "src/mark.c").write_text(f'{pad}\nconst char *mark(void) {{ return "{mark}"; }}\n')
    (where / "src/main.c").write_text(
        "#include <stdio.h>\nconst char *mark(void);\nint main(int c, char **v) {\n"
        '  printf("mark %s argv0 %s\\n", mark(), v[0]);\n  for (int i = 1; i < c; i++) printf("%s\\n", v[i]);\n'
        "  return 0;\n}\n"
    )
    lib = where / "lib/libmark.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libmark.so.1", "-o", lib, where / "src/mark.c"], check=True)
    prog = where / "bin/prog"
    subprocess.run(["gcc", "-o", prog, where / "src/main.c", lib, "-Wl,-rpath,$ORIGIN/../lib"], check=True)
    return prog


def run(c: LocalCluster, argv: list[str], nodes: str = "**", **kw: Any) -> tuple[int, list[Any], dict[str, Any]]:
    """(exit status, events, shipped) of one job through the Python API; ``nodes`` is a NODESET."""

    async def go() -> tuple[int, list[Any], dict[str, Any]]:
        job = await Cluster(c.socket).exec(argv, None, include="@all" if nodes == "**" else nodes, **kw)
        events = [ev async for ev in job]
        assert job.exit_status is not None
        return job.exit_status, events, job.shipped

    return asyncio.run(go())


def per_node(events: list[Any]) -> dict[str, str]:
    """stdout of each node."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    for ev in events:
        if isinstance(ev, Output) and ev.stream == "stdout":
            for name in NodeSet(ev.nodes):
                out.setdefault(name, []).append((ev.lineno, ev.data))
    return {n: b"".join(d for _, d in sorted(lines)).decode() for n, lines in out.items()}


def statuses(events: list[Any]) -> dict[str, tuple[int, str]]:
    return {n: (ev.status, ev.error) for ev in events if isinstance(ev, Status) for n in NodeSet(ev.nodes)}


def counters(c: LocalCluster) -> dict[str, tuple[int, int]]:
    """Per node: (bytes its parent link carried down, file bytes it stored), so far."""

    async def go() -> dict[str, Any]:
        return dict(await Cluster(c.socket).request("stats", links=True))

    out = {}
    for row in asyncio.run(go())["links"]:
        for name in NodeSet(row["nodes"]):
            out[name] = (row["bytes_in"], row["file_bytes"])
    return out


def delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in after}


# ---- content addressing -------------------------------------------------------------------------


def test_each_link_carries_a_file_once_and_a_second_launch_nothing(tree7: LocalCluster, tmp_path: Path) -> None:
    prog = make_prog(tmp_path, lib_kb=3000)  # a 3 MB library: several chunks
    bundle = build([str(prog)], cwd=str(tmp_path))
    assert bundle is not None
    size = bundle.total_bytes
    names = [f"node{i}" for i in range(N)]

    # first to node0 only: only the master's link to node0 carries anything
    c0 = counters(tree7)
    status, events, shipped = run(tree7, [str(prog), "a"], "node0", cwd=str(tmp_path))
    assert status == 0, events
    assert per_node(events)["node0"].startswith("mark ") and shipped["bytes"] == size
    assert shipped["link_bytes"] == size
    c1 = counters(tree7)
    d = delta(c0, c1)
    assert d["node0"][1] == size and all(d[n][1] == 0 for n in names[1:])
    assert size <= d["node0"][0] < size + 256 * 1024
    assert all(d[n][0] < 64 * 1024 for n in names[1:])

    # then everywhere, with a new file: every link carries the program once (node0's too: its children
    # lack it) and node0 receives only the new file
    (tmp_path / "extra").write_bytes(os.urandom(5000))
    status, events, shipped = run(tree7, [str(prog), "a"], "**", cwd=str(tmp_path), files=["extra"])
    assert status == 0 and set(per_node(events)) == set(names)
    assert len(set(per_node(events).values())) == 1  # same program, same library, same output everywhere
    assert shipped["link_bytes"] == (size + 5000) * N and shipped["bytes"] == size + 5000
    d = delta(c1, counters(tree7))
    assert d["node0"][1] == 5000 and all(d[n][1] == size + 5000 for n in names[1:]), d
    assert all(size <= d[n][0] < size + 256 * 1024 for n in names), d

    # a second launch moves zero file bytes
    c2 = counters(tree7)
    status, events, shipped = run(tree7, [str(prog), "b"], "**", cwd=str(tmp_path), files=["extra"])
    assert status == 0 and (shipped["files"], shipped["bytes"], shipped["link_bytes"]) == (0, 0, 0)
    d = delta(c2, counters(tree7))
    assert all(d[n][1] == 0 and d[n][0] < 64 * 1024 for n in names), d


def test_the_deepest_node_gets_the_file(tmp_path: Path) -> None:
    c, d = start_cluster(5, 1)  # a chain: node4 is five links from the master
    try:
        prog = make_prog(tmp_path, lib_kb=1500)
        status, events, shipped = run(c, [str(prog), "deep"], "node4", cwd=str(tmp_path))
        assert status == 0, events
        out = per_node(events)
        assert list(out) == ["node4"] and out["node4"].endswith("deep\n")
        size = shipped["bytes"]
        assert shipped["link_bytes"] == 5 * size  # forwarded by node0..3, stored by node4 only
        stored = {n: v[1] for n, v in counters(c).items()}
        assert stored["node4"] == size and all(stored[f"node{i}"] == 0 for i in range(4))
    finally:
        stop_cluster(c, d)


# ---- running from binRoot -----------------------------------------------------------------------


def test_runs_from_bin_root_through_the_shipped_interpreter(tree7: LocalCluster, tmp_path: Path) -> None:
    # the shipped sh prints its own mappings (cat is the node's, reading /proc/<sh>/maps)
    script = "cat /proc/$$/maps; echo EXE $(readlink /proc/$$/exe); echo ROOT $GPROC_BINROOT; echo PWD $PWD"
    for private in (True, False):
        status, events, _ = run(tree7, ["sh", "-c", script], "node[2,6]", cwd=str(tmp_path), private=private)
        assert status == 0, events
        for name, text in per_node(events).items():
            lines = text.splitlines()
            root = next(line[5:] for line in lines if line.startswith("ROOT "))
            assert root.startswith(tree7.rundir) and (("/jobs/" in root) != (private and PRIVATE)), root
            assert next(line for line in lines if line.startswith("PWD ")) == f"PWD {root}{tmp_path}"
            exe = next(line[4:] for line in lines if line.startswith("EXE "))
            assert exe.startswith(root + "/") and "ld-linux" in exe, exe
            mapped = {line.split()[-1] for line in lines if line.count(" ") > 4 and line.split()[-1].startswith("/")}
            assert any("libc.so" in m for m in mapped) and any(m.endswith("/dash") for m in mapped), mapped
            assert all(m.startswith(root + "/") for m in mapped), (name, mapped)


@needs_private
def test_private_staging_lives_only_in_the_jobs_namespace(tree7: LocalCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    wait = f"(while [ ! -e {release} ]; do sleep 0.1; done) >/dev/null 2>&1 & echo $! $GPROC_BINROOT"
    status, events, _ = run(tree7, ["sh", "-c", wait], "node3", cwd=str(tmp_path))
    assert status == 0, events
    pid, root = per_node(events)["node3"].split()
    try:
        inside = f"/proc/{pid}/root{root}"
        assert os.path.isfile(f"{inside}/usr/bin/dash")  # staged, in the job's namespace ...
        mounts = Path(f"/proc/{pid}/mountinfo").read_text()
        assert any(line.split()[4] == root and " - tmpfs " in line for line in mounts.splitlines())
        assert not os.path.exists(f"{root}/usr") and os.listdir(f"{root}/jobs") == []  # ... not outside
    finally:
        release.touch()
    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")  # the last process is gone, and its namespace with it


@needs_private
@pytest.mark.parametrize("starter_above", [0, -1], ids=["starter", "thread"])
def test_jobs_of_one_program_on_one_node_write_apart(starter_above: int, tmp_path: Path) -> None:
    # Jobs of the same bundle, at the same time, on one node, their views built by that process's
    # program starter (which then stays in the node's namespace) or by threads of the daemon: each
    # writes the same name in its working directory (inside its view) and reads back its own.
    c, d = start_cluster(4, 2, starter_above=starter_above)
    try:
        _write_apart(c, tmp_path, starter_above == 0)
    finally:
        stop_cluster(c, d)


def _write_apart(cluster: LocalCluster, tmp_path: Path, starter: bool) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    script = (
        f"echo $GPROC_JOBID > mine; touch {flags}/$GPROC_JOBID; while [ ! -e {flags}/go ]; do sleep 0.05; done;"
        " cat mine; readlink /proc/self/ns/mnt"
    )

    async def one(c: Cluster) -> tuple[int | None, str]:
        job = await c.exec(["sh", "-c", script], None, include="node3", cwd=str(tmp_path))
        events = [ev async for ev in job]
        return job.id, per_node(events).get("node3", "") + str(statuses(events))

    async def release() -> None:
        async with asyncio.timeout(30):
            while len(os.listdir(flags)) < 3:  # all three running at once
                await asyncio.sleep(0.05)
        (flags / "go").touch()

    async def go() -> list[tuple[int | None, str]]:
        c = Cluster(cluster.socket)
        *outs, _ = await asyncio.gather(one(c), one(c), one(c), release())
        return outs

    outs = asyncio.run(go())
    namespaces = set()
    for job_id, out in outs:
        lines = out.split("\n")
        assert lines[0] == str(job_id), outs  # its own file, not a neighbour's
        namespaces.add(lines[1])
    assert len(namespaces) == 3, outs
    assert os.readlink("/proc/self/ns/mnt") not in namespaces
    starters = [p for p in os.listdir("/proc") if p.isdigit() and _is_starter_of(p, cluster.rundir)]
    assert bool(starters) == starter
    assert all(os.readlink(f"/proc/{p}/ns/mnt") == os.readlink("/proc/self/ns/mnt") for p in starters)


def _is_starter_of(pid: str, rundir: str) -> bool:
    """Is ``pid`` a program starter of a node daemon process of the cluster run from ``rundir``?"""
    try:
        if b"spawnd" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return False
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        return rundir.encode() in Path(f"/proc/{ppid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def test_job_directory_removed_when_the_last_process_exits(tree7: LocalCluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    wait = f"(while [ ! -e {release} ]; do sleep 0.1; done) >/dev/null 2>&1 & echo $GPROC_BINROOT"
    status, events, _ = run(tree7, ["sh", "-c", wait], "node5", cwd=str(tmp_path), private=False)
    assert status == 0, events
    root = per_node(events)["node5"].strip()
    try:
        assert "/jobs/" in root and os.path.isfile(f"{root}/usr/bin/dash")  # the job's child still runs
    finally:
        release.touch()
    deadline = time.monotonic() + 15
    while os.path.exists(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(root)


# ---- what travels with the program --------------------------------------------------------------


def test_files_working_directory_and_modes(tree7: LocalCluster, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "data/sub").mkdir(parents=True)
    (work / "data/in.txt").write_text("input\n")
    (work / "data/sub/tool.sh").write_text("#!/bin/sh\necho tool\n")
    (work / "data/sub/tool.sh").chmod(0o750)
    (work / "empty").mkdir()
    (work / "empty/not-shipped").write_text("x")
    check = (
        "pwd; cat data/in.txt; [ -x data/sub/tool.sh ] && echo tool-x; [ -x data/in.txt ] || echo in-not-x; "
        "ls empty | wc -l; echo $GPROC_BINROOT"
    )
    env = {**os.environ, "GPROC_MASTER": tree7.socket}
    r = subprocess.run(
        [sys.executable, "-m", "gproc", "e", "-b", "-f", "data,empty/.", "-w", "node[0-1]", "sh", "-c", check],
        capture_output=True, text=True, cwd=work, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name in ("node0", "node1"):
        _, events, _ = run(tree7, ["sh", "-c", check], name, cwd=str(work), files=["data", "empty/."])
        lines = per_node(events)[name].splitlines()
        root = lines[-1]
        assert lines[:-1] == [f"{root}{work}", "input", "tool-x", "in-not-x", "0"], lines
    assert "input" in r.stdout and "tool-x" in r.stdout


def test_a_script_brings_its_interpreter(tree7: LocalCluster, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/sh -e\necho "args $*"\necho "zero $0"\n')
    script.chmod(0o755)
    status, events, _ = run(tree7, ["./job.sh", "a", "b"], "**", cwd=str(tmp_path))
    assert status == 0, events
    for text in per_node(events).values():
        args, zero = text.splitlines()
        assert args == "args a b" and zero.startswith("zero ") and zero.endswith(f"{tmp_path}/job.sh")
        assert zero[5:] != str(script)  # run from binRoot, not from here


def test_localbin_runs_the_nodes_own_program(tree7: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "note").write_text("shipped\n")
    status, events, shipped = run(tree7, ["sh", "-c", "cat /proc/$$/maps; echo; cat note"], "node0", localbin=True,
                                  cwd=str(tmp_path), files=["note"])  # fmt: skip
    assert status == 0, events
    text = per_node(events)["node0"]
    assert text.endswith("\nshipped\n")
    mapped = {line.split()[-1] for line in text.splitlines() if line.count(" ") > 4}
    assert any(m.startswith(("/usr/lib", "/lib")) and "libc.so" in m for m in mapped), mapped
    assert shipped["files"] <= 1


# ---- errors -------------------------------------------------------------------------------------


def test_missing_library_is_reported_before_anything_is_sent(tree7: LocalCluster, tmp_path: Path) -> None:
    prog = make_prog(tmp_path)
    (tmp_path / "lib/libmark.so.1").unlink()
    r = tree7.gproc("e", "--json", "**", str(prog))
    assert r.returncode == 255 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "libmark.so.1 needed by" in r.stderr and f"{tmp_path}/bin/../lib" in r.stderr, r.stderr


def test_wrong_architecture_is_255_per_node_with_a_reason(tree7: LocalCluster, tmp_path: Path) -> None:
    if os.uname().machine != "x86_64" or not os.path.exists("/sbin/ldconfig"):
        pytest.skip("needs an x86_64 host with a static /sbin/ldconfig")
    if os.path.exists("/proc/sys/fs/binfmt_misc/qemu-aarch64"):
        pytest.skip("aarch64 programs run here through qemu")
    data = bytearray(Path("/sbin/ldconfig").read_bytes())  # static: the kernel loads it directly
    data[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    prog = tmp_path / "arm-prog"
    prog.write_bytes(bytes(data))
    prog.chmod(0o755)
    r = tree7.gproc("e", "--json", "-w", "node[1-2]", str(prog))
    assert r.returncode == 255, r.stderr
    (rec,) = [json.loads(x) for x in r.stdout.splitlines()]
    assert rec["nodes"] == "node[1-2]" and rec["status"] == 255, rec
    assert rec["error"] == f"cannot run {prog}: Exec format error (built for aarch64, this node is x86_64)", rec


def test_foreign_root_program_cannot_start_here(tree7: LocalCluster) -> None:
    root = Path.home() / ".cache/gproc-test/arm64-root"
    if os.uname().machine != "x86_64" or not (root / ".complete").exists():
        pytest.skip("needs an x86_64 host and the cached arm64 root (tests/foreign_root.py)")
    if os.path.exists("/proc/sys/fs/binfmt_misc/qemu-aarch64"):
        pytest.skip("no cached arm64 root (tests/foreign_root.py), or qemu runs aarch64 here")
    r = tree7.gproc("e", "--json", "-r", str(root), "-w", "node3", "ls", "/")
    assert r.returncode == 255, r.stderr
    (rec,) = [json.loads(x) for x in r.stdout.splitlines()]
    assert (
        rec["status"] == 255
        and rec["error"] == "cannot run ls: Exec format error (built for aarch64, this node is x86_64)"
    )


def test_malformed_bundles_are_refused_and_nodes_live_on(tree7: LocalCluster, tmp_path: Path) -> None:
    good = build(["true"], path_env="/usr/bin:/bin", cwd=str(tmp_path))
    assert good is not None

    def send(conn: Any, hashes: list[str]) -> None:
        for h in hashes:
            for off, data in good.chunks(h):
                conn.send({"t": "data", "h": h, "o": off, "d": data})

    w = good.to_wire()
    for bad_files in ([["f", "/../../etc/passwd", "0" * 64, 1, 0o644]], [["l", "/a", "../../.."]], "x"):
        with pytest.raises(Exception, match=r"bad|outside|manifest"):  # refused by the master
            raw_job(tree7, {**w, "files": bad_files}, send)
    # a run description pointing outside the view: every node refuses it, and goes on working
    out = raw_job(tree7, {**w, "run": {**w["run"], "exe": "/../../bin/sh"}}, send)
    assert out and all(key[1] == 255 and "staging failed: bad executable" in key[2] for key, _ in out), out
    status, events, _ = run(tree7, ["true"], "**")
    assert status == 0 and statuses(events) == {f"node{i}": (0, "") for i in range(N)}


def raw_job(c: LocalCluster, bundle: Any, answer_want: Any) -> list[Any]:
    """An exec request sent by hand; ``answer_want(conn, hashes)`` replies to the master's ``want``.
    Returns the status keys and node sets the master sends back."""
    from gproc.client import Connection

    async def go() -> list[Any]:
        conn = await Connection.open(c.socket)
        conn.send({"t": "req", "fn": "exec", "argv": ["true"], "nodes": "**", "env": {}, "cwd": None, "bundle": bundle})
        out: list[Any] = []
        try:
            while (m := await conn.receive())["t"] != "end":
                if m["t"] == "want":
                    answer_want(conn, m["h"])
                elif m["t"] == "out":
                    out += [(tuple(key), nodes) for key, nodes, _ in m["g"] if key[0] == "s"]
        finally:
            conn.close()
        return out

    return asyncio.run(go())


def test_a_file_the_client_cannot_read_fails_the_nodes_that_need_it(tree7: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "fresh").write_bytes(os.urandom(1000))
    b = build(["true"], path_env="/usr/bin:/bin", cwd=str(tmp_path), files=["fresh"])
    assert b is not None

    def fail(conn: Any, hashes: list[str]) -> None:
        for h in hashes:
            if b.sources[h].endswith("fresh"):
                conn.send({"t": "data", "h": h, "err": "Permission denied"})
            else:
                for off, data in b.chunks(h):
                    conn.send({"t": "data", "h": h, "o": off, "d": data})

    out = raw_job(tree7, b.to_wire(), fail)
    assert out == [(("s", 255, "cannot read a file on the client: Permission denied"), f"node[0-{N - 1}]")], out


def test_ctrl_c_while_shipping_ends_the_job_before_it_starts(tree7: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "fresh").write_bytes(os.urandom(1000))
    b = build(["true"], path_env="/usr/bin:/bin", cwd=str(tmp_path), files=["fresh"])
    assert b is not None
    out = raw_job(tree7, b.to_wire(), lambda conn, hashes: conn.send({"t": "signal", "sig": 2}))
    assert out == [(("s", 255, "interrupted while shipping"), f"node[0-{N - 1}]")], out
