"""The launch agent: what ``gproc launch --ssh`` runs on each host, and how it starts its children.

``python -m gproc.launchagent`` reads one JSON request on stdin (the ssh session's stdin, so the
cluster credential it carries is never on a command line), starts this host's node daemon detached
(the credential handed over in a memfd, or a 0600 file in a 0700 directory where there is none) and,
meanwhile, its own children the same way over ssh, then prints one JSON line: the outcome of every
host of its subtree. A child that cannot be reached, refuses the login or fails to
start is reported with the reason, and its own children are started from here instead (so one dead
host loses no subtree). ``"op": "stop"`` goes down the same tree and stops what an earlier launch
started on each host (the daemon recorded in the host's launch directory, by pid and start time).

A host with no usable Python with gproc gets gproc's own runtime (``gproc.runtime``: the interpreter,
its loader and libraries, the standard library, gproc and its dependencies), content-addressed under
``runtime.base`` (default ``~/.cache/gproc/runtime/<id>``): the first ssh session runs a few lines of
``sh`` that start the agent with ``python`` when it imports gproc, else with a runtime the host
already holds, else answer that the runtime is needed; then a second session carries the request
line and the runtime as a tar stream, which the host unpacks (``tar``) into a private directory,
renames into place and runs. A host that received the runtime ships that same runtime to its own
children, so the launching machine sends it once per first-level host, not once per host.

A request: ``{"op": "start"|"stop", "name", "id", "children": [{"host", "id", "children"}…], "key"
(PEM), or with per-node certificates "ca" (the CA's certificate, PEM), "cert" and "node_key" (this
host's, PEM; each child entry carries its own), "parent" (address, or absent: the host this ssh session
came from), "parent_port", "parent_name" (with certificates: the name the parent's must hold), "port",
"ssh" (argv), "python", "bin_root", "debug", "hop_timeout", "runtime": {"id", "base", "mode":
"auto"|"always"|"never"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import psutil

from gproc import runtime
from gproc.address import Address

DEFAULT_HOP_TIMEOUT = 30.0  # one ssh login plus one daemon start
DEFAULT_PORT = 6666
SHIP_MODES = ("auto", "always", "never")
NEED = "gproc-needs-its-runtime"  # what the first session says when the host needs the runtime
_NEED_STATUS = 75  # and its exit status (EX_TEMPFAIL)
_NO_GPROC = 76  # the probe's Python has no usable gproc (the next way is tried)
SHIP_EXTRA_TIMEOUT = 120.0  # what a hop may take beyond its start for moving the runtime


def run_dir(name: str) -> str:
    """Where a host keeps its launched daemon's record, log and (without memfd) credential."""
    if os.geteuid() == 0:
        base = "/run/gproc/launch"
    else:
        base = os.path.join(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/gproc-launch-{os.getuid()}", "gproc-launch")
    return os.path.join(base, name)


def height(tree: dict[str, Any]) -> int:
    return 1 + max((height(c) for c in tree.get("children", [])), default=0)


def hosts_of(tree: dict[str, Any]) -> list[str]:
    out = [tree["host"]]
    for c in tree.get("children", []):
        out += hosts_of(c)
    return out


# ---- this host ---------------------------------------------------------------------------------------


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _key_handle(pem: bytes, rundir: str) -> tuple[int | None, str]:
    """(descriptor to pass, path the daemon opens) holding the credential, never world-readable."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("gproc-cluster-key", 0)
        os.write(fd, pem)
        return fd, f"/proc/self/fd/{fd}"
    path = os.path.join(rundir, "cluster.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return None, path


def _record(rundir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(rundir, "daemon.json")) as f:
            rec = json.load(f)
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


def _alive(pid: int, created: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - created) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_daemon(name: str, grace: float = 5.0) -> dict[str, Any]:
    """Stop the daemon an earlier launch recorded on this host (its process group) and forget it."""
    rundir = run_dir(name)
    rec = _record(rundir)
    stopped = None
    if rec is not None and _alive(rec["pid"], rec["created"]):
        stopped = rec["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rec["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(rec["pid"], rec["created"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(rec["pid"], rec["created"]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec["pid"], signal.SIGKILL)
    for f in ("daemon.json", "ready", "cluster.key", "node.crt", "ca.crt"):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(rundir, f))
    return {"host": name, "ok": True, "reached": True, "stopped": stopped}


@dataclass
class Started:
    """A daemon this agent started, not yet known to listen."""

    name: str
    proc: subprocess.Popen[bytes]
    ready: str
    log: str


def spawn_daemon(req: dict[str, Any]) -> Started | dict[str, Any]:
    """Start this host's node daemon detached; its handle, or the outcome when it could not start."""
    name = req["name"]
    conn = os.environ.get("SSH_CONNECTION", "").split()
    parent_host = req.get("parent") or (conn[0] if len(conn) == 4 else None)
    listen_host = conn[2] if len(conn) == 4 else ""
    if not parent_host:
        why = "no SSH_CONNECTION here: give the master's address (--address)"
        return {"host": name, "ok": False, "reached": True, "error": why}
    rundir = run_dir(name)
    _private_dir(rundir)
    stop_daemon(name)  # a host launched again runs one daemon, not two
    ready = os.path.join(rundir, "ready")
    log = os.path.join(rundir, "daemon.log")
    if req.get("cert"):  # its own certificate and key (the key kept as the credential is, below)
        for file, pem in (("node.crt", req["cert"]), ("ca.crt", req["ca"])):
            with open(os.path.join(rundir, file), "w") as f:
                f.write(pem)
    fd, key = _key_handle((req.get("node_key") or req["key"]).encode(), rundir)
    argv = [
        sys.executable, "-m", "gproc", "s",  # the agent runs on the interpreter the daemon should
        "--parent", str(Address(parent_host, int(req["parent_port"]))),
        "--listen", str(Address(listen_host, int(req.get("port", DEFAULT_PORT)))),
        "--name", name, "--id", str(req["id"]), "--key", key, "--ready-file", ready,
        "--debug", str(req.get("debug", 0)),
    ]  # fmt: skip
    if req.get("cert"):
        argv += ["--cert", os.path.join(rundir, "node.crt"), "--ca", os.path.join(rundir, "ca.crt")]
        if req.get("parent_name"):  # the host (or master) it is started under, by its certificate
            argv += ["--parent-name", req["parent_name"]]
    if req.get("bin_root"):
        argv += ["--bin-root", req["bin_root"]]
    try:
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                pass_fds=() if fd is None else (fd,),
            )
    except OSError as e:
        return {"host": name, "ok": False, "reached": True, "error": f"cannot start the daemon: {e}"}
    finally:
        if fd is not None:
            os.close(fd)
    with open(os.path.join(rundir, "daemon.json"), "w") as f:
        json.dump({"pid": proc.pid, "created": psutil.Process(proc.pid).create_time(), "log": log}, f)
    return Started(name, proc, ready, log)


