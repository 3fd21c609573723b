"""Group file operations on a real local cluster: cat/stat with aggregation inside the tree, cp with
per-node destinations, the caller's rights, atomic writes, bad input (issue 21)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from typing import Any

import pytest
from ClusterShell.NodeSet import NodeSet
from tests.cluster.test_pids import as_user
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster, bundle, elf, nodespec, store  # noqa: F401  (loaded before a test drops to nobody)
from gproc.errors import GprocError
from gproc.services import fileio  # noqa: F401

NODES = [f"node{i}" for i in range(8)]
ROOT = os.geteuid() == 0
NOBODY = 65534


def per_node(work: str, name: str, contents: dict[str, str]) -> str:
    """``work/NODE/name`` holding each node's text; returns the %h template."""
    for node, text in contents.items():
        os.makedirs(os.path.join(work, node), exist_ok=True)
        with open(os.path.join(work, node, name), "w") as f:
            f.write(text)
    return os.path.join(work, "%h", name)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_cat_groups_identical_contents_and_concat_keeps_node_order(c8: LocalCluster, work: str) -> None:
    same = os.path.join(work, "same")
    with open(same, "w") as f:
        f.write("identical\n")
    r = c8.gproc("cat", "**", same, "--json")
    assert r.returncode == 0, r.stderr
    assert records(r.stdout) == [{"path": same, "nodes": "node[0-7]", "count": 8, "data": "identical\n"}]
    tpl = per_node(work, "n", {n: f"{n} says {i}\n" for i, n in enumerate(NODES)})
    r = c8.gproc("cat", "**", tpl, "--agg", "concat")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{n}: {n} says {i}" for i, n in enumerate(NODES)]


def numeric_reply(c: LocalCluster, work: str, agg: str, values: list[int]) -> tuple[Any, int]:
    names = [f"node{i}" for i in range(len(values))]
    tpl = per_node(work, f"v{c.n}", {n: f"{v}\n" for n, v in zip(names, values, strict=True)})
    r = c.gproc("cat", "**", tpl, "--agg", agg, "--json")
    assert r.returncode == 0, r.stderr
    (rec,) = records(r.stdout)
    return rec["value"], rec["rep_bytes"]


def test_numeric_aggregation_reaches_the_master_in_constant_bytes(c8: LocalCluster, work: str) -> None:
    """sum and hist are computed inside the tree: the reply bytes at the master are the same for 8
    and 24 nodes (the master has two child links either way), while equiv of distinct contents grows."""
    c24, d24 = start_cluster(24, 2)
    try:
        got: dict[int, dict[str, Any]] = {}
        for c in (c8, c24):
            values = [i * 7 for i in range(c.n)]
            s, sum_bytes = numeric_reply(c, work, "sum", values)
            h, hist_bytes = numeric_reply(c, work, "hist", values)
            r = c.gproc("cat", "**", os.path.join(work, "%h", f"v{c.n}"), "--json")
            assert r.returncode == 0, r.stderr
            assert len(records(r.stdout)) == c.n  # distinct contents: one group per node
            res = asyncio.run(Cluster(c.socket).group("**").cat(os.path.join(work, "%h", f"v{c.n}")))
            got[c.n] = {"sum": s, "hist": h, "sum_bytes": sum_bytes, "hist_bytes": hist_bytes,
                        "equiv_bytes": res[0].rep_bytes}  # fmt: skip
            assert s == sum(values)
            assert sum(h["counts"]) == c.n
        small, big = got[8], got[24]
        assert 0 < big["sum_bytes"] <= small["sum_bytes"] + 8, got  # a bigger number may take a few bytes more
        assert 0 < big["hist_bytes"] <= small["hist_bytes"] + 8, got
        assert big["sum_bytes"] < 4096 and big["hist_bytes"] < 4096, got
        assert big["equiv_bytes"] > 2 * small["equiv_bytes"], got  # the measure sees bytes that do grow
    finally:
        stop_cluster(c24, d24)


