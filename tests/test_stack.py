"""What the unwinders print, read as stacks (outermost frame first, no addresses, no paths that differ
between nodes), and the printed tree of ``gproc stack``."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time

import pytest

from gproc import libdw
from gproc.modes.stack import render
from gproc.services.stack import (
    StackReader,
    UnwindError,
    parse_eu_frames,
    parse_eu_stack,
    parse_gdb,
    parse_py_spy,
)

EU_STACK = """PID 2838 - process
TID 2838:
#0  0x00007f8013883dd0 pause - /usr/lib/x86_64-linux-gnu/libc.so.6
#1  0x0000562d7223f162 a - /srv/gproc/node3/p
#2  0x0000562d7223f1b0 - /srv/gproc/node3/p
#3  0x0000562d7223f091 _start - /srv/gproc/node3/p
TID 2839:
#0  0x00007f8013883dd0 poll - /usr/lib/x86_64-linux-gnu/libc.so.6
#1  0x00007f80137d724a start_thread - /usr/lib/x86_64-linux-gnu/libc.so.6
"""

GDB = """[Thread debugging using libthread_db enabled]
0x00007f837fddbbd3 in __GI___wait4 (pid=-1) at ../sysdeps/unix/sysv/linux/wait4.c:30

Thread 2 (Thread 0x7f83 (LWP 8369) "worker"):
#0  0x00007f837fddbbd3 in poll () from /lib/x86_64-linux-gnu/libc.so.6
#1  0x000055f4280fc3f2 in ?? () from /srv/gproc/node3/p
#2  0x000055f4280fdaba in start_thread ()

Thread 1 (Thread 0x7f837fd05740 (LWP 8368) "p"):
#0  0x00007f837fddbbd3 in __GI___wait4 (pid=-1, stat_loc=0x7ffd) at ../sysdeps/unix/sysv/linux/wait4.c:30
#1  main () at p.c:5
[Inferior 1 (process 8368) detached]
"""

PY_SPY = """[{"pid": 1, "thread_id": 7, "thread_name": "MainThread", "frames": [
  {"name": "in_b", "filename": "/srv/node3/w.py", "short_filename": "w.py", "line": 5},
  {"name": "<module>", "filename": "/srv/node3/w.py", "short_filename": "w.py", "line": 7}]}]"""


def test_eu_stack_frames_outermost_first_a_missing_symbol_named_by_its_file() -> None:
    assert parse_eu_stack(EU_STACK) == [["_start", "?? (p)", "a", "pause"], ["start_thread", "poll"]]


EU_QUICK = """PID 2838 - process
TID 2838:
#0  0x00007f8013883dd0 - /usr/lib/x86_64-linux-gnu/libc.so.6
    [93ac61ec]@0x7f80137b0000+0xd3dd0
#1  0x0000562d7223f162 - /srv/gproc/node3/p
    []@0x562d7223e000+0x1161
"""


def test_eu_stack_places_are_build_id_and_offset_the_same_in_every_process() -> None:
    assert parse_eu_frames(EU_QUICK) == [
        [
            (("93ac61ec", "d3dd0"), "", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            (("/srv/gproc/node3/p", "0000562d7223f162"), "", "/srv/gproc/node3/p"),  # no build id: its address
        ]
    ]


def state(pid: int) -> str:
    """A process's state letter (/proc/PID/stat): S asleep, T stopped, R running."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def wait_state(pid: int, want: str) -> None:
    """Until the process is in state ``want`` (at most 5 s; the test's own assertions say the rest)."""
    for _ in range(500):
        if state(pid) == want:
            return
        time.sleep(0.01)