def wait_listening(d: Started, timeout: float) -> dict[str, Any]:
    """The daemon's outcome once it listens (with its port), exits, or ``timeout`` passes."""
    out: dict[str, Any] = {"host": d.name, "ok": False, "reached": True, "log": d.log}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = d.proc.poll()
        if rc is not None:
            return {**out, "error": f"the daemon exited ({rc}): {_last_line(d.log)}"}
        try:
            with open(d.ready) as f:
                addr = f.read().strip()
        except OSError:
            time.sleep(0.02)
            continue
        return {**out, "ok": True, "pid": d.proc.pid, "address": addr, "port": int(addr.rpartition(":")[2])}
    stop_daemon(d.name)
    return {**out, "error": "the daemon did not listen in time"}


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read()[-4000:].splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


# ---- the hosts below ---------------------------------------------------------------------------------


class Shipper:
    """This process's runtime as a tar file (gzip-compressed for hosts that have gzip), packed the
    first time a child host needs it."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._paths: dict[bool, str] = {}
        self._rt: runtime.Runtime | None = None

    async def tar(self, gz: bool) -> tuple[str, str]:
        """(the tar file's path, the runtime's id)."""
        async with self._lock:
            if self._rt is None:
                self._rt = await asyncio.to_thread(runtime.collect)
            here = runtime.running()
            if gz and here is not None and os.path.exists(runtime.packed(here)):
                return runtime.packed(here), self._rt.id  # as this host received it
            if gz not in self._paths:
                fd, path = tempfile.mkstemp(prefix="gproc-runtime-", suffix=".tar.gz" if gz else ".tar")
                try:
                    with os.fdopen(fd, "wb") as f:
                        await asyncio.to_thread(runtime.pack, self._rt, f, gz)
                except BaseException:
                    os.unlink(path)
                    raise
                self._paths[gz] = path
            return self._paths[gz], self._rt.id

    def close(self) -> None:
        for path in self._paths.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._paths.clear()


def _base(rt: dict[str, Any]) -> str:
    return shlex.quote(rt["base"]) if rt.get("base") else runtime.default_base()


def probe_script(req: dict[str, Any]) -> str:
    """What the first ssh session runs: the agent on the host's Python with gproc, else on a runtime
    the host holds, else the answer that the runtime is needed (``sh``: nothing else is assumed)."""
    py = shlex.quote(req.get("python") or sys.executable)
    rt = req.get("runtime") or {}
    mode = rt.get("mode", "auto")
    if mode == "never" or not rt.get("id"):
        return f"exec {py} -m gproc.launchagent"
    # one interpreter start, not two: the agent itself tells (by its status) that gproc would not import
    agent = (
        f"import sys\ntry:\n from gproc import launchagent\nexcept ImportError:\n sys.exit({_NO_GPROC})\n"
        "sys.exit(launchagent.main())"
    )
    lines = [] if mode == "always" else [
        f"if [ -x {py} ]; then {py} -c {shlex.quote(agent)}; s=$?; [ $s -eq {_NO_GPROC} ] || exit $s; fi"
    ]  # fmt: skip
    lines += [
        f"d={_base(rt)}/{rt['id']}",
        f'if [ -e "$d/{runtime.MARK}" ]; then exec "$d/bin/python" -m gproc.launchagent; fi',
        f"echo {NEED} $(command -v gzip >/dev/null 2>&1 && echo gzip) $(command -v tee >/dev/null 2>&1 && echo tee)",
        f"exit {_NEED_STATUS}",
    ]
    return "\n".join(lines)


def ship_script(req: dict[str, Any], rid: str, gz: bool, keep: bool) -> str:
    """What the second session runs: unpack the runtime from stdin (after the request line), run it;
    ``keep``: the host has children to ship it to, and keeps the compressed stream for them."""
    script = runtime.unpack_script(_base(req.get("runtime") or {}), rid, gz, keep)
    return script + 'exec "$d/bin/python" -m gproc.launchagent'


async def _session(
    req: dict[str, Any], host: str, script: str, payload: list[bytes | str], timeout: float
) -> tuple[int | None, bytes, bytes] | str:
    """Run ``sh -c script`` on ``host`` over ssh with ``payload`` (bytes, or a file to stream) on its
    stdin: (exit status, stdout, stderr), or why ssh could not run."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *req["ssh"],
            host,
            shlex.join(["sh", "-c", script]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        return f"cannot run {req['ssh'][0]}: {e}"
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):  # a host that hangs up early says why on stderr
            for part in payload:
                if isinstance(part, bytes):
                    proc.stdin.write(part)
                    await proc.stdin.drain()
                    continue
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 20):
                        proc.stdin.write(chunk)
                        await proc.stdin.drain()
            proc.stdin.close()

    try:
        async with asyncio.timeout(timeout):
            _, out, err = await asyncio.gather(feed(), proc.stdout.read(), proc.stderr.read())
            await proc.wait()
    finally:
        if proc.returncode is None:  # timed out, or the launch was interrupted: no ssh outlives it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
    return proc.returncode, out, err


