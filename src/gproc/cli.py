"""The ``gproc`` command: parses switches (seed single-dash forms and GNU long forms) and prints.

Everything it does goes through the Python API (``gproc.client``, ``gproc.local``, ``gproc.daemon``);
errors become one line on stderr and an exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

from gproc import client, platform, postfix
from gproc.address import Address, parse_address, parse_address_list
from gproc.errors import GprocError, UsageError

MODES = {
    "m": "master", "master": "master",
    "s": "node", "node": "node", "slave": "node", "worker": "node",
    "e": "exec", "exec": "exec",
    "i": "info", "info": "info",
    "up": "up", "down": "down", "keygen": "keygen", "ping": "ping", "launch": "launch",
    "ps": "ps", "kill": "kill", "wait": "wait", "jobs": "jobs", "output": "output",
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
  e -i NODES                      interactive: each line you type runs on NODES (':help' inside)
  e --batch NODES CMD [ARG...]    run detached: prints the job id and returns
  jobs                            the jobs the master keeps: state, node counts, exit status
  output JOBID                    a job's merged output (-b, --diff, --json as for exec)
  i | info [NODES]                show the tree, every level
  ping [NODES]                    a no-op round trip through the tree
  ps [NODES] [--forest]           every process in the single process space (GPID, NAME, PID, ...)
  kill [-SIG] GPID...|JOBID       signal processes by gpid (routed to their node) or a whole job
  wait GPID...|JOBID              wait for processes or a job to end; exits with their status
                                  (gpids and job ids are one number space; %N or job:N says "job")
  up --local N [--fanout K]       start a master and N nodes on this machine
  launch --ssh HOSTS [--fanout K] start daemons on HOSTS (a hostlist) over ssh, as a tree; a master
                                  here unless one runs (--ssh-command CMD or $GPROC_SSH, --json)
  launch --stop | down            stop what launch started (down: else the local cluster)
  down                            stop the local cluster
  keygen [--key FILE]             make the cluster credential
exec switches: -b (gathered), --diff, --json, -n (no stdin), -w NODESET, -x NODESET, --path SPEC,
  --timeout S, --export=ALL|NONE|VAR[=VAL],..., --window S (live merging), --batch, -i,
  -f FILE,DIR,DIR/.  -r ROOT  -localbin  -p=false
  (CMD, its ELF interpreter and libraries are shipped and run from each node's -binRoot)
daemon switches: --config FILE (else $GPROC_CONFIG, else /etc/gproc/gproc.toml: settings a switch
  does not give), --print-unit (a systemd unit: gproc s --print-unit > /etc/systemd/system/gproc-node.service)
master switches: --gpid-block N (gpids per block, default 64), --collect-every S (block collection),
  --keep-jobs N, --keep-bytes SIZE (retention of job output; SIZE like 500M or 2G)
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
    a("--fanout", type=int, default=16)
    a("--procs", type=int)
    a("--prefix", default="node")
    a("--ipv6", action="store_true")
    a("--window", type=float, default=0.05)
    a("--forest", action="store_true")
    a("-s", "--signal")
    a("--gpid-block", type=int)
    a("--collect-every", type=float)
    a("--node-socket")
    a("--diff", action="store_true")
    a("--batch", action="store_true")
    a("-n", dest="no_stdin", action="store_true")
    a("-i", "--interactive", action="store_true")
    a("--keep-jobs", type=int, default=1000)
    a("--keep-bytes", type=_size, default=1 << 30)
    a("--quiet", type=float)
    a("--hold", type=float)
    a("--ssh")
    a("--ssh-command")
    a("--stop", action="store_true")
    a("--config")
    a("--print-unit", action="store_true")
    return p


VALUE_OPTIONS = {
    "--parent", "--id", "--address", "--name", "--port", "--socket", "--bin-root", "--root", "--files",
    "--debug", "--key", "--listen", "--state", "--ready-file", "--heartbeat", "--dead-after", "-w", "-x",
    "--path", "--timeout", "--export", "--local", "--fanout", "--procs", "--prefix", "--window",
    "-s", "--signal", "--gpid-block", "--collect-every", "--node-socket",
    "--keep-jobs", "--keep-bytes", "--quiet", "--hold", "--ssh", "--ssh-command", "--config",
}  # fmt: skip
SIGNAL_SWITCH = re.compile(r"^-(\d+|(SIG)?[A-Z][A-Z0-9]*)$")  # kill -9, kill -KILL, kill -SIGKILL


def _size(v: str) -> int:
    """A byte count: ``1048576``, ``512K``, ``100M``, ``2G``."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = v.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {v!r}") from None


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
        if mode == "kill" and SIGNAL_SWITCH.match(tok):
            pos.append(tok)  # kill's signal, not a gproc switch
        elif tok.startswith("-") and len(tok) > 1:
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
        parser = _switch_parser()
        opts = parser.parse_args(switches)
        if mode in ("master", "node", "launch"):  # settings from the configuration file, under the switches
            from gproc import config

            given = {a.dest for s in switches if (a := parser._option_string_actions.get(s.partition("=")[0]))}
            config.apply(opts, given, mode, opts.config)
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
    if mode in ("master", "node", "_worker"):  # only daemons load the daemon code (clients start faster)
        from gproc import daemon
    if mode == "keygen":
        from gproc import credential

        path = credential.keygen(credential.key_path(opts.key), force=opts.force)
        print(f"cluster credential written to {path}")
        return 0
    if mode in ("master", "node") and opts.print_unit:
        from gproc import config

        print(config.unit(mode, opts.config), end="")
        return 0
    if mode == "master":
        daemon.setup_logging(opts.debug)
        return platform.run(
            daemon.serve_master(*_master_config(opts), keep_jobs=opts.keep_jobs, keep_bytes=opts.keep_bytes)
        )
    if mode == "node":
        daemon.setup_logging(opts.debug)
        return platform.run(daemon.serve_node(_node_config(opts), opts.ready_file))
    if mode == "_worker":
        daemon.setup_logging(opts.debug)
        if len(pos) != 1:
            raise UsageError("_worker takes a spec file")
        return daemon.serve_many_file(pos[0])
    if mode == "up":
        return _up(opts)
    if mode == "launch":
        from gproc import launchcli

        return launchcli.run(opts, pos)
    if mode == "down":
        from gproc import launch, launchcli, local

        if launch.LaunchRecord.load(client.socket_path(opts.socket)) is not None:
            return launchcli.stop(opts)
        local.down(opts.socket)
        print("local cluster stopped")
        return 0
    if mode == "info":
        return platform.run(_info(opts, pos))
    if mode == "ping":
        return platform.run(_ping(opts, pos))
    if mode == "exec":
        if opts.interactive:
            from gproc import interactive

            nodes, _ = _exec_target(opts, pos, interactive=True)
            return interactive.session(opts, nodes, _environment(opts.export))
        return platform.run(_exec(opts, pos))
    if mode == "ps":
        return platform.run(_ps(opts, pos))
    if mode == "kill":
        return platform.run(_kill(opts, pos))
    if mode == "wait":
        return platform.run(_wait(opts, pos))
    if mode == "jobs":
        return platform.run(_jobs(opts))
    if mode == "output":
        if len(pos) != 1 or not pos[0].lstrip("%").isdigit():
            raise UsageError("usage: gproc output JOBID")
        return platform.run(_output(opts, int(pos[0].lstrip("%"))))
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


