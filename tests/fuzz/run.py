"""Fuzz one harness with atheris (coverage-guided, libFuzzer's engine):

    python tests/fuzz/run.py TARGET [libFuzzer options] [corpus dirs]

TARGET names ``fuzz_TARGET.py`` here. The gproc modules it exercises are instrumented as it imports
them. An input that makes ``one`` raise anything but the target's documented errors escapes: atheris
prints the traceback, writes the input as ``crash-*`` (see ``-artifact_prefix``) and exits non-zero.
New interesting inputs go to the first corpus directory, so give a scratch one before the seeds.
The ``requests`` harness keeps its master's state in a directory under ``$GPROC_FUZZ_TMP`` (the
system's temporary directory if unset), which libFuzzer's exit leaves behind: point it at a scratch
directory (tests/fuzz/test_fuzz.py and bench/fuzz.py do).
"""

from __future__ import annotations

import importlib
import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = sorted(f[5:-3] for f in os.listdir(HERE) if f.startswith("fuzz_") and f.endswith(".py"))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: run.py {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = sys.argv.pop(1)
    sys.path.insert(0, HERE)
    with atheris.instrument_imports(include=["gproc"]):
        harness = importlib.import_module(f"fuzz_{target}")
    atheris.Setup(sys.argv, harness.one, custom_mutator=getattr(harness, "mutate", None))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
