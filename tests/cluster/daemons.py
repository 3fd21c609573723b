"""Standalone daemons for fault tests: started by pid in their own process group, ended the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


class Daemon:
    """One ``gproc`` daemon process that a test started (and must end)."""

    def __init__(self, *args: str, log: str) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gproc", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def end(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def node(name: str, nid: str, parent: str, key: str, log: str, *more: str) -> Daemon:
    args = ["s", f"-myParent={parent}", f"-myId={nid}", "--name", name, "--key", key]
    args += ["--node-socket", os.path.join(os.path.dirname(log), f"{name}.sock")]  # beside its log, not /tmp/xproc
    args += ["--listen", "127.0.0.1:0"]  # any node may become interior; loopback only
    args += [f"-binRoot={os.path.join(os.path.dirname(log), 'bin-' + name)}"]  # staged beside its log
    return Daemon(*args, *more, log=log)


def wait_until(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
