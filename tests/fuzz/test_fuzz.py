"""A short coverage-guided run of every fuzz harness (the long one is bench/fuzz.py): each target's
seed corpus (with the inputs that once crashed it) is replayed, then mutated for a bounded number of
executions. Any exception but the target's documented errors fails the test with atheris's report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris (coverage-guided fuzzing) is not installed: pip install '.[test]'")

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = sorted(f[5:-3] for f in os.listdir(HERE) if f.startswith("fuzz_") and f.endswith(".py"))
RUNS = 10_000  # per target: a few seconds each, the whole test well under a minute
FEWER = {"bodies": 2_000}  # each of its inputs runs an op on a node (ps, metrics: psutil): ~100 a second
SEED = 1  # libFuzzer's random seed, fixed so that a run is repeatable


def fuzz(target: str, scratch: str, corpus: str, *options: str) -> tuple[subprocess.CompletedProcess[str], int]:
    cmd = [sys.executable, os.path.join(HERE, "run.py"), target, "-print_final_stats=1", "-timeout=25", f"-seed={SEED}"]
    cmd += [f"-artifact_prefix={scratch}/", *options, corpus, os.path.join(HERE, "corpus", target)]
    env = {**os.environ, "GPROC_FUZZ_TMP": scratch}
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=240, env=env)
    done = re.findall(r"stat::number_of_executed_units: (\d+)", p.stderr)
    return p, int(done[-1]) if done else 0


def test_every_target_has_a_harness_and_seeds() -> None:
    assert {"wire", "messages", "nodespec", "postfix", "manifest", "requests", "bodies"} <= set(TARGETS)
    for t in TARGETS:
        assert os.listdir(os.path.join(HERE, "corpus", t)), t


@pytest.mark.parametrize("target", TARGETS)
def test_short_run(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # what the run finds (the first corpus directory is written to)
    corpus.mkdir()
    n = FEWER.get(target, RUNS)
    p, runs = fuzz(target, str(tmp_path), str(corpus), f"-runs={n}")
    assert p.returncode == 0, p.stderr[-4000:]
    assert runs >= n, p.stderr[-2000:]  # the corpus replayed, then RUNS mutations
    assert "Uncaught Python exception" not in p.stderr
