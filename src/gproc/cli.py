"""The ``gproc`` command: parses switches (seed single-dash forms and GNU long forms) and prints.

Everything it does goes through the Python API (``gproc.client``, ``gproc.local``, ``gproc.daemon``);
errors become one line on stderr and an exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from gproc import client, platform, postfix
from gproc.address import Address, parse_address, parse_address_list
from gproc.errors import GprocError, UsageError

MODES = {
    "m": "master", "master": "master",
    "s": "node", "node": "node", "slave": "node", "worker": "node",
    "e": "exec", "exec": "exec",
    "i": "info", "info": "info",
    "up": "up", "down": "down", "keygen": "keygen", "ping": "ping",
    "_worker": "_worker",
}  # fmt: skip

# seed switch -> long form; the seed's booleans take an optional "=value"
SEED = {
    "-myParent": "--parent", "-myId": "--id", "-myAddress": "--address", "-cmdport": "--port",
    "-defaultMasterUDS": "--socket", "-binRoot": "--bin-root", "-r": "--root", "-f": "--files",
    "-localbin": "--localbin", "-p": "--private", "-debug": "--debug",
}  # fmt: skip
BOOL_OPTIONAL = {"--localbin", "--private"}

USAGE = """\
usage: gproc [switches] MODE [args]
  m | master                      start the master (client socket -defaultMasterUDS, TCP -cmdport)
  s | node | slave | worker       start a node daemon (-myParent, -myId, -myAddress)
  e | exec NODES CMD [ARG...]     run CMD on NODES (tree path like ./. 1/. **, or -w NODESET)
  i | info [NODES]                show the tree, every level
  ping [NODES]                    a no-op round trip through the tree
  up --local N [--fanout K]       start a master and N nodes on this machine
  down                            stop the local cluster
  keygen [--key FILE]             make the cluster credential