def _master_config(opts: argparse.Namespace) -> tuple[Any, str, str, str | None, Any]:
    from gproc.overlay import NodeConfig
    from gproc.pids import PidConfig

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
    pids = PidConfig()
    if opts.gpid_block is not None:
        pids.block = opts.gpid_block
    if opts.collect_every is not None:
        pids.collect_every = opts.collect_every
    pids.__post_init__()
    return cfg, client.socket_path(opts.socket), state, opts.ready_file, pids


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
    sock = opts.node_socket or os.path.join(opts.bin_root, f"{name}.sock")  # relayed client socket
    cfg = NodeConfig(
        name=name,
        id=node_id,
        parents=parse_address_list(parent, port),
        listen=listen,
        key=_key(opts),
        bin_root=opts.bin_root,
        socket=None if sock == "none" else sock,
    )
    _timing(cfg, opts)
    return cfg


def _timing(cfg: Any, opts: argparse.Namespace) -> None:
    if opts.heartbeat:
        cfg.heartbeat = opts.heartbeat
    if opts.dead_after:
        cfg.dead_after = opts.dead_after
    if opts.quiet is not None:
        cfg.quiet = opts.quiet
    if opts.hold is not None:
        cfg.hold = opts.hold


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
        gpid_block=opts.gpid_block,
        collect_every=opts.collect_every,
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


