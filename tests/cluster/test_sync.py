"""gproc sync on a real local cluster (issue 21): each node's DEST (``%h``) made a copy of SRC with
only what changed crossing the tree links, counted by each link's own byte counter."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from typing import Any

import pytest
from ClusterShell.NodeSet import NodeSet
from tests.cluster.users import as_user
from tests.conftest import LocalCluster

from gproc import Cluster, blocks, bundle, store  # noqa: F401  (loaded before a test drops to nobody)
from gproc.errors import UsageError
from gproc.services import fileio, syncio  # noqa: F401

NODES = [f"node{i}" for i in range(8)]
MiB = 1 << 20
NOBODY = 65534


def links(c: LocalCluster) -> dict[str, tuple[int, int]]:
    """Per node: (bytes its parent link carried down, file bytes it stored), so far."""

    async def go() -> dict[str, Any]:
        return dict(await Cluster(c.socket).request("stats", links=True))

    rows = asyncio.run(go())["links"]
    return {n: (row["bytes_in"], row["file_bytes"]) for row in rows for n in NodeSet(row["nodes"])}


def carried(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in after}


def sync(c: LocalCluster, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    r = c.gproc("sync", "--json", *args)
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == max([s["status"] for s in recs[:-1]] + [0]), r.stderr
    return recs[:-1], recs[-1]


def tree(top: str) -> dict[str, Any]:
    """Everything under ``top``: type, mode, mtime and contents (or link target) per path."""
    out: dict[str, Any] = {}
    for here, dirs, files in os.walk(top):
        for name in dirs + files:
            p = os.path.join(here, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, f.read())
    return out


def make_src(work: str, big: int = 16 * MiB) -> str:
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "etc", "deep"))
    with open(os.path.join(src, "big"), "wb") as f:
        f.write(os.urandom(big))
    with open(os.path.join(src, "etc", "conf"), "w") as f:
        f.write("a = 1\n")
    with open(os.path.join(src, "etc", "deep", "run.sh"), "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(os.path.join(src, "etc", "deep", "run.sh"), 0o750)
    os.chmod(os.path.join(src, "etc"), 0o711)
    os.symlink("etc/conf", os.path.join(src, "conf"))
    os.utime(os.path.join(src, "etc", "conf"), ns=(1_000_000_000, 1_000_000_000))
    return src


def overwrite(path: str, offset: int, data: bytes, mtime: int) -> None:
    """Change a file in place and give it an mtime of its own (writes within one clock tick of the
    file system would share one, and the quick check would take them for the same)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(mtime, mtime))


def test_sync_copies_a_tree_then_moves_nothing_when_unchanged(c8: LocalCluster, work: str) -> None:
    src = make_src(work)
    dest = os.path.join(work, "out", "%h")
    os.makedirs(os.path.join(work, "out"))
    statuses, _ = sync(c8, "**", src, dest)
    assert statuses == [{"nodes": "node[0-7]", "count": 8, "status": 0, "error": ""}]
    want = tree(src)
    for n in NODES:
        assert tree(os.path.join(work, "out", n)) == want
    before = links(c8)
    statuses, again = sync(c8, "**", src, dest)
    moved = carried(before, links(c8))
    assert statuses == [{"nodes": "node[0-7]", "count": 8, "status": 0, "error": ""}]
    assert again["versions"] == 0 and again["pieces"] == 0 and again["shipped"].get("link_bytes", 0) == 0
    assert all(down < 16 * 1024 and stored == 0 for down, stored in moved.values()), moved  # op frames only
    for n in NODES:
        assert tree(os.path.join(work, "out", n)) == want


