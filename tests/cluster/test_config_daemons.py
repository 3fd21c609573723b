"""Daemons started as their systemd units start them: no switches but ``--config``, settings from the file."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys

from tests.cluster.daemons import Daemon, wait_until
from tests.cluster.netns import pick_port

GPROC = [sys.executable, "-m", "gproc"]


def test_master_and_node_from_the_file_and_the_unit_command_line(tmpdir_short: str) -> None:
    d = tmpdir_short
    key = os.path.join(d, "cluster.key")
    subprocess.run([*GPROC, "keygen", "--key", key], check=True, capture_output=True, timeout=60)
    port = pick_port(["127.0.0.1"], 17666)
    sock = os.path.join(d, "m.sock")
    conf = os.path.join(d, "gproc.toml")
    with open(conf, "w") as f:
        f.write(
            f'key = "{key}"\nbinRoot = "{d}/bin"\n'
            f'[master]\nlisten = "127.0.0.1:{port}"\nsocket = "{sock}"\nstate = "{d}/state"\n'
            f'[node]\nmyParent = "127.0.0.1:{port}"\nname = "fromfile"\nid = "1"\nlisten = "127.0.0.1:0"\n'
            f'node_socket = "{d}/n.sock"\n'
        )
    unit = subprocess.run([*GPROC, "s", "--print-unit", "--config", conf], capture_output=True, text=True, timeout=30)
    assert unit.returncode == 0, unit.stderr
    (exec_start,) = [ln.removeprefix("ExecStart=") for ln in unit.stdout.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert os.access(argv[0], os.X_OK) and argv[-2:] == ["--config", conf], argv
    assert argv[:3] == [sys.executable, "-m", "gproc"]
    daemons = [
        Daemon("m", "--config", conf, log=os.path.join(d, "master.log")),
        Daemon(*argv[3:], log=os.path.join(d, "node.log")),  # the unit's own command line
        Daemon(
            "s",
            "--config",
            conf,
            "--name",
            "switch",
            "--id",
            "2",
            "--bin-root",
            f"{d}/bin2",
            "--node-socket",
            f"{d}/n2.sock",
            log=os.path.join(d, "n2.log"),
        ),
    ]
    env = {**os.environ, "GPROC_MASTER": sock}
    try:

        def names() -> list[str]:
            cmd = [*GPROC, "e", "**", "sh", "-c", "echo $GPROC_NAME"]  # each node's own line: no merging
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
            return sorted(line.split(":")[0] for line in r.stdout.splitlines()) if r.returncode == 0 else []

        wait_until(lambda: names() == ["fromfile", "switch"], 30, "both nodes to join the master from the file")
        cmd = [*GPROC, "e", "-w", "fromfile", "hostname"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        assert r.stdout == f"fromfile: {socket.gethostname()}\n", r.stdout + r.stderr
        assert all(dm.alive() for dm in daemons)
    except AssertionError:
        for dm in daemons:
            with open(dm.log) as f:
                print(dm.log, f.read()[-1500:])
        raise
    finally:
        for dm in reversed(daemons):
            dm.end()