def _exec_target(opts: argparse.Namespace, pos: list[str], interactive: bool = False) -> tuple[str | None, list[str]]:
    """(tree path, command) of an exec command line."""
    if opts.include or opts.exclude or opts.path:
        nodes, argv = opts.path, pos
    elif pos:
        nodes, argv = pos[0], pos[1:]
    else:
        nodes, argv = None, []
    if interactive:
        if argv:
            raise UsageError("gproc e -i takes nodes, not a command: the commands are the lines you type")
        if not (nodes or opts.include):
            raise UsageError("usage: gproc e -i NODES  or  gproc e -i -w NODESET")
    elif not argv:
        raise UsageError("usage: gproc e NODES CMD [ARG...]  or  gproc e -w NODESET CMD [ARG...]")
    return nodes, argv


def _stdin_wanted(opts: argparse.Namespace) -> bool:
    """stdin goes to the job when it is not a terminal (and not -n, and not a batch job)."""
    if opts.no_stdin or opts.batch:
        return False
    try:
        return not os.isatty(0) and os.fstat(0) is not None
    except OSError:
        return False


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def read_stdin(fd: int = 0) -> AsyncIterator[bytes]:
    """The client's stdin in chunks, without blocking the event loop on a pipe or socket."""
    loop = asyncio.get_running_loop()
    watch = True
    while True:
        if watch:
            ready: asyncio.Future[None] = loop.create_future()
            try:
                loop.add_reader(fd, _wake, ready)
            except (OSError, ValueError):  # regular files and /dev/null are always ready
                watch = False
            else:
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
        try:
            data = os.read(fd, client.STDIN_CHUNK)
        except BlockingIOError:
            continue
        except OSError:
            return
        if not data:
            return
        yield data


