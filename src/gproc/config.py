"""The configuration file (``/etc/gproc/gproc.toml``) and the systemd units that start daemons at boot.

A daemon started without switches (as a unit does) takes its settings from the file: top-level keys
apply to every mode, a ``[node]``, ``[master]`` or ``[launch]`` table to that mode only, and a switch on
the command line always wins. Keys are the long switches without dashes (``bin-root``, ``bin_root``)
or the seed's names (``myParent``, ``binRoot``, ``cmdport``)::

    key = "/etc/gproc/cluster.key"
    binRoot = "/tmp/xproc"
    [node]
    parent = "head hostbase 16 / strcat"   # a postfix expression, or "head:6666"
    [master]
    listen = "0.0.0.0:6666"

The file is ``--config FILE``, else ``$GPROC_CONFIG``, else /etc/gproc/gproc.toml when it exists.
"""

from __future__ import annotations

import os
import shlex
import sys
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from gproc.errors import UsageError

DEFAULT_PATH = "/etc/gproc/gproc.toml"
KINDS = {int: "an integer", float: "a number", str: "a string"}
SECTIONS = {"node": "node", "master": "master", "launch": "launch"}  # mode -> table

# setting -> (switch dest, type); the seed's names map onto the same dests
SETTINGS: dict[str, tuple[str, type]] = {
    "parent": ("parent", str), "id": ("id", str), "address": ("address", str), "name": ("name", str),
    "port": ("port", int), "socket": ("socket", str), "bin_root": ("bin_root", str), "key": ("key", str),
    "cert": ("cert", str), "ca": ("ca", str), "revoked": ("revoked", str), "parent_name": ("parent_name", str),
    "listen": ("listen", str), "state": ("state", str), "heartbeat": ("heartbeat", float),
    "dead_after": ("dead_after", float), "debug": ("debug", int), "fanout": ("fanout", int),
    "ssh": ("ssh", str), "ssh_command": ("ssh_command", str), "node_socket": ("node_socket", str),
    "gpid_block": ("gpid_block", int), "collect_every": ("collect_every", float),
    "keep_jobs": ("keep_jobs", int), "keep_bytes": ("keep_bytes", int), "store_max": ("store_max", int),
    "quiet": ("quiet", float), "hold": ("hold", float), "hosts": ("ssh", str),
    "myparent": ("parent", str), "myid": ("id", str), "myaddress": ("address", str), "cmdport": ("port", int),
    "defaultmasteruds": ("socket", str), "binroot": ("bin_root", str),
}  # fmt: skip


def path(explicit: str | None = None) -> str | None:
    """The configuration file in use, or None when there is none."""
    if explicit:
        return explicit
    env = os.environ.get("GPROC_CONFIG")
    if env:
        return env
    return DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None


def load(file: str) -> dict[str, Any]:
    try:
        with open(file, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read the configuration {file}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{file}: not valid TOML: {e}") from None


def settings(doc: Mapping[str, Any], mode: str, file: str = "gproc.toml") -> dict[str, Any]:
    """The switch values (by dest) that ``doc`` gives ``mode``: its top level, then its mode's table."""
    tables: list[tuple[str, Any]] = [("", {k: v for k, v in doc.items() if k not in SECTIONS.values()})]
    section = SECTIONS.get(mode)
    if section and section in doc:
        tables.append((section, doc[section]))
    out: dict[str, Any] = {}
    for where, items in tables:
        if not isinstance(items, dict):
            raise UsageError(f"{file}: [{where}] must be a table")
        for k, v in items.items():
            norm = k.replace("-", "_").lower()
            if norm not in SETTINGS:
                raise UsageError(f"{file}: unknown setting {k!r}" + (f" in [{where}]" if where else ""))
            dest, kind = SETTINGS[norm]
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, kind) or isinstance(v, bool):
                raise UsageError(f"{file}: {k} must be {KINDS[kind]} (got {v!r})")
            out[dest] = v
    return out


def apply(opts: Any, given: Iterable[str], mode: str, explicit: str | None = None) -> str | None:
    """Fill ``opts`` from the configuration file wherever no switch was ``given`` (dests); the file used."""
    file = path(explicit)
    if file is None:
        return None
    given = set(given)
    for dest, value in settings(load(file), mode, file).items():
        if dest not in given:
            setattr(opts, dest, value)
    return file


UNITS = {
    "node": ("gproc node daemon", "s", ""),
    "master": ("gproc master", "m", "RuntimeDirectory=gproc\nStateDirectory=gproc\n"),
}


def unit(mode: str, config_file: str | None = None, exe: list[str] | None = None) -> str:
    """A systemd unit (``gproc-node.service`` / ``gproc-master.service``) running this gproc."""
    desc, letter, extra = UNITS[mode]
    argv = [*(exe or [sys.executable, "-m", "gproc"]), letter]
    if config_file:
        argv += ["--config", os.path.abspath(config_file)]
    return (
        "[Unit]\n"
        f"Description={desc}\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\nType=simple\n"
        f"ExecStart={shlex.join(argv)}\n"
        "Restart=on-failure\nRestartSec=2\n"
        f"LimitNOFILE=1048576\n{extra}\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
