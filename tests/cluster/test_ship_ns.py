"""The proof from inside the job: with node daemons in a mount namespace where the program's directory
is hidden under an empty tmpfs, the process's executable and every shared object it maps come from
binRoot. One node's binRoot is on a ``noexec`` file system: without ``-p`` its jobs cannot start
(reported per node), with ``-p`` they run from their own tmpfs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.cluster.netns import Daemons, unshare_problem

from gproc import Cluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
]
GPROC = [sys.executable, "-m", "gproc"]
# inside a fresh mount namespace: hide $1 under an empty tmpfs, optionally put binRoot ($2) on a
# noexec tmpfs ($3 = noexec), then become the node daemon (same pid, so stopping it ends the namespace)
ENTER = (
    'mount -t tmpfs tmpfs "$1" && { [ "$3" != noexec ] || mount -t tmpfs -o noexec,mode=0755 tmpfs "$2"; } '
    '&& shift 3 && exec "$@"'
)
MAPS_C = r"""
#include <stdio.h>
#include <unistd.h>
const char *where(void);
int main(int argc, char **argv) {
    char buf[4096], exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    printf("EXE %s\nLIB %s\nSOURCE %s\n", exe, where(), access(argv[1], F_OK) == 0 ? "visible" : "hidden");
    FILE *f = fopen("/proc/self/maps", "r");
    while (fgets(buf, sizeof buf, f)) fputs(buf, stdout);
    return 0;
}
"""


@dataclass
class NsCluster:
    socket: str
    prog: str
    bin_roots: dict[str, str]

    def gproc(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GPROC_MASTER": self.socket}
        return subprocess.run([*GPROC, *args], capture_output=True, text=True, timeout=60, env=env, cwd="/")


def _up(sock: str) -> int:
    async def count() -> int:
        return sum(1 for r in (await Cluster(sock).info())["nodes"] if r["state"] == "up")

    try:
        return asyncio.run(count())
    except Exception:
        return 0


@pytest.fixture(scope="module")
def ns_cluster() -> Iterator[NsCluster]:
    problem = unshare_problem()
    if problem:
        pytest.skip(problem)
    tmp = tempfile.mkdtemp(prefix="gpn-", dir="/tmp")
    daemons = Daemons(tmp)
    try:
        hidden = Path(tmp, "prog")
        for d in ("bin", "lib"):
            (hidden / d).mkdir(parents=True)
        (hidden / "where.c").write_text('const char *where(void) { return "libwhere"; }\n')
        (hidden / "main.c").write_text(MAPS_C)
        lib = hidden / "lib/libwhere.so.1"
        cc = ["gcc", "-shared", "-fPIC", "-Wl,-soname,libwhere.so.1", "-o", str(lib), str(hidden / "where.c")]
        subprocess.run(cc, check=True)
        prog = hidden / "bin/maps"
        cc = ["gcc", "-o", str(prog), str(hidden / "main.c"), str(lib), "-Wl,-rpath,$ORIGIN/../lib"]
        subprocess.run(cc, check=True)
        key = os.path.join(tmp, "key")
        subprocess.run([*GPROC, "keygen", "--key", key], check=True, capture_output=True, timeout=30)
        sock, ready = os.path.join(tmp, "g"), os.path.join(tmp, "master.addr")
        master = [*GPROC, "m", "--listen", "127.0.0.1:0", "--socket", sock, "--state", f"{tmp}/state"]
        daemons.start("master", [*master, "--key", key, "--ready-file", ready])
        deadline = time.monotonic() + 30
        while not os.path.exists(ready) and time.monotonic() < deadline and not daemons.dead():
            time.sleep(0.05)
        addr = Path(ready).read_text().strip()
        roots = {}
        for i, (name, flag) in enumerate((("hidden0", "exec"), ("hidden1", "noexec"))):
            roots[name] = os.path.join(tmp, "bin", name)
            os.makedirs(roots[name])
            node = [*GPROC, "s", f"-myParent={addr}", f"-myId={i}", "--name", name, "--key", key]
            node += ["--listen", "127.0.0.1:0", f"-binRoot={roots[name]}"]
            unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", ENTER, "sh"]
            daemons.start(name, [*unshare, str(hidden), roots[name], flag, *node])
        while _up(sock) < 2 and time.monotonic() < deadline + 30 and not daemons.dead():
            time.sleep(0.1)
        if _up(sock) < 2:
            pytest.fail(f"nodes did not come up\n{daemons.report(['master', 'hidden0', 'hidden1'])}")
        yield NsCluster(sock, str(prog), roots)
    finally:
        daemons.stop(first=["master"])
        shutil.rmtree(tmp, ignore_errors=True)


def outputs(r: subprocess.CompletedProcess[str]) -> tuple[dict[str, list[str]], dict[str, dict[str, object]]]:
    """Per node set: its stdout lines and its status record (``gproc e -b --json``)."""
    lines: dict[str, list[str]] = {}
    status = {}
    for rec in map(json.loads, r.stdout.splitlines()):
        if "stream" in rec:
            lines[rec["nodes"]] = rec["data"].splitlines()
        else:
            status[rec["nodes"]] = rec
    return lines, status


@pytest.mark.parametrize("private", ["true", "false"])
def test_executable_and_every_shared_object_come_from_bin_root(ns_cluster: NsCluster, private: str) -> None:
    nodes = "hidden[0-1]" if private == "true" else "hidden0"
    r = ns_cluster.gproc("e", "-b", "--json", f"-p={private}", "-w", nodes, ns_cluster.prog, ns_cluster.prog)
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines, _ = outputs(r)
    for name in nodes.replace("hidden[0-1]", "hidden0,hidden1").split(","):
        out = lines[name]
        root = ns_cluster.bin_roots[name]
        assert out[1:3] == ["LIB libwhere", "SOURCE hidden"], out  # the daemons cannot see the original
        exe = out[0].removeprefix("EXE ")
        assert exe.startswith(root + "/") and "ld-linux" in exe, exe
        mapped = {line.split()[-1] for line in out[3:] if len(line.split()) >= 6 and line.split()[-1][:1] == "/"}
        names = {os.path.basename(m) for m in mapped}
        assert {"maps", "libwhere.so.1", "libc.so.6"} <= names and any("ld-linux" in n for n in names), mapped
        assert all(m.startswith(root + "/") for m in mapped), (root, mapped)
        assert ("/jobs/" in min(mapped)) == (private == "false"), mapped


def test_noexec_bin_root_stops_the_job_without_p_and_not_with_it(ns_cluster: NsCluster) -> None:
    r = ns_cluster.gproc("e", "-b", "--json", "-p=false", "-w", "hidden[0-1]", ns_cluster.prog, "/")
    assert r.returncode == 255, r.stderr
    _, status = outputs(r)
    assert status["hidden0"]["status"] == 0
    assert status["hidden1"]["status"] == 255
    assert status["hidden1"]["error"] == f"cannot run {ns_cluster.prog}: Permission denied", status
    r = ns_cluster.gproc("e", "--json", "-w", "hidden1", ns_cluster.prog, "/")  # -p (the default as root)
    assert r.returncode == 0, r.stdout
