"""What every benchmark shares: the machine's description and its section of bench/RESULTS.md.

Each benchmark owns one section, between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; writing it
keeps every other section (and hand-written notes outside the markers) as they are.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

# Every command a benchmark times runs as from an installed gproc, whose modules are compiled once:
# with PYTHONDONTWRITEBYTECODE set (as on some development machines) a changed or fresh checkout is
# compiled from source at every start, ~10-40 ms of each CLI command and of each daemon's start.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def machine(load: bool = False) -> str:
    """CPUs (model), memory, OS and kernel; with ``load``, the 1-minute load average now."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB, {platform.system()} {platform.release()}"
    return text + (f", load {os.getloadavg()[0]:.1f} at start" if load else "")


def write_section(name: str, text: str, path: Path = RESULTS) -> Path:
    """Replace the ``name`` section of RESULTS.md (or append it), keeping everything else."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{text}{end}\n"
    old = path.read_text() if path.exists() else "# gproc benchmark results\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + section + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    path.write_text(new)
    return path


def publish(name: str, text: str, write: bool = True) -> None:
    """Print a benchmark's report; with ``write``, it also replaces the ``name`` section of RESULTS.md."""
    print(text)
    if write:
        print(f"written to {write_section(name, text)}", file=sys.stderr)
