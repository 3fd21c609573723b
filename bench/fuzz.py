"""The long fuzzing run: every harness of tests/fuzz/ under atheris for a number of executions each.

Each target runs in its own process (``tests/fuzz/run.py TARGET -runs=N``) from its committed seed
corpus plus a scratch directory for what it finds; an input that raises anything but the target's
documented errors is a crash, written to ``--artifacts`` and counted. The totals (executions, time,
corpus reached, crashes) are printed and written into bench/RESULTS.md between the ``fuzz`` markers.

    python bench/fuzz.py [--runs 2000000] [--max-seconds S] [--targets wire,messages,...] [--jobs 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, write_section

FUZZ = Path(__file__).resolve().parent.parent / "tests" / "fuzz"
TARGETS = sorted(p.stem[5:] for p in FUZZ.glob("fuzz_*.py"))


@dataclass
class Outcome:
    target: str
    runs: int
    seconds: float
    corpus: int
    crashed: bool
    tail: str


def fuzz_one(target: str, runs: int, artifacts: Path, max_seconds: int) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"gproc-fuzz-{target}-") as scratch:
        cmd = [sys.executable, str(FUZZ / "run.py"), target, f"-runs={runs}", "-timeout=25", "-print_final_stats=1"]
        cmd += [f"-artifact_prefix={artifacts}/{target}-", f"-max_total_time={max_seconds}"]
        cmd += [scratch, str(FUZZ / "corpus" / target)]
        t0 = time.monotonic()
        env = {**os.environ, "GPROC_FUZZ_TMP": scratch}
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
        seconds = time.monotonic() - t0
        log = p.stdout + p.stderr
        done = re.findall(r"stat::number_of_executed_units: (\d+)", log)
        found = sum(1 for f in os.listdir(scratch) if not f.startswith("gproc-fuzz-"))
        return Outcome(target, int(done[-1]) if done else 0, seconds, found, p.returncode != 0,
                       "\n".join(log.splitlines()[-25:]))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2_000_000, help="executions per target")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    ap.add_argument("--max-seconds", type=int, default=0, help="stop a target after this long (0: no limit)")
    ap.add_argument("--artifacts", default=tempfile.gettempdir(), help="where crashing inputs are written")
    ap.add_argument("--section", default="fuzz", help="the section of bench/RESULTS.md written")
    ap.add_argument("--no-write", action="store_true", help="print only, leave bench/RESULTS.md alone")
    args = ap.parse_args()
    targets = args.targets.split(",")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        outs = list(pool.map(lambda t: fuzz_one(t, args.runs, Path(args.artifacts), args.max_seconds), targets))
    rows = ["| target | executions | seconds | executions/s | new corpus inputs | crashes |"]
    rows.append("|---|---:|---:|---:|---:|---:|")
    for o in outs:
        rate = o.runs / o.seconds if o.seconds else 0
        rows.append(f"| {o.target} | {o.runs:,} | {o.seconds:.0f} | {rate:,.0f} | {o.corpus} | {int(o.crashed)} |")
        if o.crashed:
            print(f"--- {o.target} crashed:\n{o.tail}", file=sys.stderr)
    total = sum(o.runs for o in outs)
    crashes = sum(o.crashed for o in outs)
    rows.append(f"| **all** | **{total:,}** | {sum(o.seconds for o in outs):.0f} | | | **{crashes}** |")
    text = (
        f"## Fuzzing: coverage-guided runs of {', '.join(targets)} (tests/fuzz, atheris)\n\n"
        f"Command: `python bench/fuzz.py {shlex.join(sys.argv[1:])}`  \n"
        f"Date: {started}  \nMachine: {machine(load=True)}  \n\n"
        "Each target: `tests/fuzz/run.py TARGET -runs=N` from its seed corpus (tests/fuzz/corpus/TARGET); a "
        "crash is any exception but the target's documented errors, or an input running over 25 s. A target "
        "stops at N executions or after --max-seconds, whichever comes first.\n\n" + "\n".join(rows) + "\n"
    )
    print(text)
    if not args.no_write:
        write_section(args.section, text)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