def test_sum_reports_non_numbers_per_node_set(c8: LocalCluster, work: str) -> None:
    tpl = per_node(work, "m", {n: ("abc\n" if n in ("node2", "node5") else "10\n") for n in NODES})
    r = c8.gproc("cat", "**", tpl, "--agg", "sum")
    assert r.returncode == 1
    assert r.stdout.strip() == f"{tpl}: sum 60"
    (err,) = r.stderr.splitlines()
    assert err.startswith("gproc: node[2,5]: ") and "not a number" in err


def test_stat_reports_size_mtime_mode_owner_sha256(c8: LocalCluster, work: str) -> None:
    p = os.path.join(work, "s")
    with open(p, "wb") as f:
        f.write(b"x" * 1000)
    os.chmod(p, 0o640)
    os.utime(p, (1_000_000_000, 1_000_000_000))
    r = c8.gproc("stat", "-w", "node[1-3]", p, "--json")
    assert r.returncode == 0, r.stderr
    (rec,) = records(r.stdout)
    assert rec == {"path": p, "nodes": "node[1-3]", "count": 3, "type": "file", "size": 1000, "mtime": 1_000_000_000,
                   "mode": "0640", "owner": "root" if ROOT else str(os.getuid()), "group": rec["group"],
                   "sha256": hashlib.sha256(b"x" * 1000).hexdigest(), "target": ""}  # fmt: skip
    tpl = per_node(work, "sz", {n: "y" * i for i, n in enumerate(NODES)})
    r = c8.gproc("stat", "**", tpl, "--agg", "max", "--json")
    assert r.returncode == 0, r.stderr
    assert records(r.stdout)[0]["value"] == 7


def test_cp_per_node_destinations_keeps_mode_mtime_and_links(c8: LocalCluster, work: str) -> None:
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "sub"))
    with open(os.path.join(src, "sub", "f"), "w") as f:
        f.write("payload\n")
    os.chmod(os.path.join(src, "sub", "f"), 0o750)
    os.utime(os.path.join(src, "sub", "f"), ns=(1_234_567_890_000_000_000, 1_234_567_890_000_000_000))
    os.symlink("f", os.path.join(src, "sub", "l"))
    for n in NODES:
        os.makedirs(os.path.join(work, "dst", n))
    r = c8.gproc("cp", "-r", "**", src, os.path.join(work, "dst", "%h", "copy"))
    assert r.returncode == 0, r.stderr
    for n in NODES:
        f = os.path.join(work, "dst", n, "copy", "sub", "f")
        st = os.stat(f)
        assert read(f) == b"payload\n"
        assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime_ns == 1_234_567_890_000_000_000
        assert os.readlink(os.path.join(work, "dst", n, "copy", "sub", "l")) == "f"
        assert [x for x in os.listdir(os.path.dirname(f)) if ".gproc-" in x] == []


