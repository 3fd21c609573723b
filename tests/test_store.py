"""gproc.store: manifests, the content-addressed store and views, and that staging stays inside its root."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gproc.errors import StagingError
from gproc.store import Entry, Store, View, check_path, link_placer, parse_manifest

H = hashlib.sha256(b"hello\n").hexdigest()
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to another user)")


def f(path: str, data: bytes = b"hello\n", mode: int = 0o644) -> list[object]:
    return ["f", path, hashlib.sha256(data).hexdigest(), len(data), mode]


def put(store: Store, data: bytes, executable: bool = False, chunk: int = 3) -> str:
    h = hashlib.sha256(data).hexdigest()
    inc = store.begin(h, len(data), executable, "t")
    done = False
    for off in range(0, max(len(data), 1), chunk):
        done = store.write(inc, off, data[off : off + chunk])
    assert done
    return h


# ---- manifests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["rel/x", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0b", "/" + "x" * 256, "/" + "a/" * 2100 + "b", 7, None],
)
def test_bad_paths_are_refused(path: object) -> None:
    with pytest.raises(StagingError):
        check_path(path)
    with pytest.raises(StagingError):
        parse_manifest([["f", path, H, 6, 0o644]])


def test_manifest_entries_are_checked() -> None:
    ok = parse_manifest([f("/usr/bin/prog"), ["l", "/usr/bin/p", "prog"], ["d", "/home/u", 0o755]])
    assert [e.kind for e in ok] == ["f", "l", "d"]
    for bad in (
        [["f", "/x", "NOTAHASH", 6, 0o644]],
        [["f", "/x", H, -1, 0o644]],
        [["f", "/x", H, 6, 0o17777]],
        [["f", "/x", H, True, 0o644]],
        [["l", "/x", ""]],
        [["q", "/x"]],
        [["f", "/", H, 6, 0o644]],
        "not a list",
        [["f", "/x", H, 6]],
    ):
        with pytest.raises(StagingError):
            parse_manifest(bad)


def test_conflicts_and_entries_inside_files_or_links() -> None:
    assert len(parse_manifest([f("/x"), f("/x")])) == 1  # the same entry twice is one entry
    with pytest.raises(StagingError, match="conflicting"):
        parse_manifest([f("/x"), f("/x", b"other")])
    with pytest.raises(StagingError, match="inside a link"):
        parse_manifest([["l", "/lib", "usr/lib"], f("/lib/libc.so.6")])
    with pytest.raises(StagingError, match="inside a file"):
        parse_manifest([f("/a"), ["d", "/a/b", 0o755]])


def test_absolute_targets_become_relative() -> None:
    (e,) = parse_manifest([["l", "/usr/lib64/ld.so", "/lib/x86_64-linux-gnu/ld.so"]])
    assert e.target == "../../lib/x86_64-linux-gnu/ld.so"
    (e,) = parse_manifest([["l", "/lib64", "/../../usr/lib64"]])  # '..' at / stays at / (as on the client)
    assert e.target == "usr/lib64"


@pytest.mark.parametrize(
    "links",
    [
        [["l", "/a", ".."]],
        [["l", "/d/e", "../../x"]],
        [["l", "/a/b/c", "../../.."], ["l", "/z", "a/b/c/.."]],  # escapes only through another link
        [["l", "/loop", "loop2"], ["l", "/loop2", "loop"]],
    ],
)
def test_escaping_links_are_refused(links: list[list[object]]) -> None:
    with pytest.raises(StagingError, match="outside the bundle root"):
        parse_manifest(links)


# ---- the store ----------------------------------------------------------------------------------


def test_receive_verify_and_store_atomically(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "bin"))
    data = os.urandom(1000)
    h = hashlib.sha256(data).hexdigest()
    assert not store.has(h, len(data))
    inc = store.begin(h, len(data), True, "job1")
    assert not store.write(inc, 0, data[:600])
    assert not store.has(h, len(data)) and os.listdir(store.dir) == [".tmp"]  # nothing half-written
    with pytest.raises(StagingError, match="out of order"):
        store.write(inc, 0, data[600:])
    assert store.write(inc, 600, data[600:])
    assert store.has(h, len(data)) and not store.has(h, len(data) + 1)
    p = store.path(h, True)
    assert Path(p).read_bytes() == data and stat.S_IMODE(os.stat(p).st_mode) == 0o555
    assert os.listdir(store.tmp) == []
    # the other mode is a copy made on demand, never a second transfer
    q = store.ensure_variant(h, len(data), False)
    assert Path(q).read_bytes() == data and stat.S_IMODE(os.stat(q).st_mode) == 0o444


def test_corrupted_file_never_enters_the_store(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "bin"))
    inc = store.begin(H, 6, False, "j")
    with pytest.raises(StagingError, match="hash mismatch"):
        store.write(inc, 0, b"HELLO\n")
    store.abort(inc)
    assert not store.has(H, 6) and os.listdir(store.tmp) == []
    with pytest.raises(StagingError, match="not in the store"):
        store.ensure_variant(H, 6, False)


def test_empty_file(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "bin"))
    h = put(store, b"")
    assert store.has(h, 0) and Path(store.path(h, False)).read_bytes() == b""


def test_bin_root_others_can_write_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "bin"
    root.mkdir(mode=0o777)
    os.chmod(root, 0o777)
    with pytest.raises(StagingError, match="writable by others"):
        Store(str(root)).ensure()
    os.chmod(root, 0o755)
    (root / "store").symlink_to(tmp_path)
    with pytest.raises(StagingError, match="not a directory"):
        Store(str(root)).ensure()


# ---- views --------------------------------------------------------------------------------------


def stage(tmp_path: Path, manifest: list[list[object]], files: dict[str, bytes]) -> Path:
    store = Store(str(tmp_path / "bin"))
    for data in files.values():
        put(store, data, executable=True)
        put(store, data, executable=False)
    view = tmp_path / "view"
    view.mkdir()
    with View(str(view)) as v:
        v.build(parse_manifest(manifest), link_placer(store))
    return view


def test_view_mirrors_paths_modes_and_links(tmp_path: Path) -> None:
    prog, lib = b"\x7fELF program", b"\x7fELF lib"
    manifest = [
        f("/usr/bin/prog", prog, 0o755),
        f("/usr/lib/x/libc.so.6", lib, 0o644),
        ["l", "/lib", "usr/lib"],
        ["l", "/usr/bin/p", "/usr/bin/prog"],
        ["d", "/home/u/work", 0o750],
    ]
    view = stage(tmp_path, manifest, {"p": prog, "l": lib})
    assert (view / "usr/bin/prog").read_bytes() == prog
    assert stat.S_IMODE(os.stat(view / "usr/bin/prog").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(view / "usr/lib/x/libc.so.6").st_mode) == 0o444
    assert os.readlink(view / "usr/bin/p") == "prog"  # absolute target made relative to the view
    assert (view / "lib/x/libc.so.6").read_bytes() == lib
    assert os.stat(view / "usr/bin/prog").st_nlink >= 2  # a hard link to the store, not a copy
    assert stat.S_IMODE(os.stat(view / "home/u/work").st_mode) == 0o750


@as_root
def test_view_directories_belong_to_the_job_user_files_do_not(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "bin"))
    put(store, b"hello\n")
    view = tmp_path / "view"
    view.mkdir()
    with View(str(view)) as v:
        v.build(parse_manifest([f("/a/b/hello"), ["d", "/home/u", 0o755]]), link_placer(store))
        v.give(65534, 65534)
    for d in (view, view / "a", view / "a/b", view / "home/u"):
        assert (os.stat(d).st_uid, os.stat(d).st_gid) == (65534, 65534), d
    assert stat.S_IMODE(os.stat(view).st_mode) == 0o700
    assert os.stat(view / "a/b/hello").st_uid == 0  # shared with the store: read-only, root's


def test_build_never_follows_a_planted_link(tmp_path: Path) -> None:
    """Even if a link appears in the view (a tampering job), staging does not write through it."""
    store = Store(str(tmp_path / "bin"))
    put(store, b"hello\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    view = tmp_path / "view"
    view.mkdir()
    (view / "etc").symlink_to(outside)
    with View(str(view)) as v, pytest.raises(StagingError, match="cannot stage under /etc"):
        v.build(parse_manifest([f("/etc/passwd")]), link_placer(store))
    assert list(outside.iterdir()) == []


# ---- property: arbitrary manifests never write outside the root and never crash -----------------

GOOD_NAMES = st.sampled_from(["a", "b", "lib", "é", "a b", "~", "-", "sentinel"])
PATH_NAMES = st.one_of(GOOD_NAMES, st.sampled_from(["..", ".", "", "x" * 256]))
TARGET_NAMES = st.one_of(GOOD_NAMES, st.sampled_from(["..", ".", "", "\0"]))
PATHS = st.lists(st.one_of(GOOD_NAMES, GOOD_NAMES, PATH_NAMES), min_size=1, max_size=4).map(
    lambda parts: "/" + "/".join(parts)
)
TARGETS = st.tuples(st.booleans(), st.lists(TARGET_NAMES, min_size=1, max_size=6)).map(
    lambda t: ("/" if t[0] else "") + "/".join(t[1])
)
FILES = PATHS.map(f)
LINKS = st.tuples(st.just("l"), PATHS, TARGETS).map(list)
DIRS = st.tuples(st.just("d"), PATHS, st.integers(0, 0o7777)).map(list)
JUNK = st.one_of(
    st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=6),
    st.tuples(st.sampled_from("fld"), st.text(max_size=12), st.text(max_size=12)).map(list),
)
MANIFESTS = st.one_of(
    st.lists(st.one_of(FILES, LINKS, LINKS, DIRS), max_size=8),
    st.lists(st.one_of(FILES, LINKS, DIRS, JUNK), max_size=8),
)


def snapshot(top: Path) -> set[tuple[str, int]]:
    out = set()
    for dirpath, dirs, names in os.walk(top):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            out.add((p, os.lstat(p).st_mtime_ns))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MANIFESTS)
@example([["l", "/lib", "../../sentinel"], f("/lib/a/x")])  # through a link out of the view, into the sentinel
@example([["l", "/a", "/../../sentinel/a"], f("/a/x")])
@example([["l", "/a", "b"], ["l", "/b", "../../sentinel"], f("/a/a/x")])  # through a chain of links
def test_arbitrary_manifests_stay_inside_the_root(tmp_path: Path, manifest: list[object]) -> None:
    jail = tmp_path / "jail"
    jail.mkdir(exist_ok=True)
    store = Store(str(jail / "bin"))
    if not store.has(H, 6):
        put(store, b"hello\n")
        put(store, b"hello\n", executable=True)
    # an escape lands in the sentinel (the view's "../../sentinel") or elsewhere under tmp_path: every
    # name and mtime there outside the view is compared, the store included
    (tmp_path / "sentinel" / "a").mkdir(parents=True, exist_ok=True)
    view = jail / "view"
    before = snapshot(tmp_path)
    try:
        entries = parse_manifest(manifest)
    except StagingError:
        return
    view.mkdir()
    try:
        with View(str(view)) as v:
            try:
                v.build(entries, link_placer(store))
            except StagingError:
                pass

        def outside(snap: set[tuple[str, int]]) -> set[tuple[str, int]]:  # the jail's own mtime moves with view
            return {(p, t) for p, t in snap if p not in (str(jail), str(view)) and not p.startswith(str(view) + "/")}

        assert outside(snapshot(tmp_path)) == outside(before)
        for dirpath, dirs, names in os.walk(view):
            for n in dirs + names:
                p = os.path.join(dirpath, n)
                assert os.path.realpath(p).startswith(str(view) + "/") or os.path.realpath(p) == str(view), p
    finally:
        import shutil

        shutil.rmtree(view, ignore_errors=True)


def test_entry_round_trip() -> None:
    for e in (Entry("f", "/x", H, 6, 0o755), Entry("l", "/y", target="x"), Entry("d", "/z", mode=0o700)):
        assert parse_manifest([e.to_wire()]) == [e]


# ---- a bounded store ------------------------------------------------------------------------------


def names_in(store: Store) -> set[str]:
    return {n for n in os.listdir(store.dir) if not n.startswith(".")}


def test_bounded_store_evicts_least_recently_used_files_no_job_uses(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "bin"), max_bytes=100)
    a, b = put(store, b"a" * 40), put(store, b"b" * 40)
    store.pin("job1", [store.name(a, False)], uid=1000)
    store.touch([store.name(b, False)])  # a is the least recently used, but in use: b goes
    c = put(store, b"c" * 40)
    assert names_in(store) == {store.name(a, False), store.name(c, False)}
    assert store.used_bytes() == 80 and store.usage() == {1000: 40, -1: 40}
    store.unpin("job1")
    store.touch([store.name(a, False)])  # a used more recently than c now: c goes
    d = put(store, b"d" * 40)
    assert names_in(store) == {store.name(a, False), store.name(d, False)}


def test_bounded_store_refuses_what_cannot_fit_in_one_line(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "bin"), max_bytes=100)
    a = put(store, b"a" * 60)
    store.pin("job1", [store.name(a, False)], uid=1000)
    with pytest.raises(StagingError, match=r"^No space left in the store .*60 are used by running jobs") as e:
        put(store, b"b" * 60)
    assert "\n" not in str(e.value)
    with pytest.raises(StagingError, match=r"^No space left in the store .*--store-max is 100"):
        put(store, b"x" * 101)
    assert names_in(store) == {store.name(a, False)}, "nothing is evicted for what cannot fit anyway"
    assert os.listdir(store.tmp) == [] and store.used_bytes() == 60


def test_bounded_store_counts_files_from_before_and_in_flight(tmp_path: Path) -> None:
    put(Store(str(tmp_path / "bin")), b"old" * 20)  # 60 bytes from an earlier run of the daemon
    store = Store(str(tmp_path / "bin"), max_bytes=100)
    data = b"n" * 30
    inc = store.begin(hashlib.sha256(data).hexdigest(), len(data), False, "t")  # reserved while it arrives
    assert store.used_bytes() == 90
    big = hashlib.sha256(b"m" * 80).hexdigest()
    with pytest.raises(StagingError, match="No space left"):  # the old file could go, the arriving one not
        store.begin(big, 80, False, "t")
    assert len(names_in(store)) == 1, "nothing is evicted when evicting would not make room"
    store.abort(inc)
    store.abort(store.begin(big, 80, False, "t"))  # now it fits, once the old file is gone
    assert store.used_bytes() == 0 and names_in(store) == set()


def test_manifests_are_parsed_once_per_content_and_bad_ones_every_time() -> None:
    from gproc.store import Manifests

    m = Manifests(kept=2)
    one = [["d", "/", 0o755], ["f", "/bin/x", "a" * 64, 3, 0o755]]
    first = m.parse(one)
    assert m.parse([list(e) for e in one]) is first  # an equal manifest (another copy): the same parse
    assert m.parse([["d", "/", 0o700]]) is not first
    m.parse([["d", "/", 0o711]])
    assert m.parse(one) is not first  # the least recently used fell out (kept=2)
    assert m.parse(one) == first
    bad = [["f", "/../x", "a" * 64, 3, 0o755]]
    for _ in range(2):  # refused each time, never kept
        with pytest.raises(StagingError):
            m.parse(bad)