def test_a_one_mib_change_moves_about_one_mib_per_link(c8: LocalCluster, work: str) -> None:
    src = make_src(work)
    dest = os.path.join(work, "out", "%h")
    os.makedirs(os.path.join(work, "out"))
    sync(c8, "**", src, dest)
    overwrite(os.path.join(src, "big"), 5 * MiB + 1000, os.urandom(MiB), 3 * 10**18)  # unaligned: 9 blocks of 128 KiB
    before = links(c8)
    statuses, info = sync(c8, "**", src, dest)
    moved = carried(before, links(c8))
    assert statuses == [{"nodes": "node[0-7]", "count": 8, "status": 0, "error": ""}]
    assert info["versions"] == 1 and info["piece_bytes"] == 9 * 128 * 1024
    sig_set = 16 * 128 + 64  # a 16 MiB file's signatures: 128 blocks of 16 bytes, and the group's frame
    assert 2 * sig_set - 512 < info["sig_bytes"] < 2 * sig_set + 512, info  # one set per master link
    for n, (down, stored) in moved.items():
        assert stored == 9 * 128 * 1024, (n, moved)
        assert MiB <= down <= 2 * MiB, (n, moved)  # the blocks, the block list, the ops' frames
    want = tree(src)
    for n in NODES:
        assert tree(os.path.join(work, "out", n)) == want


def test_two_old_versions_send_two_signature_sets_and_both_end_as_src(c8: LocalCluster, work: str) -> None:
    src = make_src(work)
    os.makedirs(os.path.join(work, "out"))
    sync(c8, "**", src, os.path.join(work, "out", "%h"))
    for i, n in enumerate(NODES):  # nodes 0-3 hold one old version, 4-7 another
        overwrite(os.path.join(work, "out", n, "big"), (1 if i < 4 else 9) * MiB, b"old %d" % (i < 4), 2 * 10**18)
    overwrite(os.path.join(src, "big"), 12 * MiB, b"new", 3 * 10**18)
    statuses, info = sync(c8, "**", src, os.path.join(work, "out", "%h"))
    assert statuses == [{"nodes": "node[0-7]", "count": 8, "status": 0, "error": ""}]
    assert info["versions"] == 2 and info["pieces"] == 3  # each side's spoilt block, and the new one
    sig_set = 16 * 128 + 64  # a 16 MiB file's signatures: 128 blocks of 16 bytes, and the group's frame
    # each of the master's two links carries one set per version its subtree holds: four, not eight
    assert 4 * sig_set - 1024 < info["sig_bytes"] < 4 * sig_set + 1024, info
    want = tree(src)
    for n in NODES:
        assert tree(os.path.join(work, "out", n)) == want


def test_delete_removes_what_src_does_not_hold(c8: LocalCluster, work: str) -> None:
    src = make_src(work, big=1000)
    os.makedirs(os.path.join(work, "out"))
    dest = os.path.join(work, "out", "%h")
    sync(c8, "**", src, dest)
    for n in NODES:
        os.makedirs(os.path.join(work, "out", n, "extra", "sub"))
        with open(os.path.join(work, "out", n, "extra", "sub", "x"), "w") as f:
            f.write("x")
        os.symlink("/etc", os.path.join(work, "out", n, "etc", "stray"))
    os.unlink(os.path.join(src, "etc", "deep", "run.sh"))
    sync(c8, "**", src, dest)
    assert all(os.path.exists(os.path.join(work, "out", n, "extra", "sub", "x")) for n in NODES)
    assert all(os.path.exists(os.path.join(work, "out", n, "etc", "deep", "run.sh")) for n in NODES)
    statuses, _ = sync(c8, "**", "--delete", src, dest)
    assert statuses == [{"nodes": "node[0-7]", "count": 8, "status": 0, "error": ""}]
    want = tree(src)
    for n in NODES:
        assert tree(os.path.join(work, "out", n)) == want
    assert os.path.isdir("/etc")  # the stray link was removed, not followed


def test_a_file_never_replaces_a_directory_dest(c8: LocalCluster, work: str) -> None:
    """DEST is what SRC becomes: a file synced onto a directory is refused, even with --delete, and
    the directory stays whole."""
    src = os.path.join(work, "f")
    with open(src, "w") as f:
        f.write("file\n")
    os.makedirs(os.path.join(work, "home", "keep"))
    r = c8.gproc("sync", "--delete", "-w", "node1", src, os.path.join(work, "home"))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"gproc: node1: {work}/home: is a directory (sync makes DEST a copy of SRC)"]
    assert os.path.isdir(os.path.join(work, "home", "keep"))


