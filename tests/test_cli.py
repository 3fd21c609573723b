"""Command-line parsing: seed switches, long forms, switches before or after the mode."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from gproc.address import Address, parse_address, parse_address_list
from gproc.cli import split_argv
from gproc.errors import UsageError
from gproc.local import NODES_PER_WORKER, layout, workers


def _split(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    line = split_argv(argv)
    return line.switches, line.mode.name if line.mode else None, line.pos


def test_seed_switches_before_and_after_mode() -> None:
    sw, mode, pos = _split(["-myParent=master", "s", "-myId", "hostname hostbase", "-debug=3"])
    assert mode == "s" and pos == []
    assert sw == ["--parent=master", "--id", "hostname hostbase", "--debug=3"]


def test_exec_command_is_verbatim() -> None:
    sw, mode, pos = _split(["e", "-b", "./.", "grep", "-r", "-f", "x", "--json"])
    assert mode == "e" and sw == ["-b"] and pos == ["./.", "grep", "-r", "-f", "x", "--json"]
    sw, mode, pos = _split(["-w", "n[1-4]", "e", "ls", "-l"])
    assert sw == ["-w", "n[1-4]"] and pos == ["ls", "-l"]


def test_unknown_mode_and_missing_value() -> None:
    with pytest.raises(UsageError, match="unknown mode"):
        split_argv(["frobnicate"])
    with pytest.raises(UsageError, match="needs a value"):
        split_argv(["e", "-w"])


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("slave1", Address("slave1", 6666)),
        ("10.0.0.1:7000", Address("10.0.0.1", 7000)),
        ("::1", Address("::1", 6666)),
        ("[::1]:7000", Address("::1", 7000)),
        ("[fe80::1%eth0]", Address("fe80::1%eth0", 6666)),
    ],
)
def test_addresses(text: str, addr: Address) -> None:
    assert parse_address(text) == addr


@pytest.mark.parametrize("bad", ["", "[::1", "host:port", "host:99999", "[::1]x"])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_address(bad)


def test_parent_with_fallbacks() -> None:
    assert parse_address_list("a:1,b") == [Address("a", 1), Address("b", 6666)]


def test_layout_is_balanced_and_levelled() -> None:
    p = layout(64, 4)
    assert p[:4] == [-1] * 4 and p[4:8] == [0, 1, 2, 3] and p[20] == 4
    assert all(q < i for i, q in enumerate(p))
    p2 = layout(64, 8)
    assert p2.count(-1) == 8 and max(p2.count(i) for i in range(8)) == 7


def test_local_workers_bound_nodes_per_process() -> None:
    # small clusters: one process per 256 nodes, at most twice the cores
    assert [workers(n, 32, 2) for n in (1, 64, 256, 257, 1024, 2048)] == [1, 1, 1, 2, 4, 4]
    # large ones: never more than NODES_PER_WORKER nodes in a process, while the master's children allow
    for n in (4000, 10000, 20000):
        w = workers(n, 64, 2)
        assert w == math.ceil(n / NODES_PER_WORKER) and n / w <= NODES_PER_WORKER
    assert workers(10000, 4, 2) == 4  # a process hosts whole top subtrees: only 4 of them here
    assert workers(10000, 32, 8) == 16


@pytest.mark.parametrize(
    "args",
    [
        ["e"],
        ["e", "3-1", "true"],
        ["-bogus", "e"],
        ["up"],
        ["up", "--local", "4", "--fanout", "0"],
        ["up", "--local", "4", "--procs", "-3"],
        ["--port", "notanumber", "m"],
        ["-p=maybe", "s"],
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], tmp_path: object) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gproc", *args],
        capture_output=True,
        text=True,
        env={"GPROC_MASTER": f"{tmp_path}/none", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2, (args, r.stderr)
    assert r.stderr.startswith("gproc: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_no_master_is_one_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gproc", "e", "./.", "true"],
        capture_output=True,
        text=True,
        env={"GPROC_MASTER": "/nonexistent/g", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 255 and r.stderr.count("\n") == 1 and "cannot reach the master" in r.stderr


def test_kill_signal_is_not_a_gproc_switch() -> None:
    from gproc.modes.procs import parse_signal

    for args, sig in (
        (["kill", "-9", "17"], "-9"),
        (["kill", "-KILL", "17"], "-KILL"),
        (["kill", "-SIGUSR1", "17"], "-SIGUSR1"),
    ):
        sw, mode, pos = _split(args)
        assert mode == "kill" and sw == [] and pos == [sig, "17"]
    sw, mode, pos = _split(["--json", "kill", "-s", "HUP", "%3"])
    assert sw == ["--json", "-s", "HUP"] and pos == ["%3"]
    assert parse_signal("-9") == 9 and parse_signal("KILL") == 9 and parse_signal("-SIGTERM") == 15
    assert parse_signal("usr1") == 10
    for bad in ("-99", "-NOPE", "SIGNOPE"):
        with pytest.raises(UsageError):
            parse_signal(bad)


def test_gpids_and_job_ids() -> None:
    from gproc.modes.procs import parse_targets

    assert parse_targets(["5", "17"]) == ([5, 17], [])
    assert parse_targets(["%3", "job:4"]) == ([], [3, 4])
    for bad in (["x"], ["%"], ["0"], ["-1"], ["%0"], ["5", "%3"], []):
        with pytest.raises(UsageError):
            parse_targets(bad)


def _help(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "gproc", *args], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout


def test_mode_help_shows_that_modes_switches_only() -> None:
    ps, exec_, up, general = _help("ps", "--help"), _help("e", "-h"), _help("up", "--help"), _help("-h")
    assert "--forest" in ps and "--diff" not in ps and "--local" not in ps
    assert "--diff" in exec_ and "--forest" not in exec_ and "--fanout" not in exec_
    assert "sh -c" in exec_ and "'--' before CMD never uses a shell" in exec_  # the shell rule, stated
    assert "--fanout" in up and "--diff" not in up
    assert "gproc MODE --help" in general and "--keep-bytes" not in general and "--window" not in general


def test_another_modes_switch_is_refused() -> None:
    r = subprocess.run([sys.executable, "-m", "gproc", "ps", "-b"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == "gproc: gproc ps: unrecognized arguments: -b\n"


def test_repeated_w_and_x_accumulate() -> None:
    from gproc.cli import MODE_TABLE

    line = split_argv(["-w", "a", "e", "-w", "b[1-2]", "-x", "b1", "-x", "c", "true"])
    opts = MODE_TABLE["e"].parser.parse_args(line.switches)
    assert (opts.include, opts.exclude, line.pos) == ("a,b[1-2]", "b1,c", ["true"])
    opts = MODE_TABLE["ps"].parser.parse_args(["-w", "a", "-w", "b"])
    assert opts.include == "a,b"


@pytest.mark.parametrize(
    ("argv", "verbatim", "runs"),
    [
        (["hostname; uptime"], False, ["sh", "-c", "hostname; uptime"]),
        (["echo $HOME"], False, ["sh", "-c", "echo $HOME"]),
        (["ls|wc"], False, ["sh", "-c", "ls|wc"]),
        (["ls>x"], False, ["sh", "-c", "ls>x"]),
        (["hostname"], False, ["hostname"]),
        (["/bin/true"], False, ["/bin/true"]),
        (["./my-prog_2.sh"], False, ["./my-prog_2.sh"]),
        (["echo", "a; b"], False, ["echo", "a; b"]),  # several arguments: as given
        (["my prog"], True, ["my prog"]),  # after '--': the program of that name
    ],
)
def test_one_argument_shell_line_runs_in_sh(argv: list[str], verbatim: bool, runs: list[str]) -> None:
    from gproc.modes.exec import command

    assert command(argv, verbatim) == runs


def test_double_dash_marks_the_command_verbatim() -> None:
    line = split_argv(["e", "**", "--", "my prog"])
    assert line.verbatim and line.pos == ["**", "my prog"]
    line = split_argv(["e", "**", "my prog"])
    assert not line.verbatim and line.pos == ["**", "my prog"]


def test_a_switch_takes_a_value_in_every_mode_or_in_none() -> None:
    """split_argv reads the token after a switch given before the mode by every mode's rules at once."""
    from argparse import _StoreTrueAction

    from gproc.cli import MODE_TABLE

    valued = set().union(*(m.value_switches for m in MODE_TABLE.values()))
    flags = {
        s
        for m in MODE_TABLE.values()
        for a in m.parser._actions
        if isinstance(a, _StoreTrueAction)
        for s in a.option_strings
    }
    assert valued and flags and not valued & flags


