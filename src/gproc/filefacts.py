"""What the client learnt about files it ships (SHA-256, the ELF facts the loader needs), kept per user
between runs so that a repeated ``gproc e`` neither re-hashes nor re-parses an unchanged program.

A fact is keyed by the file's path and identity (device, inode, size, mtime and ctime in ns): writing,
replacing, renaming over or changing the mode of a file changes its ctime, which no user can set, so
a stale fact is never used. As git does for its index, a file changed within the last ``settle``
seconds is not remembered (its timestamps have the clock's coarse granularity: a second write in the
same tick would keep them). The cache is only an accelerator: an unreadable or corrupt file is
ignored and one that cannot be written is not kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Any

MAX_ENTRIES = 1024  # files remembered; the oldest go first
VERSION = 1


def default_path() -> str:
    """``$XDG_CACHE_HOME/gproc/files.json`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gproc", "files.json")


def identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class FileFacts:
    """Facts by host path; ``get``/``put`` check the file's identity; ``save`` writes them back."""

    def __init__(self, path: str | None = None, settle: float = 2.0) -> None:
        self.path = path
        self.settle = settle
        self._facts: dict[str, dict[str, Any]] = {}
        self._changed = False

    @classmethod
    def load(cls, path: str | None = None, settle: float = 2.0) -> FileFacts:
        facts = cls(path or default_path(), settle)
        try:
            with open(facts.path or "", encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict) and data.get("v") == VERSION and isinstance(data.get("files"), dict):
                facts._facts = data["files"]
        except (OSError, ValueError):
            pass  # no cache yet, or an unreadable one: start afresh
        return facts

    def get(self, host: str, kind: str) -> Any:
        """The fact ``kind`` about the file at ``host`` if it was learnt for the file as it is now."""
        entry = self._facts.get(host)
        if not isinstance(entry, dict) or kind not in entry:
            return None
        try:
            st = os.stat(host)
        except OSError:
            return None
        return entry[kind] if entry.get("id") == identity(st) else None

    def put(self, host: str, kind: str, fact: Any, st: os.stat_result) -> None:
        """Remember ``fact`` about the file at ``host``, ``st`` being its stat from before it was read
        (a file that changed meanwhile, or changed lately, is not remembered)."""
        try:
            now = os.stat(host)
        except OSError:
            return
        ident = identity(st)
        if identity(now) != ident or max(st.st_mtime_ns, st.st_ctime_ns) > time.time_ns() - self.settle * 1e9:
            return
        entry = self._facts.pop(host, None)
        if not isinstance(entry, dict) or entry.get("id") != ident:
            entry = {"id": ident}
        entry[kind] = fact
        self._facts[host] = entry  # last: the most recently used are kept
        self._changed = True

    def save(self) -> None:
        if not self._changed or self.path is None:
            return
        while len(self._facts) > MAX_ENTRIES:
            del self._facts[next(iter(self._facts))]
        directory = os.path.dirname(self.path)
        with contextlib.suppress(OSError):  # a read-only or full home: the next run works it out again
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".files-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"v": VERSION, "files": self._facts}, f)
                os.replace(tmp, self.path)
            except OSError:
                os.unlink(tmp)
                raise
        self._changed = False
