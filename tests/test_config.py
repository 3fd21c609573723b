"""The configuration file's reading (pure: a parsed document in, switch values out) and the units."""

from __future__ import annotations

import pathlib
import shutil

import pytest

from gproc import config
from gproc.errors import UsageError


def test_top_level_then_the_modes_table_and_seed_names() -> None:
    doc = {
        "key": "/k",
        "binRoot": "/b",
        "port": 7000,
        "node": {"myParent": "head:7000", "bin-root": "/nb", "heartbeat": 2},
        "master": {"listen": "0.0.0.0:7000", "state": "/s"},
    }
    assert config.settings(doc, "node") == {
        "key": "/k", "bin_root": "/nb", "port": 7000, "parent": "head:7000", "heartbeat": 2.0
    }  # fmt: skip
    assert config.settings(doc, "master") == {
        "key": "/k", "bin_root": "/b", "port": 7000, "listen": "0.0.0.0:7000", "state": "/s"
    }  # fmt: skip
    assert config.settings({"launch": {"hosts": "n[1-4]", "fanout": 4}}, "launch") == {"ssh": "n[1-4]", "fanout": 4}
    later = {"store-max": 1 << 30, "keep_bytes": 1 << 20, "quiet": 0, "hold": 0.5}  # switches newer than the file
    assert config.settings(later, "node") == {"store_max": 1 << 30, "keep_bytes": 1 << 20, "quiet": 0.0, "hold": 0.5}


@pytest.mark.parametrize(
    ("doc", "msg"),
    [
        ({"prent": "x"}, "unknown setting 'prent'"),
        ({"node": {"fanot": 2}}, "unknown setting 'fanot' in [node]"),
        ({"port": "6666"}, "port must be an integer"),
        ({"port": True}, "port must be an integer"),
        ({"heartbeat": "1s"}, "heartbeat must be a number"),
        ({"node": ["x"]}, "[node] must be a table"),
    ],
)
def test_bad_settings_are_one_clear_error(doc: dict[str, object], msg: str) -> None:
    with pytest.raises(UsageError) as e:
        config.settings(doc, "node", "g.toml")
    assert msg in str(e.value) and str(e.value).startswith("g.toml: ")


class Opts:
    parent: str | None = None
    port: int | None = None
    name: str | None = "cli"


def test_a_switch_beats_the_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text('name = "fromfile"\nport = 7001\n[node]\nparent = "head"\n')
    opts = Opts()
    assert config.apply(opts, {"name"}, "node", str(f)) == str(f)
    assert (opts.name, opts.port, opts.parent) == ("cli", 7001, "head")


def test_units_run_this_gproc_with_its_file() -> None:
    u = config.unit("node", "/etc/x.toml", exe=["/usr/bin/python3", "-m", "gproc"])
    assert "ExecStart=/usr/bin/python3 -m gproc s --config /etc/x.toml\n" in u
    assert "[Install]\nWantedBy=multi-user.target\n" in u and "Restart=on-failure" in u
    assert "StateDirectory=gproc" in config.unit("master")


def test_a_bad_file_is_one_line_from_the_command(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    for text, msg in (
        ("port = \n", "not valid TOML"),
        ("[node]\nparnet = 'x'\n", "unknown setting 'parnet' in [node]"),
    ):
        f = tmp_path / "g.toml"
        f.write_text(text)
        r = subprocess.run([sys.executable, "-m", "gproc", "s", "--config", str(f)], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr
    env = {"GPROC_CONFIG": str(tmp_path / "missing.toml"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "gproc", "m"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "cannot read the configuration" in r.stderr, r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    for mode, letter in (("node", "s"), ("master", "m")):
        unit = subprocess.run([sys.executable, "-m", "gproc", letter, "--print-unit"], capture_output=True, text=True)
        assert unit.returncode == 0, unit.stderr
        f = tmp_path / f"gproc-{mode}.service"
        f.write_text(unit.stdout)
        r = subprocess.run(["systemd-analyze", "verify", str(f)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr  # an unknown key is only a warning there