def test_nodes_that_cannot_write_say_why_and_the_rest_sync(c8: LocalCluster, work: str) -> None:
    src = make_src(work, big=1000)
    for n in NODES:
        os.makedirs(os.path.join(work, "out", n))
    os.rmdir(os.path.join(work, "out", "node5"))
    with open(os.path.join(work, "out", "node5"), "w") as f:  # node5's DEST lies inside a file
        f.write("in the way\n")
    r = c8.gproc("sync", "**", src, os.path.join(work, "out", "%h", "copy"))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"gproc: node5: {work}/out/%h/copy: Not a directory"]
    want = tree(src)
    for n in NODES:
        if n != "node5":
            assert tree(os.path.join(work, "out", n, "copy")) == want


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_sync_through_the_api_writes_as_the_caller(c8: LocalCluster, work: str) -> None:
    """As nobody, through ``Cluster.group().sync``: files written are nobody's; a node whose DEST
    nobody may not write says why; an old version nobody cannot read is not read for it."""
    os.chmod(os.path.dirname(c8.socket), 0o755)  # let another user reach the master's socket
    try:
        src = make_src(work, big=3 * MiB)
        for n in NODES:
            os.makedirs(os.path.join(work, "out", n, "copy"))
            if n != "node6":
                os.chown(os.path.join(work, "out", n, "copy"), NOBODY, NOBODY)
        secret = os.path.join(work, "out", "node2", "copy", "big")
        with open(secret, "wb") as f:  # root's old version, unreadable to nobody
            f.write(b"root only")
        os.chmod(secret, 0o600)

        def other_user() -> Any:
            async def go() -> Any:
                g = Cluster(c8.socket).group("**")
                got = await g.sync(src, os.path.join(work, "out", "%h", "copy"))
                return [[s.nodes, s.status, s.error] for s in got]

            return asyncio.run(go())

        os.chmod(os.path.join(src, "etc"), 0o700)
        got = as_user(NOBODY, other_user)
        assert got == {"exception": repr(UsageError(f"cannot copy {src}/etc: Permission denied"))}  # before sending
        os.chmod(os.path.join(src, "etc"), 0o755)
        os.chmod(os.path.join(src, "etc", "deep", "run.sh"), 0o755)
        got = as_user(NOBODY, other_user)
        assert "exception" not in got, got
        assert sorted(got, key=lambda s: s[0]) == [
            ["node2", 1, f"{work}/out/%h/copy/big: Permission denied"],
            ["node6", 1, f"{work}/out/%h/copy/etc: Permission denied"],
            ["node[0-1,3-5,7]", 0, ""],
        ]
        want = tree(src)
        for n in NODES:
            out = os.path.join(work, "out", n, "copy")
            if n not in ("node2", "node6"):
                assert tree(out) == want
                assert {os.lstat(os.path.join(here, x)).st_uid for here, ds, fs in os.walk(out) for x in ds + fs} == {
                    NOBODY
                }
        with open(secret, "rb") as f:
            assert f.read() == b"root only"
    finally:
        os.chmod(os.path.dirname(c8.socket), 0o700)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sync", "**", "/nonexistent/src", "/tmp/gproc-dest"], "cannot copy /nonexistent/src: No such file"),
        (["sync", "**", "/etc/hostname"], "usage: gproc sync"),
        (["sync", "**", "/etc/hostname", "/etc/passwd", "/tmp/x"], "one source"),
        (["sync", "**", "/etc/hostname", "/tmp/%h/../x"], "'..' in a node path"),
        (["sync", "**", "/etc/hostname", "relative"], "node paths must be absolute"),
        (["sync", "-w", "nosuch[1-2]", "/etc/hostname", "/tmp/x"], "matched no node"),
    ],
)
def test_bad_input_is_one_line(c8: LocalCluster, args: list[str], message: str) -> None:
    r = c8.gproc(*args)
    assert r.returncode in (1, 2), (r.returncode, r.stderr)
    assert len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr
    assert r.stdout == ""
    assert c8.gproc("ping").returncode == 0
