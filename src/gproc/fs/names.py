"""What the mount's synthetic files say and take, as pure functions: the names of equivalence classes,
the commands a ``ctl`` file accepts, the text of ``status`` files, and an errno for a node's error."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
from typing import Any

NAME_MAX = 255  # bytes of one file name (Linux)
PROC_FILES = ("status", "cmdline", "stdout", "ctl")
JOB_FILES = ("status", "output")

_BY_TEXT = {os.strerror(n): n for n in sorted(errno.errorcode, reverse=True)}


class BadCommand(ValueError):
    """A write to ``ctl`` that is not a command (EINVAL)."""


def class_name(nodes: str, taken: set[str]) -> str:
    """The file name of an equivalence class: its folded node set (``node[0-62]``), or, when that is
    longer than a name may be, its start and a digest of the whole (``node[0,2,4…]~1a2b3c4d``)."""
    name = nodes if nodes not in ("", ".", "..") else f"_{nodes}"
    if len(name.encode()) > NAME_MAX:
        digest = hashlib.sha256(nodes.encode()).hexdigest()[:8]
        head = name.encode()[: NAME_MAX - 16].decode(errors="ignore")
        name = f"{head}…~{digest}"
    while name in taken:
        name += "~"
    return name


def parse_ctl(data: bytes) -> int:
    """The signal a write to ``ctl`` asks for: ``kill`` (TERM), ``kill 9``, ``kill -KILL``,
    ``kill SIGKILL``, ``stop``, ``cont``; BadCommand for anything else."""
    try:
        words = data.decode("ascii").split()
    except UnicodeDecodeError:
        raise BadCommand("not a command") from None
    if words == ["stop"]:
        return int(signal.SIGSTOP)
    if words == ["cont"]:
        return int(signal.SIGCONT)
    if not words or words[0] != "kill" or len(words) > 2:
        raise BadCommand(f"not a command: {data[:40]!r}")
    if len(words) == 1:
        return int(signal.SIGTERM)
    sig = words[1].lstrip("-")
    if sig.isdigit():
        n = int(sig)
        if not 0 < n < signal.NSIG:
            raise BadCommand(f"no signal {n}")
        return n
    name = sig.upper()
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise BadCommand(f"no signal {sig!r}") from None


def status_text(fields: dict[str, Any]) -> bytes:
    """``Key:\tvalue`` lines, as Linux's ``/proc/PID/status`` reads."""
    return "".join(f"{k}:\t{' '.join(map(str, v)) if isinstance(v, list) else v}\n" for k, v in fields.items()).encode()


def proc_status(row: dict[str, Any]) -> bytes:
    """``proc/GPID/status`` from a ``ps`` row."""
    keys = ("gpid", "parent_gpid", "name", "pid", "user", "stat", "cpu", "rss", "time", "job", "cmd")
    labels = {"name": "node", "rss": "rss_kib", "time": "cpu_seconds", "cpu": "cpu_percent"}
    return status_text({labels.get(k, k): row.get(k, "") for k in keys})


def job_status(rec: dict[str, Any]) -> bytes:
    """``jobs/ID/status`` from a ``jobs`` record."""
    keys = ("id", "state", "status", "argv", "nodes", "n", "ok", "failed", "started", "ended", "batch", "uid")
    return status_text({k: rec[k] for k in keys if k in rec})


def errno_of(reason: str) -> int:
    """The errno a node's error text names (``/x: No such file or directory`` -> ENOENT), else EIO."""
    text = reason.rpartition(": ")[2].strip()
    return _BY_TEXT.get(text, errno.EIO)