async def _over_ssh(
    req: dict[str, Any], child: dict[str, Any], timeout: float, ship: Shipper
) -> tuple[list[dict[str, Any]], bool]:
    """Run the agent on ``child``'s host for its subtree: (outcomes, whether the child itself came up)."""
    host = child["host"]
    sub = {**req, "name": host, "id": child["id"], "children": child.get("children", [])}
    if child.get("cert"):  # the child's own, never its parent's
        sub.update(cert=child["cert"], node_key=child["node_key"])
    line = json.dumps(sub).encode() + b"\n"
    shipped = 0
    try:
        got = await _session(req, host, probe_script(req), [line], timeout)
        if isinstance(got, tuple) and got[0] == _NEED_STATUS and NEED.encode() in got[1]:
            if req.get("op") == "stop":  # no runtime there: nothing a launch started runs there
                return [{"host": host, "ok": True, "reached": True, "stopped": None}], False
            gz = b" gzip" in got[1]  # a third of the bytes, where the host can unpack them
            path, rid = await ship.tar(gz)
            sub["runtime"] = {**(req.get("runtime") or {}), "id": rid}  # the subtree gets what we have
            line = json.dumps(sub).encode() + b"\n"
            script = ship_script(req, rid, gz, keep=bool(child.get("children")) and b" tee" in got[1])
            got = await _session(req, host, script, [line, path], timeout + SHIP_EXTRA_TIMEOUT)
            shipped = os.path.getsize(path)
    except TimeoutError:
        # the subtree may be partly up: report all of it, start none of it again
        why = f"no answer within {timeout:.0f}s"
        return [{"host": h, "ok": False, "reached": True, "error": why} for h in hosts_of(child)], True
    if isinstance(got, str):
        return [{"host": host, "ok": False, "reached": False, "error": got}], False
    rc, out, err = got
    try:
        rows = json.loads(out.decode().strip().splitlines()[-1])["hosts"]
    except (ValueError, KeyError, IndexError, TypeError):
        lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {rc}"
        if rc == 127:  # the remote shell found no such interpreter
            why = f"no {req.get('python') or sys.executable} on the host and shipping gproc is off: {why}"
        return [{"host": host, "ok": False, "reached": False, "error": why}], False
    me = next((r for r in rows if r.get("host") == host), None)
    if me is not None and shipped:
        me["shipped"] = shipped  # bytes of runtime this launch moved to the host
    return rows, bool(me and me.get("ok"))


