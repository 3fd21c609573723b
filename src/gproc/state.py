"""The master's durable state in SQLite: ranks by node name, and the operation-id counter.

A rank, once given to a name, is that name's for good (across reconnects and master restarts).
"""

from __future__ import annotations

import os
import sqlite3
import time

OP_ID_BLOCK = 1000


class MasterState:
    """SQLite-backed rank table and id counter (WAL mode; one writer, the master)."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS ranks (name TEXT PRIMARY KEY, rank INTEGER UNIQUE NOT NULL, first REAL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        self._ranks: dict[str, int] = dict(self.db.execute("SELECT name, rank FROM ranks").fetchall())
        self._next_rank = max(self._ranks.values(), default=0) + 1
        self._op_next = self._op_limit = 0

    def rank_for(self, name: str) -> int:
        """The rank of a name, given now if the name is new."""
        r = self._ranks.get(name)
        if r is None:
            r = self._next_rank
            self._next_rank += 1
            self.db.execute("INSERT INTO ranks VALUES (?, ?, ?)", (name, r, time.time()))
            self._ranks[name] = r
        return r

    def next_op_id(self) -> int:
        """A new operation (job) id, never reused; ids are reserved in blocks to spare writes."""
        if self._op_next >= self._op_limit:
            row = self.db.execute("SELECT v FROM meta WHERE k='op'").fetchone()
            start = row[0] if row else 1
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('op', ?)", (start + OP_ID_BLOCK,))
            self._op_next, self._op_limit = start, start + OP_ID_BLOCK
        self._op_next += 1
        return self._op_next - 1

    def close(self) -> None:
        self.db.close()
