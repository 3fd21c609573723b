"""``gproc launch --slurm`` under Debian's Slurm: slurmctld on the bridge, a slurmd in each of six hosts
(tests/slurmbed.py on tests/netbed.py), driven as a user would, through ``salloc -N K``.

Inside the allocation the launch must bring up a daemon on every node, named by its Slurm node name
and placed by rank as a tree, as tasks of one srun step; ``gproc e`` must then run on the nodes; the
credential must never be on a command line or in an environment while the launch runs. A node whose
daemon fails is reported with its reason and its children join their grandparent. ``--stop`` and
``down`` must leave no daemon on any host and no step at the controller.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import psutil
import pytest
from tests.cluster.test_launch import BLOCK_PORT, CmdlineWatch, listening, secret_of
from tests.slurmbed import SlurmBed, problem, slurmbed

GPROC = [sys.executable, "-m", "gproc"]
NODES = [f"h{i}" for i in range(1, 7)]

pytestmark = pytest.mark.skipif(problem() is not None, reason=problem() or "")

# what salloc runs: the launch, then (told on stdin) the stop; the test looks in between
HOLD = """
gproc launch --slurm "$@" > "$OUT/launch" 2> "$OUT/launch.err"; echo $? > "$OUT/launch.rc"
[ -z "$SRUN_TOO" ] || { timeout 60 srun -N "$SRUN_TOO" --ntasks-per-node=2 true; echo $? > "$OUT/srun.rc"; }
read _
gproc launch --stop --json > "$OUT/stop" 2>&1; echo $? > "$OUT/stop.rc"
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[SlurmBed]:
    with slurmbed(NODES) as b:
        yield b


@pytest.fixture
def env(bed: SlurmBed) -> Iterator[dict[str, str]]:
    d = tempfile.mkdtemp(prefix="gproc-slurm-test-")
    e = dict(bed.env, GPROC_MASTER=os.path.join(d, "master.sock"), GPROC_KEY=os.path.join(d, "cluster.key"), OUT=d)
    e["PATH"] = os.path.dirname(sys.executable) + ":" + e.get("PATH", "/usr/bin:/bin")
    subprocess.run([*GPROC, "keygen"], env=e, check=True, capture_output=True, timeout=60)
    yield e
    if os.path.exists(e["GPROC_MASTER"] + ".launch"):  # a test that failed half-way
        subprocess.run([*GPROC, "launch", "--stop"], env=e, capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def gproc(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPROC, *args], env=env, capture_output=True, text=True, timeout=timeout)


def read(env: dict[str, str], name: str) -> str:
    with open(os.path.join(env["OUT"], name)) as f:
        return f.read()


