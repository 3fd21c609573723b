"""Showing ``gproc ps`` rows: a ps-like table, and the forest of parents and children across nodes."""

from __future__ import annotations

from typing import Any

COLUMNS = ("GPID", "NAME", "PID", "USER", "STAT", "%CPU", "RSS", "TIME", "JOB", "CMD")


def forest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in depth-first order, each child under its parent whatever node either runs on; each row
    gets ``depth`` (0 for a process whose parent is not in the listing)."""
    by_gpid = {r["gpid"]: r for r in rows}
    kids: dict[int, list[dict[str, Any]]] = {}
    roots: list[dict[str, Any]] = []
    for r in sorted(rows, key=lambda x: x["gpid"]):
        p = r.get("parent_gpid") or 0
        if p in by_gpid and p != r["gpid"]:
            kids.setdefault(p, []).append(r)
        else:
            roots.append(r)
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for top in [*roots, *rows]:  # rows caught in a parent cycle come last, at depth 0
        stack = [(top, 0)]
        while stack:
            r, depth = stack.pop()
            if r["gpid"] in seen:
                continue
            seen.add(r["gpid"])
            out.append({**r, "depth": depth})
            stack.extend((k, depth + 1) for k in reversed(kids.get(r["gpid"], [])))
    return out


def cpu_time(seconds: float) -> str:
    """Cumulative CPU time as ps shows it: ``M:SS`` (``H:MM:SS`` past an hour)."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def table(rows: list[dict[str, Any]], with_forest: bool = False) -> str:
    """The ps table, columns sized to their content; CMD indented under its parent with ``--forest``."""
    cells = [list(COLUMNS)]
    for r in rows:
        cmd = r["cmd"]
        if with_forest and r.get("depth"):
            cmd = "    " * (r["depth"] - 1) + " \\_ " + cmd
        cells.append(
            [
                str(r["gpid"]),
                r["name"],
                str(r["pid"]),
                r["user"],
                r["stat"],
                f"{r['cpu']:.1f}",
                str(r["rss"]),
                cpu_time(r["time"]),
                str(r["job"]),
                cmd,
            ]
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)]
    right = {0, 2, 5, 6, 7, 8}
    lines = []
    for c in cells:
        parts = [c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join([*parts, c[-1]]).rstrip())
    return "\n".join(lines) + "\n"
