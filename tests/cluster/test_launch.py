"""``gproc launch --ssh`` on real hosts: network namespaces on a bridge, each running Debian's sshd.

Eight hosts and a ninth name at fanout 2: h3 (an interior host, h7's parent) has its sshd stopped,
h8 refuses the login and h9 has an address nobody answers on, so the launch must report the three with
ssh's reason, start h7 from h1 instead, and bring the other six up; ``gproc e`` then runs on all six,
each in its own UTS namespace. The credential must never be on any command line while the launch runs
nor reach a job, and ``--stop`` / ``down`` must leave no daemon on any host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from tests.netbed import NetBed, netbed, problem

GPROC = [sys.executable, "-m", "gproc"]
HOSTS = [f"h{i}" for i in range(1, 10)]
UP = ["h1", "h2", "h4", "h5", "h6", "h7"]

pytestmark = pytest.mark.skipif(problem() is not None, reason=problem() or "")


@pytest.fixture(scope="module")
def bed() -> Iterator[NetBed]:
    with netbed(HOSTS[:-1], refuse=["h8"], absent=["h9"]) as b:
        b.stop_sshd("h3")
        yield b


@pytest.fixture
def env(bed: NetBed) -> Iterator[dict[str, str]]:
    d = tempfile.mkdtemp(prefix="gproc-launch-test-")
    e = dict(os.environ, GPROC_MASTER=os.path.join(d, "master.sock"), GPROC_KEY=os.path.join(d, "cluster.key"))
    e["GPROC_SSH"] = " ".join(bed.ssh_command)
    e["PATH"] = os.path.dirname(sys.executable) + ":" + e.get("PATH", "/usr/bin:/bin")
    subprocess.run([*GPROC, "keygen"], env=e, check=True, capture_output=True, timeout=60)
    yield e
    if os.path.exists(e["GPROC_MASTER"] + ".launch"):  # a test that failed half-way
        subprocess.run([*GPROC, "launch", "--stop"], env=e, capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def gproc(
    env: dict[str, str], *args: str, timeout: float = 120, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GPROC, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
    )  # fmt: skip


def launch_args(bed: NetBed) -> list[str]:
    # the master listens on the bridge (the hosts' only way out); each host's binRoot is in its own /run
    return ["launch", "--ssh", "h[1-9]", "--fanout", "2", "--listen", f"{bed.gateway}:0", "--bin-root", "/run/xproc"]


class CmdlineWatch:
    """Reads every process's command line and environment while a launch runs, looking for the key."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.hits: set[str] = set()
        self.sweeps = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for what in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{what}", "rb") as f:
                            if self.secret in f.read():
                                self.hits.add(f"{pid}/{what}")
                    except OSError:
                        pass
            self.sweeps += 1
            time.sleep(0.005)

    def __enter__(self) -> CmdlineWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(10)


def secret_of(key_file: str) -> bytes:
    """A line of the private key's base64: what any copy of the credential contains."""
    with open(key_file, "rb") as f:
        lines = f.read().splitlines()
    return lines[lines.index(b"-----BEGIN PRIVATE KEY-----") + 1]