def sleepers(n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` sleep processes, each past the dynamic loader and asleep: one place to unwind from."""
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(n)]
    for p in procs:
        wait_state(p.pid, "S")
    return procs


class Counting(StackReader):
    """A reader that counts its full (symbol-naming) unwinds."""

    def __init__(self) -> None:
        super().__init__()
        self.fulls = 0

    def _full(self, pid: int) -> list[list[str]]:
        self.fulls += 1
        return super()._full(pid)


@pytest.mark.skipif(not shutil.which("eu-stack"), reason="needs eu-stack")
def test_the_reader_names_a_second_process_from_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libdw, "load", lambda: "not used here")  # the eu-stack path
    procs = sleepers(3)  # in the same place: a process still in the loader would need names of its own
    try:
        reader = Counting()
        got = asyncio.run(reader.read([p.pid for p in procs]))
        full = parse_eu_stack(
            subprocess.run(["eu-stack", "-m", "-p", str(procs[0].pid)], capture_output=True, text=True).stdout
        )
        assert got[procs[0].pid] == got[procs[1].pid] == got[procs[2].pid] == full, got
        assert len(full[0]) >= 3 and len(reader.names) >= len(full[0])  # the places of the first, named
        assert reader.fulls == 1  # the other two named from what the first taught
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.skipif(
    not shutil.which("eu-stack") or not isinstance(libdw.load(), libdw.Libdw), reason="needs libdw and eu-stack"
)
def test_libdw_in_process_reads_what_eu_stack_reads() -> None:
    """The same frames, names and places as elfutils' own eu-stack, for a running and a stopped
    process; a place is named once, and the processes run on after being read."""
    dw = libdw.load()
    assert isinstance(dw, libdw.Libdw)
    procs = sleepers(2)
    try:
        procs[1].send_signal(signal.SIGSTOP)
        wait_state(procs[1].pid, "T")  # stopped before it is read: a stop on its way could be taken by the attach
        eu = subprocess.run(["eu-stack", "-b", "-m", "-p", str(procs[0].pid)], capture_output=True, text=True)
        symbols: dict[libdw.Place, str] = {}
        for p in procs:
            frames = dw.frames(p.pid, symbols)
            assert [[(place, name) for place, name, _ in t] for t in frames] == [
                [(place, name) for place, name, _ in t] for t in parse_eu_frames(eu.stdout)
            ]
            assert len(symbols) == len(frames[0])  # the second process's places were named by the first
        wait_state(procs[1].pid, "T")  # a stopped process is left stopped (libdw detaches with a SIGSTOP)
        assert state(procs[1].pid) == "T"
        assert asyncio.run(StackReader().read([procs[0].pid])) == {procs[0].pid: parse_eu_stack(eu.stdout)}
        procs[1].send_signal(signal.SIGCONT)
        for p in procs:  # not left stopped by the attach
            p.terminate()
            assert p.wait(timeout=10) == -signal.SIGTERM
        with pytest.raises(libdw.DwError, match="process ended"):
            dw.frames(procs[0].pid, symbols)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_gdb_frames_outermost_first() -> None:
    assert parse_gdb(GDB) == [["start_thread", "?? (p)", "poll"], ["main", "__GI___wait4"]]


def test_py_spy_frames_by_function_and_file_without_lines() -> None:
    assert parse_py_spy(PY_SPY) == [["<module> (w.py)", "in_b (w.py)"]]
    with pytest.raises(UnwindError):
        parse_py_spy("Error: Failed to find python version")
    assert parse_py_spy('{"not": "a list"}') == [] and parse_py_spy("[1, {}]") == []


def test_the_tree_prints_counts_where_they_change() -> None:
    r = {
        "processes": 3,
        "nodes": "n[1-3]",
        "classes": [{}, {}],
        "tree": [
            [0, "main", "n[1-3]", 3, 3],
            [1, "b", "n2", 1, 1],
            [2, "pause", "n2", 1, 1],
            [1, "a", "n[1,3]", 2, 2],
            [2, "pause", "n[1,3]", 2, 2],
        ],
    }
    assert render(r).splitlines() == [
        "3 processes on n[1-3], 2 classes",
        "main       3 on n[1-3]",
        "  b        1 on n2",
        "    pause",
        "  a        2 on n[1,3]",
        "    pause",
    ]
    assert render({"processes": 0, "nodes": "", "classes": [], "tree": []}) == "no stack read\n"