async def _exec(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc.display import Display

    nodes, argv = _exec_target(opts, pos)
    c = client.Cluster(opts.socket)
    job = await c.exec(
        argv,
        nodes,
        include=opts.include,
        exclude=opts.exclude,
        env=_environment(opts.export),
        timeout=opts.timeout,
        gather=opts.gather or opts.diff,
        stdin=read_stdin() if _stdin_wanted(opts) else None,
        batch=opts.batch,
        files=[f for f in (opts.files or "").split(",") if f],
        root=opts.root,
        localbin=opts.localbin,
        private=opts.private,
    )
    if opts.batch:
        print(json.dumps({"job": job.id, "n": job.nnodes, "absent": job.absent}) if opts.json else job.id)
        return 0
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
        disp = Display(json_mode=opts.json, gather=opts.gather, window=opts.window, diff=opts.diff)
        await disp.consume(job)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    assert job.exit_status is not None
    return job.exit_status


# ---- the process space -------------------------------------------------------------------------------


def parse_signal(tok: str) -> int:
    """``9``, ``KILL``, ``SIGKILL`` (a leading ``-`` allowed) -> signal number."""
    t = tok.lstrip("-")
    if t.isdigit():
        n = int(t)
        if not 0 <= n < 65:
            raise UsageError(f"bad signal {tok!r}")
        return n
    name = t.upper()
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise UsageError(f"unknown signal {tok!r}") from None


def parse_targets(args: list[str]) -> tuple[list[int], list[int]]:
    """(gpids, job ids) from ``GPID…`` and ``%JOB`` / ``job:JOB`` arguments."""
    gpids: list[int] = []
    jobs: list[int] = []
    for a in args:
        text = a[1:] if a.startswith("%") else a[4:] if a.lower().startswith("job:") else None
        try:
            if text is not None:
                jobs.append(int(text))
            else:
                gpids.append(int(a))
        except ValueError:
            raise UsageError(f"not a gpid or job id: {a!r} (gpids are numbers, job ids %N or job:N)") from None
        if (jobs and jobs[-1] <= 0) or (gpids and gpids[-1] <= 0):
            raise UsageError(f"not a gpid or job id: {a!r}")
    if gpids and jobs:
        raise UsageError("give gpids or job ids, not both")
    if not gpids and not jobs:
        raise UsageError("give at least one gpid or job id (%N)")
    return gpids, jobs


def _print_errors(errors: list[dict[str, Any]]) -> None:
    for e in errors:
        print(f"gproc: {e['nodes']}: {e['error']}", file=sys.stderr)


async def _ps(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import psview

    c = client.Cluster(opts.socket)
    rows, errors = await c.ps(pos[0] if pos else opts.path, include=opts.include, exclude=opts.exclude)
    if opts.forest:
        rows = psview.forest(rows)
    if opts.json:
        for r in rows:
            print(json.dumps(r))
    else:
        sys.stdout.write(psview.table(rows, opts.forest))
    _print_errors(errors)
    return 255 if errors else 0


async def _kill(opts: argparse.Namespace, pos: list[str]) -> int:
    sig = parse_signal(opts.signal) if opts.signal else signal.SIGTERM
    args: list[str] = []
    for p in pos:
        if SIGNAL_SWITCH.match(p):
            sig = parse_signal(p)
        else:
            args.append(p)
    gpids, jobs = parse_targets(args)
    c = client.Cluster(opts.socket)
    status = 0
    for job in jobs:
        try:
            r = await c.kill(job=job, sig=sig)
        except GprocError as e:
            print(f"gproc: {e}", file=sys.stderr)
            status = max(status, 1)
            continue
        if opts.json:
            print(json.dumps(r))
        _print_errors(r.get("errors", []))
        if r.get("errors"):
            status = max(status, 1)
    if gpids:
        r = await c.kill(gpids, sig=sig)
        for res in r["results"]:
            if opts.json:
                print(json.dumps(res))
            if res["code"]:
                print(f"gproc: kill {res['gpid']}: {res['error']}", file=sys.stderr)
                status = max(status, 255 if res["code"] == 255 else 1)
    return status


async def _wait(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc.services.procs import NO_STATUS

    gpids, jobs = parse_targets(pos)
    c = client.Cluster(opts.socket)
    status = 0
    results: list[dict[str, Any]] = []
    for job in jobs:
        results.append(await c.wait(job=job))
    if gpids:
        r = await c.wait(gpids)
        if "job" in r:  # a single number that is a job id
            results.append(r)
        else:
            for res in r["results"]:
                code, err = res["code"], res.get("error", "")
                if opts.json:
                    out = {"gpid": res["gpid"], "status": code if code >= 0 else None, "name": res.get("name", "")}
                    print(json.dumps({**out, **({"error": err} if err else {})}))
                if code == NO_STATUS:
                    print(f"gproc: wait {res['gpid']}: ended, {err}", file=sys.stderr)
                elif code < 0 or err:
                    print(f"gproc: wait {res['gpid']}: {err}", file=sys.stderr)
                    status = max(status, 127 if code == -2 else 1 if code < 0 else code)
                else:
                    status = max(status, code)
    for r in results:
        if opts.json:
            print(json.dumps(r))
        elif r["state"] == "lost":
            print(f"gproc: job {r['job']}: running when the master stopped; some nodes never answered", file=sys.stderr)
        status = max(status, int(r["status"] if r["status"] is not None else 255))
    return status


# ---- batch jobs --------------------------------------------------------------------------------------


async def _jobs(opts: argparse.Namespace) -> int:
    rows = await client.Cluster(opts.socket).jobs()
    if opts.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("JOBID", "STATE", "NODES", "OK", "FAILED", "EXIT", "STARTED", "TIME", "COMMAND"):
        t.add_column(col, no_wrap=True)
    now = time.time()
    for r in rows:
        status = "" if r["status"] is None else str(r["status"])
        elapsed = (r["ended"] or now) - r["started"]
        started = time.strftime("%m-%d %H:%M:%S", time.localtime(r["started"]))
        state = r["state"] + (" (batch)" if r["batch"] else "")
        cmd = " ".join(r["argv"])
        t.add_row(
            str(r["id"]), state, str(r["n"]), str(r["ok"]), str(r["failed"]), status, started, f"{elapsed:.1f}s", cmd
        )
    Console(width=200, highlight=False).print(t)
    return 0


async def _output(opts: argparse.Namespace, job_id: int) -> int:
    from gproc.display import Display

    job = await client.Cluster(opts.socket).output(job_id)
    await Display(json_mode=opts.json, gather=opts.gather, window=opts.window, diff=opts.diff).consume(job)
    assert job.exit_status is not None
    return job.exit_status


if __name__ == "__main__":
    sys.exit(main())
