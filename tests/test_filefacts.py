"""The client's per-user cache of file facts (gproc.filefacts): used only for files unchanged since."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gproc import bundle, elf
from gproc.filefacts import FileFacts

TRUE = shutil.which("true") or "/bin/true"


def _program(tmp_path: Path) -> str:
    prog = tmp_path / "prog"
    shutil.copy2(os.path.realpath(TRUE), prog)
    return str(prog)


def _no_parse(host: str, shown: str) -> object:
    raise AssertionError(f"{host} parsed again")


def test_a_second_build_reads_no_elf_header_and_gives_the_same_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = str(tmp_path / "cache" / "files.json")
    prog = _program(tmp_path)
    first = bundle.build([prog], facts=FileFacts.load(cache, settle=0))
    assert first is not None and os.path.exists(cache)
    monkeypatch.setattr(elf, "_parse", _no_parse)
    monkeypatch.setattr(bundle, "file_hash", lambda path: (_ for _ in ()).throw(AssertionError(f"{path} hashed")))
    again = bundle.build([prog], facts=FileFacts.load(cache, settle=0))
    assert again is not None
    assert again.to_wire() == first.to_wire()


def test_a_file_changed_in_place_is_read_again(tmp_path: Path) -> None:
    cache = str(tmp_path / "files.json")
    prog = _program(tmp_path)
    first = bundle.build([prog], facts=FileFacts.load(cache, settle=0))
    assert first is not None
    data = bytearray(Path(prog).read_bytes())
    data[-1] ^= 0xFF  # same size, same inode; the kernel moves the ctime
    st = os.stat(prog)
    with open(prog, "r+b") as f:
        f.write(data)
    os.utime(prog, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime put back
    again = bundle.build([prog], facts=FileFacts.load(cache, settle=0))
    assert again is not None
    assert again.entries[prog].hash != first.entries[prog].hash
    assert again.entries[prog].hash == bundle.file_hash(prog)[0]


def test_a_file_changed_lately_is_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = str(tmp_path / "files.json")
    prog = _program(tmp_path)  # just written: its ctime is now
    bundle.build([prog], facts=FileFacts.load(cache, settle=60))
    facts = FileFacts.load(cache)
    assert facts.get(prog, "sha256") is None and facts.get(prog, "elf") is None


def test_an_unreadable_cache_is_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "files.json"
    cache.write_text("{not json")
    prog = _program(tmp_path)
    b = bundle.build([prog], facts=FileFacts.load(str(cache), settle=0))
    assert b is not None and b.entries[prog].hash == bundle.file_hash(prog)[0]
    assert FileFacts.load(str(cache)).get(prog, "sha256") == list(bundle.file_hash(prog))
