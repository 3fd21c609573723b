"""gproc's shipped runtime (gproc.runtime): packed here, unpacked with tar, it runs with nothing of this
machine's Python: no environment, every shared object mapped from its own directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gproc import runtime

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="needs tar")

PROBE = (
    "import sys, ssl, sqlite3, gproc.daemon, uvloop\n"
    "from gproc import runtime\n"
    "maps = {l.split()[-1] for l in open('/proc/self/maps') if '.so' in l}\n"
    "print(sys.executable); print(sys.prefix); print(runtime.collect().id)\n"
    "print('\\n'.join(sorted(maps)))\n"
)


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[runtime.Runtime, str]]:
    d = tmp_path_factory.mktemp("runtime")
    rt = runtime.collect(cache=str(d / "cache.json"))
    tar = d / "rt.tar"
    with open(tar, "wb") as f:
        runtime.pack(rt, f)
    top = d / "unpacked"
    top.mkdir()
    subprocess.run(["tar", "-x", "-f", str(tar), "-C", str(top)], check=True, timeout=120)
    tar.unlink()
    yield rt, str(top)


def test_the_id_is_the_content_and_the_cache_keeps_it(tmp_path: object, unpacked: tuple[runtime.Runtime, str]) -> None:
    rt, _ = unpacked
    cache = os.path.join(str(tmp_path), "cache.json")
    first = runtime.collect(cache=cache)
    assert os.path.exists(cache)
    again = runtime.collect(cache=cache)
    assert first.id == again.id == rt.id
    assert [e.name for e in first.entries] == [e.name for e in again.entries]
    names = {e.name for e in rt.entries}
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert {
        "bin/python",
        f"bin/{ver}",
        "lib/ld.so",
        f"lib/{ver}/os.py",
        f"lib/{ver}/site-packages/gproc/daemon.py",
    } <= names
    assert not any(n.startswith(f"lib/{ver}/test/") for n in names)  # the standard library's tests stay here


def test_it_runs_on_its_own_loader_and_libraries_with_no_environment(unpacked: tuple[runtime.Runtime, str]) -> None:
    rt, top = unpacked
    r = subprocess.run(
        [os.path.join(top, "bin", "python"), "-c", PROBE], env={}, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    exe, prefix, rid, *maps = r.stdout.splitlines()
    assert exe == os.path.join(top, "bin", "python") and prefix == top
    assert rid == rt.id  # a running runtime ships itself as the same content
    assert maps and all(m.startswith(top + "/") for m in maps), [m for m in maps if not m.startswith(top + "/")]


@pytest.mark.parametrize(("gz", "keep"), [(False, False), (True, False), (True, True)], ids=["tar", "gz", "gz-kept"])
def test_the_unpack_script_renames_into_place_and_hands_on_the_request(
    tmp_path: object, unpacked: tuple[runtime.Runtime, str], gz: bool, keep: bool
) -> None:
    rt, _ = unpacked
    tiny = runtime.Runtime("0" * 64, rt.python, [runtime.Entry("hello", None, 0o444, data=b"hi\n")])
    base = os.path.join(str(tmp_path), "base")
    tar = os.path.join(str(tmp_path), "tiny.tar")
    with open(tar, "wb") as f:
        runtime.pack(tiny, f, gz)
    with open(tar, "rb") as f:
        payload = b'{"op": "start"}\n' + f.read()
    assert payload[16:18] == (b"\x1f\x8b" if gz else b"he")  # gzip's magic, or the first member's name
    script = runtime.unpack_script(base, tiny.id, gz, keep) + 'cat; cat "$d/hello"'
    for _ in range(2):  # the second time the runtime is there already: the new copy is dropped
        r = subprocess.run(["sh", "-c", script], input=payload, capture_output=True, timeout=30)
        assert r.returncode == 0 and r.stdout == b'{"op": "start"}\nhi\n', r
        assert sorted(os.listdir(base)) == [tiny.id, *([f"{tiny.id}.tar.gz"] if keep else [])]
        if keep:  # what a host ships on to its children is the stream it received
            with open(runtime.packed(os.path.join(base, tiny.id)), "rb") as f:
                assert f.read() == payload[16:]
        assert sorted(os.listdir(os.path.join(base, tiny.id))) == [runtime.MARK, "hello"]