exec switches: -b (gathered), --json, -w NODESET, -x NODESET, --path SPEC, --timeout S,
  --export=ALL|NONE|VAR[=VAL],..., -f FILE,DIR,DIR/.  -r ROOT  -localbin  -p=false
  (CMD, its ELF interpreter and libraries are shipped and run from each node's -binRoot)
seed switches: -myParent -myId -myAddress -cmdport -defaultMasterUDS -binRoot -r -f -localbin -p -debug
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _switch_parser() -> _Parser:
    p = _Parser(prog="gproc", add_help=False, allow_abbrev=False)
    a = p.add_argument
    a("-h", "--help", action="store_true")
    a("--version", action="store_true")
    a("--parent")
    a("--id")
    a("--address")
    a("--name")
    a("--port", type=int, default=None)
    a("--socket")
    a("--bin-root", default="/tmp/xproc")
    a("--root", default="/")
    a("--files")
    a("--localbin", type=_bool, nargs="?", const=True, default=False)
    a("--private", type=_bool, nargs="?", const=True, default=True)
    a("--debug", type=int, default=0)
    a("--key")
    a("--force", action="store_true")
    a("--listen")
    a("--state")
    a("--ready-file")
    a("--heartbeat", type=float)
    a("--dead-after", type=float)
    a("--json", action="store_true")
    a("-b", "--gather", action="store_true")
    a("-w", dest="include")
    a("-x", dest="exclude")
    a("--path")
    a("--timeout", type=float)
    a("--export", default="ALL")
    a("--local", type=int)
    a("--fanout", type=int, default=32)
    a("--procs", type=int)
    a("--prefix", default="node")
    a("--ipv6", action="store_true")
    a("--window", type=float, default=0.05)
    return p


VALUE_OPTIONS = {
    "--parent", "--id", "--address", "--name", "--port", "--socket", "--bin-root", "--root", "--files",
    "--debug", "--key", "--listen", "--state", "--ready-file", "--heartbeat", "--dead-after", "-w", "-x",
    "--path", "--timeout", "--export", "--local", "--fanout", "--procs", "--prefix", "--window",
}  # fmt: skip


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on", "t"):
        return True
    if v.lower() in ("0", "false", "no", "off", "f"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {v!r}")


def _normalize(tok: str) -> str:
    name, eq, val = tok.partition("=")
    long = SEED.get(name)
    if long is None and name.startswith("-") and not name.startswith("--") and len(name) > 2:
        long = "-" + name  # single-dash long forms: -json, -key …
    return (long + eq + val) if long else tok


def split_argv(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """Split into (switches, mode, positionals). Switches may come before or after the mode; for
    ``exec`` everything from the command on is the command's own and is left untouched."""
    switches: list[str] = []
    mode: str | None = None
    pos: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--":
            pos.extend(args[i + 1 :])
            break
        if tok.startswith("-") and len(tok) > 1:
            norm = _normalize(tok)
            name = norm.partition("=")[0]
            switches.append(norm)
            if "=" not in norm and name in VALUE_OPTIONS:
                if i + 1 >= len(args):
                    raise UsageError(f"{tok} needs a value")
                switches.append(args[i + 1])
                i += 1
        elif mode is None:
            mode = MODES.get(tok)
            if mode is None:
                raise UsageError(f"unknown mode {tok!r} (try 'gproc -h')")
        elif mode == "exec" and len(pos) >= _exec_node_args(switches):
            pos.extend(args[i:])  # the command and its arguments, verbatim
            break
        else:
            pos.append(tok)
        i += 1
    return switches, mode, pos


def _exec_node_args(switches: list[str]) -> int:
    """How many positionals exec takes before the command: the node spec, unless -w/-x/--path."""
    return 0 if any(s.partition("=")[0] in ("-w", "-x", "--path") for s in switches) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gproc`` command."""
    try:
        switches, mode, pos = split_argv(sys.argv[1:] if argv is None else argv)
        opts = _switch_parser().parse_args(switches)
        if opts.version:
            from gproc import __version__

            print(f"gproc {__version__}")
            return 0
        if opts.help or mode is None:
            print(USAGE, end="")
            return 0 if opts.help else 2
        return int(_dispatch(mode, opts, pos))
    except GprocError as e:
        print(f"gproc: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("gproc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


def _dispatch(mode: str, opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import daemon

    if mode == "keygen":
        from gproc import credential

        path = credential.keygen(credential.key_path(opts.key), force=opts.force)
        print(f"cluster credential written to {path}")
        return 0
    if mode == "master":
        daemon.setup_logging(opts.debug)
        return platform.run(daemon.serve_master(*_master_config(opts)))
    if mode == "node":
        daemon.setup_logging(opts.debug)
        return platform.run(daemon.serve_node(_node_config(opts)))
    if mode == "_worker":
        daemon.setup_logging(opts.debug)
        if len(pos) != 1:
            raise UsageError("_worker takes a spec file")
        return daemon.serve_many_file(pos[0])
    if mode == "up":
        return _up(opts)
    if mode == "down":
        from gproc import local

        local.down(opts.socket)
        print("local cluster stopped")
        return 0
    if mode == "info":
        return platform.run(_info(opts, pos))
    if mode == "ping":
        return platform.run(_ping(opts, pos))
    if mode == "exec":
        return platform.run(_exec(opts, pos))
    raise UsageError(f"mode {mode} is not available")


# ---- daemons ---------------------------------------------------------------------------------------


def _eval(expr: str | None, default: str | None) -> str | None:
    return postfix.evaluate(expr) if expr else default


def _hostname_id() -> str:
    host = socket.gethostname()
    try:
        return postfix.evaluate("hostname hostbase")
    except GprocError:
        return "".join(c if c.isalnum() or c == "_" else "_" for c in host.split(".")[0])[:64] or "0"


def _key(opts: argparse.Namespace) -> str:
    from gproc import credential

    return credential.key_path(opts.key)


def _master_config(opts: argparse.Namespace) -> tuple[Any, str, str, str | None]:
    from gproc.overlay import NodeConfig

    port = opts.port if opts.port is not None else 6666
    if opts.listen:
        listen = parse_address(opts.listen, port)
    else:
        host = _eval(opts.address, None)
        listen = Address(host or "", port)
    name = opts.name or "master"
    state = opts.state or ("/var/lib/gproc" if os.geteuid() == 0 else os.path.expanduser("~/.local/state/gproc"))
    cfg = NodeConfig(name=name, id="0", listen=listen, key=_key(opts), bin_root=opts.bin_root)
    _timing(cfg, opts)
    return cfg, client.socket_path(opts.socket), state, opts.ready_file


def _node_config(opts: argparse.Namespace) -> Any:
    from gproc.overlay import NodeConfig

    port = opts.port if opts.port is not None else 6666
    parent = _eval(opts.parent, os.environ.get("GPROC_PARENT"))
    if not parent:
        raise UsageError("a node needs -myParent (its parent's address, or a postfix expression)")
    node_id = _eval(opts.id, None) or _hostname_id()
    if opts.listen:
        listen = parse_address(opts.listen, port)
    else:
        listen = Address(_eval(opts.address, None) or socket.gethostname(), port)
    name = opts.name or socket.gethostname()
    cfg = NodeConfig(
        name=name,
        id=node_id,
        parents=parse_address_list(parent, port),
        listen=listen,
        key=_key(opts),
        bin_root=opts.bin_root,
    )
    _timing(cfg, opts)
    return cfg


def _timing(cfg: Any, opts: argparse.Namespace) -> None:
    if opts.heartbeat:
        cfg.heartbeat = opts.heartbeat
    if opts.dead_after:
        cfg.dead_after = opts.dead_after


def _up(opts: argparse.Namespace) -> int:
    from gproc import local

    if not opts.local:
        raise UsageError("only local clusters for now: gproc up --local N")
    t0 = time.monotonic()
    rec = local.up(
        opts.local,
        fanout=opts.fanout,
        socket=opts.socket,
        procs=opts.procs,
        prefix=opts.prefix,
        ipv6=opts.ipv6,
        key=opts.key,
        heartbeat=opts.heartbeat,
        dead_after=opts.dead_after,
        timeout=opts.timeout,
        debug=opts.debug,
    )
    print(
        f"{rec.nodes} nodes up in {time.monotonic() - t0:.1f}s "
        f"(fanout {opts.fanout}, {len(rec.procs) - 1} node processes); master socket {rec.socket}"
    )
    if rec.socket != client.DEFAULT_SOCKET:
        print(f"export GPROC_MASTER={rec.socket}")
    return 0


# ---- clients ---------------------------------------------------------------------------------------


async def _info(opts: argparse.Namespace, pos: list[str]) -> int:
    c = client.Cluster(opts.socket)
    info = await c.info()
    rows = info["nodes"]
    if pos or opts.include:
        names = await _selected_names(c, pos[0] if pos else None, opts)
        rows = [r for r in rows if r["name"] in names]
    if opts.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("NAME", "ID", "RANK", "ADDRESS", "PARENT", "LEVEL", "STATE"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        t.add_row(
            "  " * (r["level"] - 1) + r["name"],
            r["id"],
            str(r["rank"]),
            r["address"],
            r["parent"],
            str(r["level"]),
            r["state"],
        )
    up = sum(1 for r in rows if r["state"] == "up")
    Console(width=200, highlight=False).print(t)
    print(f"master {info['master']}: {up} nodes up, {len(rows) - up} lost")
    return 0


async def _selected_names(c: client.Cluster, spec: str | None, opts: argparse.Namespace) -> set[str]:
    r = await c.request("select", nodes=spec, w=opts.include, x=opts.exclude)
    return set(r["names"])


async def _ping(opts: argparse.Namespace, pos: list[str]) -> int:
    c = client.Cluster(opts.socket)
    t0 = time.perf_counter()
    r = await c.ping(pos[0] if pos else None)
    dt = time.perf_counter() - t0
    ok = r["counts"].get("ok", 0)
    if opts.json:
        print(json.dumps({**r, "client_seconds": dt}))
    else:
        other = ", ".join(f"{v} {k}" for k, v in r["counts"].items() if k != "ok")
        print(f"{ok} of {r['targets']} nodes answered in {dt * 1000:.1f} ms" + (f" ({other})" if other else ""))
    return 0 if ok == r["targets"] else 255


def _environment(spec: str) -> dict[str, str]:
    """``--export`` like srun: ALL (default), NONE, or VAR[,VAR=VAL…] (ALL may be one of them)."""
    items = [s for s in spec.split(",") if s]
    env: dict[str, str] = {}
    if "ALL" in items:
        env.update(os.environ)
    for it in items:
        if it in ("ALL", "NONE"):
            continue
        k, eq, v = it.partition("=")
        if eq:
            env[k] = v
        elif k in os.environ:
            env[k] = os.environ[k]
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
    return env


async def _exec(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc.display import Display

    if opts.include or opts.exclude or opts.path:
        nodes, argv = opts.path, pos
    elif pos:
        nodes, argv = pos[0], pos[1:]
    else:
        nodes, argv = None, []
    if not argv:
        raise UsageError("usage: gproc e NODES CMD [ARG...]  or  gproc e -w NODESET CMD [ARG...]")
    c = client.Cluster(opts.socket)
    job = await c.exec(
        argv,
        nodes,
        include=opts.include,
        exclude=opts.exclude,
        env=_environment(opts.export),
        timeout=opts.timeout,
        gather=opts.gather,
        files=[f for f in (opts.files or "").split(",") if f],
        root=opts.root,
        localbin=opts.localbin,
        private=opts.private,
    )
    loop = asyncio.get_running_loop()
    last_int = [0.0]

    def on_sigint() -> None:
        now = time.monotonic()
        sig = signal.SIGKILL if now - last_int[0] < 1.0 else signal.SIGINT
        last_int[0] = now
        job.signal(sig)
        print(f"gproc: sent {signal.Signals(sig).name} to job {job.id}", file=sys.stderr)

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        disp = Display(json_mode=opts.json, gather=opts.gather, window=opts.window)
        await disp.consume(job)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    assert job.exit_status is not None
    return job.exit_status


if __name__ == "__main__":
    sys.exit(main())