class Allocation:
    """``salloc -N n`` running HOLD: the launch has returned once ``launched`` does; ``release`` stops it."""

    def __init__(self, env: dict[str, str], n: int, *launch_args: str, script: str = HOLD) -> None:
        self.env = env
        argv = ["salloc", "-N", str(n), "sh", "-c", script, "hold", *launch_args]
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def launched(self, timeout: float = 120) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout
        rc = os.path.join(self.env["OUT"], "launch.rc")
        while not os.path.exists(rc) or not read(self.env, "launch.rc").strip():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "the launch did not return in time"
            time.sleep(0.1)
        return int(read(self.env, "launch.rc")), read(self.env, "launch"), read(self.env, "launch.err")

    def release(self, timeout: float = 120) -> tuple[int, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")
        self.proc.stdin.close()
        self.proc.wait(timeout)
        return int(read(self.env, "stop.rc")), read(self.env, "stop")

    def output(self) -> str:
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""

    def kill(self) -> None:
        """After a failure: end the allocation at the controller too (a killed salloc leaves it
        allocated, and the next test's salloc would wait for its nodes); the bed runs only our jobs."""
        if self.proc.poll() is None:
            subprocess.run(["scancel", "--quiet", "--partition=bed"], env=self.env, capture_output=True, timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        deadline = time.monotonic() + 30
        while subprocess.run(["squeue", "--noheader"], env=self.env, capture_output=True, text=True, timeout=30).stdout:
            assert time.monotonic() < deadline, "the allocation did not end"
            time.sleep(0.2)


@contextlib.contextmanager
def allocation(env: dict[str, str], n: int, *launch_args: str, script: str = HOLD) -> Iterator[Allocation]:
    a = Allocation(env, n, *launch_args, script=script)
    try:
        yield a
    finally:
        a.kill()


def gproc_pids(bed: SlurmBed, host: str) -> list[int]:
    """gproc's processes on a host (its daemon; never slurmd, slurmstepd or sshd)."""
    out = []
    for pid in bed.net.pids(host):
        with contextlib.suppress(psutil.Error):
            if any(a in ("gproc", "gproc.slurmagent") or a.endswith("/gproc") for a in psutil.Process(pid).cmdline()):
                out.append(pid)
    return out


def steps(bed: SlurmBed, jobs: bool = False) -> list[str]:
    """The steps at the controller ("JOB.STEP NAME"); with ``jobs``, the jobs' ids and states."""
    what = ["--format=%i %T"] if jobs else ["--steps", "--format=%i %j"]
    r = subprocess.run(["squeue", "--noheader", *what], env=bed.env, capture_output=True, text=True, timeout=30)
    return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]


def wait_no_steps(bed: SlurmBed, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while steps(bed):
        assert time.monotonic() < deadline, f"steps left at the controller: {steps(bed)}"
        time.sleep(0.2)


def test_launch_in_an_allocation_runs_on_the_nodes_and_stops(bed: SlurmBed, env: dict[str, str]) -> None:
    env["SRUN_TOO"] = "6"  # then a step of the allocation's own on every CPU of every node, beside the daemons
    with (
        CmdlineWatch(secret_of(env["GPROC_KEY"])) as watch,
        allocation(
            env, 6, "--fanout", "2", "--listen", f"{bed.net.gateway}:0", "--bin-root", "/run/xproc", "--json"
        ) as alloc,
    ):
        rc, out, err = alloc.launched()
        watch.done.set()
        assert rc == 0, out + err
        rows = [json.loads(x) for x in out.splitlines()]
        assert [(r["host"], r["ok"], r["rank"]) for r in rows] == [(h, True, i) for i, h in enumerate(NODES)], rows

        info = gproc(env, "info", "--json")
        assert info.returncode == 0, info.stderr
        tree = {n["name"]: n for n in map(json.loads, info.stdout.splitlines())}
        # rank r's parent is rank (r-1)//2: a binary tree by rank, under the master
        assert {n: t["parent"] for n, t in tree.items()} == {
            "h1": "master", "h2": "h1", "h3": "h1", "h4": "h2", "h5": "h2", "h6": "h3",
        }  # fmt: skip
        assert all(t["state"] == "up" for t in tree.values()), tree

        e = gproc(env, "e", "**", "hostname")
        assert e.returncode == 0, e.stderr
        assert sorted(e.stdout.splitlines()) == [f"{h}: {h}" for h in NODES]
        # the daemons are the step's tasks: slurmstepd's children, one per node, in one step
        ours = [st for st in steps(bed) if st.endswith(" gproc-daemons")]  # (beside SRUN_TOO's, maybe)
        assert len(ours) == 1, steps(bed)
        named = gproc(env, "e", "-w", "h[4-5]", "hostname")  # the allocation's node names select nodes
        assert named.returncode == 0 and sorted(named.stdout.splitlines()) == ["h4: h4", "h5: h5"], named
        fds = gproc(env, "e", "**", "ls", "-l", "/proc/self/fd/")
        assert fds.returncode == 0 and "pipe:" in fds.stdout, fds.stdout + fds.stderr
        assert "memfd" not in fds.stdout, fds.stdout  # a job must not inherit the daemon's credential
        for h in NODES:
            (pid,) = gproc_pids(bed, h)
            assert psutil.Process(pid).parent().name() == "slurmstepd", h
        assert not watch.hits, f"the credential was readable in {sorted(watch.hits)}"
        assert watch.sweeps > 0

        src, stop = alloc.release()
        assert read(env, "srun.rc").strip() == "0", "a step of the allocation waited for the daemons' CPUs"
        assert src == 0, stop
        stopped = [json.loads(x) for x in stop.splitlines()]
        assert sorted(r["host"] for r in stopped if r["ok"]) == NODES, stop
    assert {h: gproc_pids(bed, h) for h in NODES} == {h: [] for h in NODES}
    wait_no_steps(bed)
    assert not os.path.exists(env["GPROC_MASTER"]) and not os.path.exists(env["GPROC_MASTER"] + ".launch")


def test_a_failed_daemon_is_reported_and_its_children_join_their_grandparent(
    bed: SlurmBed, env: dict[str, str]
) -> None:
    blocker = bed.net.spawn("h2", [sys.executable, "-c", BLOCK_PORT])  # h2's daemon cannot listen
    try:
        deadline = time.monotonic() + 30
        while not listening(bed.net.hosts["h2"].address, 6666):
            assert blocker.poll() is None and time.monotonic() < deadline, "the port blocker did not listen"
            time.sleep(0.05)
        args = ["--fanout", "2", "--listen", f"{bed.net.gateway}:0", "--timeout", "30", "--json"]
        with allocation(env, 6, *args) as alloc:
            rc, out, err = alloc.launched()
            rows = {r["host"]: r for r in map(json.loads, out.splitlines())}
            assert rc == 255, out + err
            assert sorted(h for h, r in rows.items() if r["ok"]) == ["h1", "h3", "h4", "h5", "h6"], rows
            assert "address already in use" in rows["h2"]["error"].lower(), rows["h2"]
            assert "Exited with exit code 1" in rows["h2"]["error"], rows["h2"]  # srun's verdict on the task
            info = gproc(env, "info", "--json")
            tree = {n["name"]: n["parent"] for n in map(json.loads, info.stdout.splitlines())}
            assert tree == {"h1": "master", "h3": "h1", "h4": "h1", "h5": "h1", "h6": "h3"}, tree
            src, stop = alloc.release()
            assert src == 0, stop
        assert {h: gproc_pids(bed, h) for h in NODES if h != "h2"} == {h: [] for h in NODES if h != "h2"}
        wait_no_steps(bed)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(blocker.pid, signal.SIGKILL)
        blocker.wait(10)


def test_joining_a_running_master_and_down_ends_the_step(bed: SlurmBed, env: dict[str, str]) -> None:
    sock = env["GPROC_MASTER"]
    argv = [*GPROC, "m", "--listen", f"{bed.net.gateway}:0", "--state", os.path.join(env["OUT"], "state")]
    with open(os.path.join(env["OUT"], "master.log"), "wb") as log:
        master = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert master.poll() is None and time.monotonic() < deadline, "the master did not start"
            time.sleep(0.05)
        with allocation(env, 2, script=HOLD.replace("gproc launch --stop --json", "gproc down")) as a:
            rc, out, err = a.launched()
            assert rc == 0 and "2 of 2 hosts up" in out and "joined the running master" in out, out + err
            assert gproc(env, "e", "**", "hostname").stdout.count("\n") == 2
            src, stop = a.release()
            assert src == 0, stop
            # the master was not the launch's, so nothing shut the tree down: the step was cancelled
            assert "(2 still running after the tree's shutdown were ended)" in stop, stop
        assert {h: gproc_pids(bed, h) for h in NODES} == {h: [] for h in NODES}
        wait_no_steps(bed)
        assert master.poll() is None and gproc(env, "ping").returncode == 0  # left running
    finally:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait(10)


def test_a_node_srun_cannot_reach_is_reported_and_the_step_goes_again_without_it(
    bed: SlurmBed, env: dict[str, str]
) -> None:
    # the allocation is granted, then h3's slurmd dies: srun fails the whole step there (Slurm's rule)
    gate = os.path.join(env["OUT"], "go")
    script = f'while [ ! -e "{gate}" ]; do sleep 0.1; done\n{HOLD}'
    args = ["--listen", f"{bed.net.gateway}:0", "--timeout", "30", "--json"]
    with allocation(env, 3, *args, script=script) as alloc:
        try:
            deadline = time.monotonic() + 60
            while not any(ln.endswith(" RUNNING") for ln in steps(bed, jobs=True)):
                assert alloc.proc.poll() is None and time.monotonic() < deadline, "no allocation"
                time.sleep(0.1)
            bed.stop_slurmd("h3")
            open(gate, "w").close()
            rc, out, err = alloc.launched()
            rows = {r["host"]: r for r in map(json.loads, out.splitlines())}
            assert rc == 255 and [h for h, r in rows.items() if r["ok"]] == ["h1", "h2"], out + err
            assert rows["h3"]["error"].startswith("srun could not start a task there: "), rows["h3"]
            info = gproc(env, "info", "--json")
            assert {n["name"] for n in map(json.loads, info.stdout.splitlines()) if n["state"] == "up"} == {"h1", "h2"}
            src, stop = alloc.release()
            assert src == 0, stop
        finally:  # before the allocation's end is awaited: a node without slurmd never completes the job
            bed.start_slurmd("h3")
    assert {h: gproc_pids(bed, h) for h in NODES} == {h: [] for h in NODES}
    bed.wait_idle()


def test_under_sbatch_the_master_runs_on_the_first_node_beside_its_daemon(bed: SlurmBed, env: dict[str, str]) -> None:
    # the batch script runs on h1, in h1's namespaces: the master started there must not take the nodes' port
    script = (
        'gproc launch --slurm --json > "$OUT/launch" 2>&1; gproc e "**" hostname > "$OUT/e" 2>&1;'
        ' gproc launch --stop > "$OUT/stop" 2>&1; echo $? >> "$OUT/stop"'
    )
    out = os.path.join(env["OUT"], "batch.out")
    r = subprocess.run(
        ["sbatch", "-N", "3", "--wait", "-o", out, "--wrap", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr + read(env, "batch.out")
    rows = [json.loads(x) for x in read(env, "launch").splitlines()]
    assert [(x["host"], x["ok"]) for x in rows] == [("h1", True), ("h2", True), ("h3", True)], rows
    assert sorted(read(env, "e").splitlines()) == ["h1: h1", "h2: h2", "h3: h3"]
    assert read(env, "stop").splitlines()[-1] == "0", read(env, "stop")
    assert {h: gproc_pids(bed, h) for h in NODES} == {h: [] for h in NODES}
    wait_no_steps(bed)


def test_bad_input_is_one_line(env: dict[str, str]) -> None:
    outside = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    inside = {**outside, "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "h[1-2]"}
    for e, args, msg in (
        (outside, ["launch", "--slurm"], "not inside a Slurm allocation (run it under salloc or sbatch)"),
        (inside, ["launch", "--slurm", "--ssh", "h1"], "--slurm and --ssh exclude each other"),
        (inside, ["launch", "--slurm", "--port", "0"], "--slurm needs a fixed --port"),
        (inside, ["launch", "--slurm", "--fanout", "0"], "--fanout must be at least 1"),
        ({**inside, "SLURM_JOB_NODELIST": "h[1-"}, ["launch", "--slurm"], "bad SLURM_JOB_NODELIST"),
    ):
        r = gproc(e, *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, (args, r.stderr)
