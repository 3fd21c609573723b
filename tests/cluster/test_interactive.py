"""``gproc e -i``: a prompt on a terminal (a pty here); lines run on the node set with gathered output,
session commands change the set, Ctrl-C interrupts the running command and not the session."""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect
import pytest
from tests.cluster.daemons import wait_until
from tests.conftest import LocalCluster

pytestmark = pytest.mark.cluster
PROMPT = "gproc> "


def test_interactive_session(cluster16: LocalCluster, tmp_path: object) -> None:
    home = str(tmp_path)
    env = {**os.environ, "GPROC_MASTER": cluster16.socket, "HOME": home, "TERM": "dumb"}
    s = pexpect.spawn(
        sys.executable, ["-m", "gproc", "e", "-i", "-w", "node[0-3]"], env=env, encoding="utf-8", timeout=30
    )
    try:
        s.expect_exact("Working with nodes: node[0-3] (4)")
        s.expect_exact(PROMPT)
        s.sendline("echo hi; echo $GPROC_NAME | tr -d 0-9")
        s.expect_exact("node[0-3] (4)")
        s.expect("hi\r\nnode\r\n")
        s.expect_exact(PROMPT)

        s.sendline(":w node[0-1]")
        s.expect_exact("Working with nodes: node[0-1] (2)")
        s.sendline("+node5")
        s.expect_exact("Working with nodes: node[0-1,5] (3)")
        s.sendline(":w bad[")
        s.expect_exact("keeping node[0-1,5]")
        s.expect_exact(PROMPT)

        s.sendline('echo started; touch "$HOME/ready.$GPROC_NAME"; sleep 30; echo never')
        wait_until(lambda: len([f for f in os.listdir(home) if f.startswith("ready.")]) == 3, 20, "the command")
        s.sendintr()
        s.expect_exact("sent SIGINT")
        s.expect_exact("node[0-1,5]: exit 130")
        s.expect_exact(PROMPT, timeout=15)
        assert "never" not in (s.before or "")

        s.sendline("=")
        s.expect_exact("Switching to live output")
        s.sendline("echo live")
        s.expect_exact("node[0-1,5]: live")
        s.expect_exact(PROMPT)

        s.sendintr()  # at the prompt: abandons the line, the session stays
        s.expect_exact(PROMPT)
        s.sendline("?")
        s.expect_exact("Working with nodes: node[0-1,5] (3)")
        s.sendline(":quit")
        s.expect(pexpect.EOF)
    finally:
        s.close(force=True)
    with open(os.path.join(home, ".gproc_history")) as f:
        history = f.read()
    assert "echo live" in history and ":w node[0-1]" in history


def test_interactive_reads_commands_from_a_pipe(cluster16: LocalCluster) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gproc", "e", "-i", "-w", "node[0-3]"],
        input="echo one\n:w node[4-5]\necho two\n",
        capture_output=True,
        text=True,
        env={**os.environ, "GPROC_MASTER": cluster16.socket},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "node[0-3] (4)" in r.stdout and "one" in r.stdout and "node[4-5] (2)" in r.stdout