def test_tree_launch_reports_failures_runs_everywhere_and_stops(bed: NetBed, env: dict[str, str]) -> None:
    with CmdlineWatch(secret_of(env["GPROC_KEY"])) as watch:
        r = gproc(env, *launch_args(bed), "--json")
    assert watch.sweeps > 0
    assert not watch.hits, f"the credential was readable in {sorted(watch.hits)}"
    rows = {row["host"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert r.returncode == 255, r.stderr
    assert sorted(rows) == HOSTS
    assert "Connection refused" in rows["h3"]["error"], rows["h3"]
    assert "Permission denied" in rows["h8"]["error"], rows["h8"]
    assert "h9" in rows and "port 22" in rows["h9"]["error"], rows["h9"]  # no route, or timed out
    assert sorted(h for h, row in rows.items() if row["ok"]) == UP, rows

    info = gproc(env, "info", "--json")
    assert info.returncode == 0, info.stderr
    tree = {n["name"]: n for n in map(json.loads, info.stdout.splitlines())}
    assert {n for n, row in tree.items() if row["state"] == "up"} == set(UP)
    assert tree["h7"]["parent"] == "h1"  # h3 could not start it, so h1 did
    assert tree["h4"]["parent"] == "h2" and tree["h1"]["parent"] == "master"
    # each daemon listens on the address its parent reached it at (what its descendants fall back to)
    assert {n: row["address"] for n, row in tree.items()} == {h: f"{bed.hosts[h].address}:6666" for h in UP}

    out = gproc(env, "e", "**", "hostname")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == sorted(f"{h}: {h}" for h in UP)
    fds = gproc(env, "e", "**", "ls", "-l", "/proc/self/fd/")
    assert fds.returncode == 0 and "pipe:" in fds.stdout, fds.stdout + fds.stderr
    assert "memfd" not in fds.stdout, fds.stdout  # a job must not inherit the daemon's credential

    for h in UP:  # the daemon opens the credential from a descriptor, not a file on disk
        (pid,) = bed.daemons(h)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[argv.index(b"--key") + 1].startswith(b"/proc/self/fd/"), argv
        fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert any(f.startswith("/memfd:gproc-cluster-key") for f in fds), fds  # what jobs must not see

    # a launched node falls back to its ancestors: h1's children (h5, h7) re-attach to the master
    (h1,) = bed.daemons("h1")
    os.kill(h1, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        rows = [json.loads(x) for x in gproc(env, "info", "--json").stdout.splitlines()]
        parents = {n["name"]: n["parent"] for n in rows if n["state"] == "up"}
        if parents.get("h5") == parents.get("h7") == "master":
            break
        assert time.monotonic() < deadline, f"h5 and h7 did not re-attach to the master: {parents}"
        time.sleep(0.2)
    out = gproc(env, "e", "**", "hostname")
    assert sorted(out.stdout.splitlines()) == sorted(f"{h}: {h}" for h in UP if h != "h1"), out.stdout + out.stderr

    stop = gproc(env, "launch", "--stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    left = {h: bed.daemons(h) for h in HOSTS[:-1]}
    assert left == {h: [] for h in HOSTS[:-1]}, left
    assert not os.path.exists(env["GPROC_MASTER"]) and not os.path.exists(env["GPROC_MASTER"] + ".launch")


def test_down_stops_a_launch_and_a_second_launch_is_refused_meanwhile(bed: NetBed, env: dict[str, str]) -> None:
    r = gproc(env, *launch_args(bed))
    assert r.returncode == 255, r.stderr
    assert r.stdout.startswith("6 of 9 hosts up"), r.stdout
    assert "h3: ssh: connect to host" in r.stderr and "h8: " in r.stderr, r.stderr
    again = gproc(env, *launch_args(bed))
    assert again.returncode == 2 and "launch --stop" in again.stderr, again.stderr
    assert sum(len(bed.daemons(h)) for h in HOSTS[:-1]) == len(UP)  # the refused launch started nothing
    down = gproc(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert {h: bed.daemons(h) for h in HOSTS[:-1]} == {h: [] for h in HOSTS[:-1]}


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


BLOCK_PORT = (  # the earlier launches' connections may still be in TIME_WAIT on the port
    "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind(('0.0.0.0', 6666)); s.listen(); time.sleep(300)"
)


def test_a_daemon_that_fails_is_reported_and_its_children_started_from_above(bed: NetBed, env: dict[str, str]) -> None:
    # h2's daemon cannot listen (its port is taken there), after h2's agent already started h4 and h6
    blocker = bed.spawn("h2", [sys.executable, "-c", BLOCK_PORT])
    try:
        deadline = time.monotonic() + 30
        while not listening(bed.hosts["h2"].address, 6666):
            assert blocker.poll() is None and time.monotonic() < deadline, "the port blocker did not listen"
            time.sleep(0.05)
        r = gproc(env, *launch_args(bed), "--json")
        rows = {row["host"]: row for row in map(json.loads, r.stdout.splitlines())}
        assert r.returncode == 255 and not rows["h2"]["ok"], r.stdout + r.stderr
        assert "address already in use" in rows["h2"]["error"].lower(), rows["h2"]
        up = sorted(h for h, row in rows.items() if row["ok"])
        assert up == ["h1", "h4", "h5", "h6", "h7"], rows
        info = gproc(env, "info", "--json")
        tree = {n["name"]: n["parent"] for n in map(json.loads, info.stdout.splitlines())}
        assert tree == {"h1": "master", "h4": "master", "h6": "master", "h5": "h1", "h7": "h1"}, tree
        assert [len(bed.daemons(h)) for h in ("h4", "h6")] == [1, 1]  # started again, not twice
        stop = gproc(env, "launch", "--stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert {h: bed.daemons(h) for h in HOSTS[:-1] if h != "h2"} == {h: [] for h in HOSTS[:-1] if h != "h2"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(blocker.pid, signal.SIGKILL)
        blocker.wait(10)


def test_launch_joins_a_running_master_and_stop_leaves_it_running(bed: NetBed, env: dict[str, str]) -> None:
    sock = env["GPROC_MASTER"]
    log = os.path.join(os.path.dirname(sock), "master.log")
    argv = [*GPROC, "m", "--listen", f"{bed.gateway}:0", "--state", os.path.dirname(sock) + "/state"]
    with open(log, "wb") as out:
        master = subprocess.Popen(argv, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline and master.poll() is None:
            time.sleep(0.05)
        r = gproc(env, "launch", "--ssh", "h[1-2]", "--bin-root", "/run/xproc")
        assert r.returncode == 0 and "joined the running master" in r.stdout, r.stdout + r.stderr
        assert gproc(env, "e", "**", "hostname").stdout.count("\n") == 2
        stop = gproc(env, "launch", "--stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert bed.daemons("h1") == [] and bed.daemons("h2") == []
        assert master.poll() is None and gproc(env, "ping").returncode == 0  # no nodes left to answer
    finally:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait(10)


def _hidden() -> list[str]:
    """The directories that make this Python and gproc (a host with these hidden has neither)."""
    return [p for p in {sys.prefix, sys.base_prefix} if p not in ("/", "/usr", "/usr/local")]


needs_hideable_python = pytest.mark.skipif(
    not _hidden(), reason="this Python lives in /usr: a host cannot be made without it by hiding a directory"
)


@needs_hideable_python
def test_a_host_without_gproc_is_reported_when_shipping_is_off(env: dict[str, str]) -> None:
    with netbed(["a1", "a2", "a3"], hide={"a2": _hidden()}) as chain:  # a1 -> a2 -> a3 at fanout 1
        env = {**env, "GPROC_SSH": " ".join(chain.ssh_command)}
        r = gproc(
            env, "launch", "--ssh", "a[1-3]", "--fanout", "1", "--listen", f"{chain.gateway}:0", "--ship", "never",
            "--json",
        )  # fmt: skip
        rows = {row["host"]: row for row in map(json.loads, r.stdout.splitlines())}
        assert r.returncode == 255 and sorted(h for h, row in rows.items() if row["ok"]) == ["a1", "a3"], rows
        assert rows["a2"]["error"].startswith(f"no {sys.executable} on the host"), rows["a2"]
        info = gproc(env, "info", "--json")
        assert {n["name"]: n["parent"] for n in map(json.loads, info.stdout.splitlines())} == {
            "a1": "master",
            "a3": "a1",
        }
        stop = gproc(env, "launch", "--stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert [chain.daemons(h) for h in ("a1", "a2", "a3")] == [[], [], []]


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode(errors="replace").split("\0")


@needs_hideable_python
def test_gproc_ships_itself_to_hosts_without_python(env: dict[str, str]) -> None:
    """a2 and a3 have neither this Python nor gproc (their directories are empty tmpfs), and each has
    its own empty runtime directory: a1 (with Python) ships the runtime it packs from its install to
    a2, a2 (running on that runtime) ships its own directory on to a3; both run daemons that work as
    any other. A second launch moves nothing: the hosts hold the runtime by its content's id."""
    rtdir = os.path.join(os.path.dirname(env["GPROC_MASTER"]), "runtimes")
    os.makedirs(rtdir)
    bare = [*_hidden(), rtdir]
    with netbed(["a1", "a2", "a3"], hide={"a2": bare, "a3": bare}) as chain:
        env = {**env, "GPROC_SSH": " ".join(chain.ssh_command)}
        args = ["launch", "--ssh", "a[1-3]", "--fanout", "1", "--listen", f"{chain.gateway}:0"]
        args += ["--runtime-dir", rtdir, "--bin-root", "/run/xproc", "--json"]
        for attempt in ("first", "again"):
            r = gproc(env, *args, timeout=300)
            rows = {row["host"]: row for row in map(json.loads, r.stdout.splitlines())}
            assert r.returncode == 0 and all(row["ok"] for row in rows.values()), (r.stdout, r.stderr)
            shipped = {h: row.get("shipped", 0) for h, row in rows.items()}
            if attempt == "first":
                assert shipped["a1"] == 0 and shipped["a2"] > 10_000_000 and shipped["a3"] > 10_000_000, shipped
            else:
                assert shipped == {"a1": 0, "a2": 0, "a3": 0}, shipped
            for h in ("a2", "a3"):  # the daemon runs on the shipped interpreter, through its own loader
                argvs = [_cmdline(p) for p in chain.daemons(h)]
                # (ld.so --library-path LIB --argv0 bin/python bin/python3.X -m gproc s ...)
                assert any(a[0].startswith(rtdir + "/") and " -m gproc s " in " ".join(a) for a in argvs), argvs
            out = gproc(env, "e", "**", "sh", "-c", "hostname; echo $((6*7))")
            assert out.returncode == 0, out.stderr
            assert sorted(out.stdout.splitlines()) == ["a1: a1", "a2: a2", "a3: a3", "a[1-3]: 42"], out.stdout
            py = gproc(env, "e", "-w", "a[2-3]", "/bin/cat", input_text="through the tree\n")
            assert py.returncode == 0 and py.stdout == "a[2-3]: through the tree\n", py.stdout + py.stderr
            stop = gproc(env, "launch", "--stop")
            assert stop.returncode == 0, stop.stdout + stop.stderr
            assert [chain.daemons(h) for h in ("a1", "a2", "a3")] == [[], [], []]


def test_bad_input_is_one_line(env: dict[str, str]) -> None:
    for args, msg in (
        (["launch"], "usage: gproc launch --ssh HOSTS"),
        (["launch", "--ssh", "h[1-"], "bad host list"),
        (["launch", "--ssh", "h1", "--fanout", "0"], "--fanout must be at least 1"),
        (["launch", "--ssh", "h1", "--ssh-command", "ssh 'unclosed"], "bad ssh command"),
        (["launch", "--stop"], "no launch recorded"),
    ):
        r = gproc(env, *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, (args, r.stderr)