@pytest.mark.skipif(not ROOT, reason="needs root to act as another user")
def test_cp_and_cat_run_with_the_callers_rights(c8: LocalCluster, work: str) -> None:
    """As nobody: a root-only file is not readable through the daemon; a node whose DEST nobody may
    not write reports why, the others are written, owned by nobody."""
    os.chmod(os.path.dirname(c8.socket), 0o755)  # let another user reach the master's socket
    try:
        secret, pub = os.path.join(work, "secret"), os.path.join(work, "pub")
        for p, mode in ((secret, 0o600), (pub, 0o644)):
            with open(p, "w") as f:
                f.write("text\n")
            os.chmod(p, mode)
        for n in NODES:
            os.makedirs(os.path.join(work, "d", n))
            if n != "node6":
                os.chown(os.path.join(work, "d", n), NOBODY, NOBODY)

        def other_user() -> Any:
            async def go() -> Any:
                g = Cluster(c8.socket).group("**")
                cat = await g.cat([secret])
                cp = await g.cp([pub], os.path.join(work, "d", "%h", "pub"))
                return {"cat": [[a.nodes, a.kind, a.error] for a in cat[0].answers],
                        "cp": [[s.nodes, s.status, s.error] for s in cp]}  # fmt: skip

            return asyncio.run(go())

        got = as_user(NOBODY, other_user)
        assert "exception" not in got, got
        assert got["cat"] == [["node[0-7]", "error", f"{secret}: Permission denied"]]
        denied = f"{work}/d/node6/pub: Permission denied"
        assert sorted(got["cp"], key=lambda s: s[1]) == [["node[0-5,7]", 0, ""], ["node6", 1, denied]]
        for n in NODES:
            p = os.path.join(work, "d", n, "pub")
            assert os.path.exists(p) == (n != "node6")
            if n != "node6":
                assert os.stat(p).st_uid == NOBODY
    finally:
        os.chmod(os.path.dirname(c8.socket), 0o700)


@pytest.mark.skipif(not ROOT, reason="needs root to mount a small tmpfs")
def test_cp_on_a_full_disk_keeps_the_old_file(c8: LocalCluster, work: str) -> None:
    """node3's DEST is on a 1 MiB tmpfs: the 2 MiB copy fails there with ENOSPC, the old file is
    intact and no temporary file is left; every other node gets the new file."""
    full = os.path.join(work, "node3")
    os.makedirs(full)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full], check=True)
    try:
        for n in NODES:
            os.makedirs(os.path.join(work, n), exist_ok=True)
            with open(os.path.join(work, n, "big"), "w") as f:
                f.write("old\n")
        src = os.path.join(work, "src-big")
        with open(src, "wb") as f:
            f.write(os.urandom(2 << 20))
        r = c8.gproc("cp", "**", src, os.path.join(work, "%h", "big"))
        assert r.returncode == 1
        assert r.stderr.splitlines() == [f"gproc: node3: {full}/big: No space left on device"]
        assert read(os.path.join(full, "big")) == b"old\n"
        assert os.listdir(full) == ["big"]
        want = read(src)
        for n in NODES:
            if n != "node3":
                assert read(os.path.join(work, n, "big")) == want
    finally:
        subprocess.run(["umount", full], check=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cat", "**", "/etc/hostname", "--agg", "median"], "unknown aggregation 'median'"),
        (["cat", "**", "relative/path"], "node paths must be absolute"),
        (["cat", "**", "/tmp/%h/../../etc/shadow"], "'..' in a node path"),
        (["stat", "**", "/tmp/%x"], "unknown escape %x"),
        (["cat", "**", "/etc/hostname", "--agg", "hist", "--edges", "5,1"], "histogram edges must increase"),
        (
            ["cp", "**", "/nonexistent/src", "/nonexistent/gproc-dest"],
            "cannot copy /nonexistent/src: No such file or directory",
        ),
        (["cp", "**", "/etc", "/nonexistent/gproc-dest"], "/etc is a directory (use -r)"),
        (["cp", "**", "/etc/hostname"], "usage: gproc cp"),
        (["cp", "**", "/etc/hostname", "/nonexistent/%h/../x"], "'..' in a node path"),
        (["cat", "-w", "nosuch[1-2]", "/etc/hostname"], "matched no node"),
    ],
)
def test_bad_input_is_one_line(c8: LocalCluster, args: list[str], message: str) -> None:
    r = c8.gproc(*args)
    assert r.returncode in (1, 2), (r.returncode, r.stderr)
    assert len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr
    assert r.stdout == ""
    assert c8.gproc("ping").returncode == 0  # the tree still serves


