"""The master's durable state in SQLite: ranks by node name, and the op id series (job ids
come from the gpid space: ``services.procs.MasterProcs.next_id``).

A rank, once given to a name, is that name's for good (across reconnects and master restarts); an op
id is never handed out twice, so a restarted master's ops cannot be taken for ops still running on
nodes from before.
"""

from __future__ import annotations

import os
import sqlite3
import time


class MasterState:
    """SQLite-backed rank table (WAL mode; one writer, the master)."""

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

    def rank_for(self, name: str) -> int:
        """The rank of a name, given now if the name is new."""
        r = self._ranks.get(name)
        if r is None:
            r = self._next_rank
            self._next_rank += 1
            self.db.execute("INSERT INTO ranks VALUES (?, ?, ?)", (name, r, time.time()))
            self._ranks[name] = r
        return r

    def reserve(self, series: str, count: int) -> int:
        """The first of ``count`` consecutive ids of ``series`` never handed out before (from 1)."""
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (series,)).fetchone()
        first = int(row[0]) if row else 1
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (series, first + count))
        return first

    def close(self) -> None:
        self.db.close()