async def _subtree(req: dict[str, Any], child: dict[str, Any], hop: float, ship: Shipper) -> list[dict[str, Any]]:
    got, child_up = await _over_ssh(req, child, hop * height(child), ship)
    if not child_up and child.get("children"):  # as soon as it failed, not after its siblings
        got += await _fan_out(req, child["children"], ship)
    return got


async def _fan_out(req: dict[str, Any], children: list[dict[str, Any]], ship: Shipper) -> list[dict[str, Any]]:
    hop = float(req.get("hop_timeout", DEFAULT_HOP_TIMEOUT))
    parts = await asyncio.gather(*(_subtree(req, c, hop, ship) for c in children))
    return [row for part in parts for row in part]


async def fan_out(req: dict[str, Any], children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start (or stop) each child subtree over ssh at once; a child that fails has its own children
    started from here. ``req`` is this level's request: what the children inherit."""
    ship = Shipper()
    try:
        return await _fan_out(req, children, ship)
    finally:
        ship.close()


async def serve(req: dict[str, Any]) -> list[dict[str, Any]]:
    """This host's part of a launch (or stop): itself, then its subtree.

    With a fixed port the children are started while this host's daemon starts (they retry joining
    it until it listens), so a level costs one ssh login and agent start, not also a daemon's start.
    Should the daemon then fail, the parent starts the children again, under itself: a host launched
    again replaces the daemon it runs."""
    children = req.get("children", [])
    if req.get("op") == "stop":
        return [stop_daemon(req["name"]), *await fan_out({**req, "parent": None}, children)]
    hop = float(req.get("hop_timeout", DEFAULT_HOP_TIMEOUT))
    name = req["name"]  # the parent its children pin (with certificates)
    started = spawn_daemon(req)
    if not isinstance(started, Started):
        return [started]  # the parent starts the children instead
    port = int(req.get("port", DEFAULT_PORT))
    if port == 0 or not children:
        me = await asyncio.to_thread(wait_listening, started, hop)
        if not me["ok"]:
            return [me]
        # children reach us at the address this ssh session came to (their SSH_CONNECTION's client)
        return [me, *await fan_out({**req, "parent": None, "parent_port": me["port"], "parent_name": name}, children)]
    below = asyncio.ensure_future(fan_out({**req, "parent": None, "parent_port": port, "parent_name": name}, children))
    me = await asyncio.to_thread(wait_listening, started, hop)
    rows = await below
    return [me, *rows] if me["ok"] else [me]


def main() -> int:
    try:
        req = json.loads(sys.stdin.buffer.read())
        name = req["name"]
    except (ValueError, KeyError, TypeError) as e:
        print(f"gproc launch agent: bad request on stdin: {e}", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(serve(req))
    except Exception as e:  # one line back to the parent, which reports it as this host's reason
        print(f"gproc launch agent on {name}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"hosts": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