def test_gather_stores_identical_content_once_and_fetches_it_once(c8: LocalCluster, work: str) -> None:
    """Each node's tree lands in DESTDIR/NODE/; a 1 MiB file identical on all eight nodes is one
    inode here (hard links) and crosses the master's links once: ≤ 1.1 MiB arrive for it."""
    same = os.urandom(1 << 20)
    for i, n in enumerate(NODES):
        os.makedirs(os.path.join(work, n, "d"))
        with open(os.path.join(work, n, "d", "same"), "wb") as f:
            f.write(same)
        os.utime(os.path.join(work, n, "d", "same"), ns=(10**18, 10**18))
        with open(os.path.join(work, n, "d", "own"), "w") as f:
            f.write(f"{n} {i}\n")
        os.symlink("own", os.path.join(work, n, "d", "link"))
    out = os.path.join(work, "out")
    before = asyncio.run(Cluster(c8.socket).stats())["bytes_in"]
    r = c8.gproc("gather", "-r", "**", os.path.join(work, "%h", "d"), out)
    after = asyncio.run(Cluster(c8.socket).stats())["bytes_in"]
    assert r.returncode == 0, r.stderr
    assert after - before <= 1.1 * (1 << 20), after - before
    inodes = set()
    for i, n in enumerate(NODES):
        got = os.path.join(out, n, "d")
        assert read(os.path.join(got, "same")) == same
        assert read(os.path.join(got, "own")) == f"{n} {i}\n".encode()
        assert os.readlink(os.path.join(got, "link")) == "own"
        st = os.stat(os.path.join(got, "same"))
        assert st.st_mtime_ns == 10**18
        inodes.add(st.st_ino)
    assert len(inodes) == 1 and os.stat(os.path.join(out, "node0", "d", "same")).st_nlink == 8
    assert sorted(os.listdir(out)) == NODES  # the spool is gone
    r = c8.gproc("gather", "**", os.path.join(work, "%h", "d"), out)
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"gproc: node[0-7]: {work}/%h/d: not a regular file (use -r for a directory)"
    ]


def test_grep_and_tail_merge_lines_across_nodes(c8: LocalCluster, work: str) -> None:
    tpl = per_node(work, "log", {n: f"start\nnode is {n}\nerror: disk\nend\n" for n in NODES})
    r = c8.gproc("grep", "-i", "ERROR|node is node[12]", "**", tpl, "--json")
    assert r.returncode == 0, r.stderr
    got = {(rec["lineno"], rec["line"]): rec["nodes"] for rec in records(r.stdout)}
    assert got == {(2, "node is node1"): "node1", (2, "node is node2"): "node2", (3, "error: disk"): "node[0-7]"}
    r = c8.gproc("tail", "-n", "2", "**", tpl)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["node[0-7]: error: disk", "node[0-7]: end"]
    r = c8.gproc("grep", "-v", "[a-z]", "**", tpl)  # every line has a letter: nothing selected (exit 1)
    assert r.returncode == 1 and r.stdout == "" and r.stderr == ""
    r = c8.gproc("grep", "(", "**", tpl)
    assert r.returncode == 2 and r.stderr.startswith("gproc: bad pattern") and len(r.stderr.splitlines()) == 1


def test_cp_of_more_files_than_one_worker_takes(c8: LocalCluster, work: str) -> None:
    """1,100 files go in three parts; the tree still lands as DEST itself (not inside it) and its
    directories keep their times."""
    src = os.path.join(work, "many")
    os.makedirs(os.path.join(src, "sub"))
    for i in range(1100):
        with open(os.path.join(src, "sub", f"f{i}"), "w") as f:
            f.write(f"{i % 7}\n")
    os.utime(os.path.join(src, "sub"), ns=(10**18, 10**18))
    r = c8.gproc("cp", "-r", "-w", "node[3-4]", src, os.path.join(work, "%h-copy"))
    assert r.returncode == 0, r.stderr
    for n in ("node3", "node4"):
        sub = os.path.join(work, f"{n}-copy", "sub")
        assert len(os.listdir(sub)) == 1100 and read(os.path.join(sub, "f1099")) == b"0\n"
        assert os.stat(sub).st_mtime_ns == 10**18


