"""Ctrl-C on a job: SIGINT, then SIGKILL when the next interrupt comes within a second."""

from __future__ import annotations

import signal
import time
from typing import Any

from gproc.client import Job


class _Sent:
    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.msgs.append(msg)


def test_a_second_interrupt_within_a_second_kills() -> None:
    conn = _Sent()
    job = Job(conn, {"job": 7})  # type: ignore[arg-type]  # only send() is used
    assert job.interrupt() == signal.SIGINT
    assert job.interrupt() == signal.SIGKILL
    time.sleep(1.05)
    assert job.interrupt() == signal.SIGINT
    assert [m["sig"] for m in conn.msgs] == [signal.SIGINT, signal.SIGKILL, signal.SIGINT]
    assert all(m["t"] == "signal" for m in conn.msgs)