def test_modes_do_not_import_the_cli() -> None:
    """cli imports the modes; the modes and their shared switches never import cli (no circle)."""
    import ast
    import pathlib

    import gproc

    root = pathlib.Path(gproc.__file__).parent
    for path in [root / "switches.py", root / "daemonconfig.py", *sorted((root / "modes").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import | ast.ImportFrom) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            assert "gproc.cli" not in names and module != "gproc.cli", path
            assert not (module == "gproc" and "cli" in names), path


@pytest.mark.parametrize(
    ("argv", "switches", "pos"),
    [
        (["cp", "-rp", "**", "a", "b"], ["--recursive", "--preserve"], ["**", "a", "b"]),
        (["cp", "-R", "-w", "n[1-2]", "a", "b"], ["--recursive", "-w", "n[1-2]"], ["a", "b"]),
        (["gather", "-r", "**", "a", "d"], ["--recursive"], ["**", "a", "d"]),
        (["tail", "-n", "2", "-f", "**", "x"], ["--lines", "2", "--follow"], ["**", "x"]),
        (["tail", "-fn", "3", "**", "x"], ["--follow", "--lines", "3"], ["**", "x"]),
        (["grep", "-iv", "err", "**", "x"], ["--ignore-case", "--invert"], ["err", "**", "x"]),
        (["e", "-n", "**", "true"], ["-n"], ["**", "true"]),  # exec's own -n: no stdin
        (["-r", "/x", "e", "**", "true"], ["--root", "/x"], ["**", "true"]),  # the seed's -r, before a mode
    ],
)
def test_a_modes_own_short_switches(argv: list[str], switches: list[str], pos: list[str]) -> None:
    """cp's -r/-p, tail's -n/-f, grep's -i/-v: the mode's own after the mode (bundled or not), not the
    seed's -r ROOT, -p, -f FILES, nor exec's -n."""
    from gproc.cli import MODE_TABLE

    line = split_argv(argv)
    assert (line.switches, line.pos) == (switches, pos)
    assert line.mode is not None
    MODE_TABLE[line.mode.name].parser.parse_args(line.switches)  # and the mode's parser takes them


def test_file_modes_help_and_refusals() -> None:
    cat, tail, cp = _help("cat", "--help"), _help("tail", "-h"), _help("cp", "--help")
    assert "--agg" in cat and "--edges" in cat and "--follow" not in cat and "--diff" not in cat
    assert "--follow" in tail and "-n K" in tail and "--agg" not in tail and "--recursive" not in tail
    assert "--preserve" in cp and "--agg" not in cp
    for argv, err in (
        (["tail", "**", "/x", "-n"], "gproc: -n needs a value\n"),
        (["cat", "-f", "**", "/x"], "gproc: gproc cat: unrecognized arguments: --files\n"),
    ):
        r = subprocess.run([sys.executable, "-m", "gproc", *argv], capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (2, err)