def test_tail_follow_streams_new_lines_until_ctrl_c(c8: LocalCluster, work: str) -> None:
    tpl = per_node(work, "live", {n: "old 1\nold 2\n" for n in NODES})
    env = {**os.environ, "GPROC_MASTER": c8.socket}
    p = subprocess.Popen(
        [sys.executable, "-m", "gproc", "tail", "-f", "-n", "1", "**", tpl, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    got: queue.Queue[str] = queue.Queue()
    assert p.stdout is not None
    reader = threading.Thread(target=lambda: [got.put(line) for line in p.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        first = json.loads(got.get(timeout=30))
        assert (first["line"], first["nodes"], first["lineno"]) == ("old 2", "node[0-7]", -1)
        for n in NODES:
            with open(os.path.join(work, n, "live"), "a") as f:
                f.write("appended\n" if n != "node5" else "appended\nnode5 only\n")
        seen: dict[str, set[str]] = {}
        while set(seen) != {"appended", "node5 only"} or len(seen["appended"]) < 8:
            rec = json.loads(got.get(timeout=30))
            seen.setdefault(rec["line"], set()).update(NodeSet(rec["nodes"]))
        assert seen == {"appended": set(NODES), "node5 only": {"node5"}}
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
        assert p.stderr is not None and p.stderr.read() == ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert c8.gproc("ping").returncode == 0


@pytest.mark.skipif(not ROOT, reason="only root may give files away")
def test_cp_p_keeps_the_owner_for_root_only(c8: LocalCluster, work: str) -> None:
    src = os.path.join(work, "owned")
    with open(src, "w") as f:
        f.write("x\n")
    os.chown(src, NOBODY, NOBODY)
    for n in ("node1", "node2"):
        os.makedirs(os.path.join(work, n))
    assert c8.gproc("cp", "-p", "-w", "node1", src, os.path.join(work, "%h", "")).returncode == 0
    assert c8.gproc("cp", "-w", "node2", src, os.path.join(work, "%h", "")).returncode == 0
    assert os.stat(os.path.join(work, "node1", "owned")).st_uid == NOBODY
    assert os.stat(os.path.join(work, "node2", "owned")).st_uid == 0


@pytest.mark.parametrize(
    "req",
    [
        {"fn": "files", "what": "cat", "paths": [1, 2]},
        {"fn": "files", "what": "rm", "paths": ["/x"]},
        {"fn": "files", "what": "cat", "paths": ["/x"], "agg": ["sum"]},
        {"fn": "files", "what": "cat", "paths": ["/x"], "agg": "hist", "edges": ["a"]},
        {"fn": "files", "what": "stat", "paths": ["/x"], "agg": "sum", "field": "uid"},
        {"fn": "cp", "tree": "garbage", "meta": {}, "dest": "/x"},
        {"fn": "cp", "tree": [["f", "/a", "nothex", 1, 0o644]], "meta": {}, "dest": "/x"},
        {"fn": "cp", "tree": [["d", "/a", 0o755]], "meta": [], "dest": "/x"},
        {"fn": "lines", "paths": ["/x"]},
        {"fn": "lines", "paths": ["/x"], "last": -4},
        {"fn": "follow", "paths": ["/x", "/y"]},
        {"fn": "gather", "paths": "/x"},
        {"fn": "gather", "paths": ["/x/../y"]},
    ],
)
def test_malformed_requests_get_one_error_and_the_master_serves_on(c8: LocalCluster, req: dict[str, Any]) -> None:
    async def ask() -> str:
        try:
            await Cluster(c8.socket).request(req.pop("fn"), nodes="**", **req)
        except GprocError as e:
            return str(e)
        return ""

    error = asyncio.run(ask())
    assert error and "\n" not in error and "internal error" not in error, error
    assert c8.gproc("ping").returncode == 0
