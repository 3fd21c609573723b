"""What a client command imports: none of the daemons' machinery, and no ELF reader for a program
whose facts the client already knows (start-up time is most of a small job's time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DAEMON_SIDE = ("gproc.platform", "gproc.daemon", "gproc.master", "gproc.overlay", "gproc.spawnd", "elftools")


def _imported(code: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=60, env=env,
    )  # fmt: skip
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_the_cli_imports_no_daemon_code() -> None:
    mods = _imported("import gproc.cli")
    assert "gproc.cli" in mods
    assert [m for m in mods if m.startswith(DAEMON_SIDE)] == []


def test_a_known_program_is_bundled_without_an_elf_reader(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    build = "from gproc import bundle\nassert bundle.build(['/bin/true']).run is not None"
    assert "elftools.elf.elffile" in _imported(build, env)  # the first time it reads the headers
    assert (tmp_path / "gproc" / "files.json").exists()
    assert [m for m in _imported(build, env) if m.startswith("elftools")] == []
