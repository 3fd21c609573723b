"""The web server of ``gproc web``: pages kept live by server-sent events, and ``/metrics``.

Everything it knows it asks the master through ``gproc.client.Cluster``, as the user who started it;
it never runs inside the master. Off loopback every request needs the token printed at start (as a
``token`` query parameter once, then a cookie; or ``Authorization: Bearer``): 401 otherwise. Commands
are started only by a JSON POST from a page of this server (a cross-site form cannot send one), so a
web page elsewhere cannot run commands through a browser on the same machine.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import ipaddress
import json
import os
import secrets
import shlex
import signal
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from gproc import client, platform, psview
from gproc.address import parse_address
from gproc.display import Display
from gproc.errors import GprocError, UsageError
from gproc.web import exposition

# read once, when the server is imported: a server that then drops to another user (or loses its
# installation under it) still serves its page
PAGE = resources.files("gproc.web").joinpath("index.html").read_text(encoding="utf-8")

REFRESH = 1.0  # seconds between live updates of the tree, the jobs and the metrics
TREE_REFRESH = 0.5  # the tree is asked more often: a lost node shows within the liveness rule's 5 s
COMPACT_ABOVE = 256  # nodes: beyond this the tree page shows counts per level, not every node
COOKIE = "gproc_token"
SIGNALS = ("TERM", "KILL", "STOP", "CONT")  # the processes page's buttons

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tcp_peer_uid(local: tuple[str, int], peer: tuple[str, int]) -> int | None:
    """The uid owning the local TCP socket at ``peer`` connected to ``local`` (from /proc/net/tcp*),
    or None when not found. Loopback is shared by every user of the machine: this tells who calls."""

    def hexaddr(host: str, port: int) -> tuple[bytes, int]:
        ip = ipaddress.ip_address(host)
        if ip.version == 4:
            return ip.packed[::-1], port
        raw = ip.packed  # /proc prints IPv6 as four host-order 32-bit words
        return b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)), port

    want_local, want_remote = hexaddr(*peer), hexaddr(*local)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    la, lp = fields[1].split(":")
                    ra, rp = fields[2].split(":")
                    if (bytes.fromhex(la), int(lp, 16)) == want_local and (
                        bytes.fromhex(ra),
                        int(rp, 16),
                    ) == want_remote:
                        return int(fields[7])
        except (OSError, ValueError, IndexError, StopIteration):
            continue
    return None


def auth_middleware(token: str | None) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None:
            # on loopback, where any local user can connect: only the user who started the server (or root)
            sock = request.transport.get_extra_info("socket") if request.transport else None
            peer = request.transport.get_extra_info("peername") if request.transport else None
            uid = tcp_peer_uid(sock.getsockname()[:2], peer[:2]) if sock is not None and peer else None
            if uid not in (os.getuid(), 0):
                return web.Response(status=403, text="gproc: only the user who started gproc web may use it\n")
            return await handler(request)
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        bearer = request.headers.get("Authorization", "")
        if bearer.startswith("Bearer "):
            given = bearer[7:]
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=401, text="gproc: a token is required (printed by gproc web at start)\n")
        response = await handler(request)
        if request.query.get("token") and not response.prepared:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    return check


def error(status: int, msg: str) -> web.Response:
    return web.json_response({"error": f"gproc: {msg}"}, status=status)


def event_json(ev: client.Event) -> dict[str, Any]:
    if isinstance(ev, client.Output):
        return {
            "event": "out",
            "nodes": ev.nodes,
            "count": ev.count,
            "stream": ev.stream,
            "lineno": ev.lineno,
            "data": ev.data.decode(errors="replace"),
        }
    return {"event": "status", "nodes": ev.nodes, "count": ev.count, "status": ev.status, "error": ev.error}


def tree_view(info: dict[str, Any]) -> dict[str, Any]:
    """The tree for the page: every node when few, else counts per level and state (compact)."""
    nodes = info["nodes"]
    up = sum(1 for n in nodes if n["state"] == "up")
    out: dict[str, Any] = {"master": info["master"], "up": up, "lost": len(nodes) - up, "total": len(nodes)}
    if len(nodes) <= COMPACT_ABOVE:
        out["nodes"] = [{k: n[k] for k in ("name", "rank", "parent", "level", "state")} for n in nodes]
    else:
        levels: dict[int, dict[str, int]] = {}
        for n in nodes:
            lv = levels.setdefault(n["level"], {})
            lv[n["state"]] = lv.get(n["state"], 0) + 1
        out["levels"] = [{"level": k, **v} for k, v in sorted(levels.items())]
        out["lost_nodes"] = [n["name"] for n in nodes if n["state"] != "up"][:COMPACT_ABOVE]
    return out


async def read_form(request: web.Request) -> dict[str, Any] | web.Response:
    """A form this server's own page posted, as a JSON object; else the error response to give."""
    why = from_this_server(request)
    if why is not None:
        return error(415 if request.content_type != "application/json" else 403, why)
    try:
        form = await request.json()
    except ValueError:
        return error(400, "the form is not JSON")
    if not isinstance(form, dict):
        return error(400, "the form is not a JSON object")
    return form


def from_this_server(request: web.Request) -> str | None:
    """Why a POST that acts is refused, or None: only JSON sent by a page of this server (a
    cross-site form cannot send JSON, and a script elsewhere sends its own Origin)."""
    if request.content_type != "application/json":
        return "send the form as JSON"
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        return "commands are started only from this server's pages"
    return None


class App:
    def __init__(self, cluster: client.Cluster) -> None:
        self.c = cluster
        self.user = platform.user_name(os.getuid())  # ps shows user names: the page offers signals on these rows

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/tree", self.tree)
        app.router.add_get("/api/jobs", self.jobs)
        app.router.add_get("/api/nodes", self.node_metrics)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_get("/api/output/{job}", self.grouped)
        app.router.add_post("/api/run", self.run)
        app.router.add_post("/api/kill", self.kill)
        app.router.add_get("/events/ps", self.live(self._ps))
        app.router.add_get("/events/tree", self.live(self._tree, TREE_REFRESH))
        app.router.add_get("/events/jobs", self.live(self._jobs))
        app.router.add_get("/events/metrics", self.live(self._metrics))
        app.router.add_get("/events/output/{job}", self.output)

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=PAGE, content_type="text/html")

    async def _tree(self) -> dict[str, Any]:
        return tree_view(await self.c.info())

    async def _jobs(self) -> dict[str, Any]:
        return {"jobs": await self.c.jobs()}

    async def _metrics(self) -> dict[str, Any]:
        return await self.c.metrics()

    async def _ps(self) -> dict[str, Any]:
        """``gproc ps --forest``: rows in forest order with their ``depth``; ``user`` is whose rows
        may be signalled from the page (root: every row)."""
        rows, errors = await self.c.ps()
        return {"rows": psview.forest(rows), "errors": errors, "user": self.user, "root": os.getuid() == 0}

    async def ps(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(self._ps())

    async def tree(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(self._tree())

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(self._jobs())

    async def node_metrics(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        return await self._answer(
            self.c.metrics(q.get("nodes") or None, include=q.get("w") or None, path=q.get("path") or "/")
        )

    async def _answer(self, work: Awaitable[dict[str, Any]]) -> web.StreamResponse:
        try:
            return web.json_response(await work)
        except GprocError as e:
            return error(400 if isinstance(e, UsageError) else 502, str(e))

    def live(self, get: Callable[[], Awaitable[dict[str, Any]]], every: float = REFRESH) -> Handler:
        """Server-sent events: ``get()`` every ``every`` seconds until the browser leaves, sent when
        it differs from the last one sent (the page redraws only what changed)."""

        async def stream(request: web.Request) -> web.StreamResponse:
            out = sse(request)
            last = None
            async with out as send:
                while True:
                    try:
                        now = await get()
                    except GprocError as e:
                        now = {"error": f"gproc: {e}"}
                    if now != last:
                        await send(now)
                        last = now
                    await asyncio.sleep(every)
            return out.resp  # the loop ends when the browser leaves

        return stream

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        try:
            snapshot = await self.c.metrics()
            jobs = await self.c.jobs()
        except GprocError as e:
            return web.Response(status=502, text=f"gproc: {e}\n")
        body, ctype = exposition.render(snapshot, jobs)
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def kill(self, request: web.Request) -> web.StreamResponse:
        """A signal button: ``{"gpid", "sig"}`` (sig one of SIGNALS) → ``{"gpid", "sig"}``, or the
        one-line error ``gproc kill`` prints. The master decides whose processes the user may signal."""
        form = await read_form(request)
        if isinstance(form, web.Response):
            return form
        gpid, sig = form.get("gpid"), form.get("sig")
        if not isinstance(gpid, int) or isinstance(gpid, bool) or gpid <= 0:
            return error(400, f"not a gpid: {gpid!r}")
        if sig not in SIGNALS:
            return error(400, f"unknown signal {sig!r} (one of {', '.join(SIGNALS)})")
        try:
            r = await self.c.kill([gpid], sig=int(signal.Signals["SIG" + sig]))
        except GprocError as e:
            return error(400 if isinstance(e, UsageError) else 502, str(e))
        for res in r["results"]:
            if res["code"]:  # as gproc kill says it
                status = {1: 404, 2: 403}.get(res["code"], 502)
                return error(status, f"kill {res['gpid']}: {res['error']}")
        return web.json_response({"gpid": gpid, "sig": sig})

    async def grouped(self, request: web.Request) -> web.StreamResponse:
        """A job's output as ``gproc output -b`` (``?view=b``) or ``--diff`` (``?view=diff``) prints
        it, by the CLI's own Display, once the job has ended: ``{"stdout", "stderr", "status"}``."""
        view = request.query.get("view", "b")
        if view not in ("b", "diff"):
            return error(400, f"unknown view {view!r} (b or diff)")
        try:
            job = await self.c.output(int(request.match_info["job"]))
        except ValueError:
            return error(400, "a job id is a number")
        except GprocError as e:
            return error(404, str(e))
        out, err = io.StringIO(), io.StringIO()
        try:
            await Display(gather=True, diff=view == "diff", out=out, err=err).consume(job)
        except GprocError as e:
            return error(502, str(e))
        return web.json_response({"stdout": out.getvalue(), "stderr": err.getvalue(), "status": job.exit_status})

    async def run(self, request: web.Request) -> web.StreamResponse:
        """Start a command (a batch job) from the run form: ``{"nodes", "command"}`` → ``{"job"}``."""
        form = await read_form(request)
        if isinstance(form, web.Response):
            return form
        nodes, command = form.get("nodes") or None, form.get("command")
        if not isinstance(command, str) or not command.strip():
            return error(400, "no command given")
        if nodes is not None and not isinstance(nodes, str):
            return error(400, "node selection must be a string")
        try:
            argv = shlex.split(command)
        except ValueError as e:
            return error(400, f"bad command: {e}")
        try:
            job = await self.c.exec(argv, nodes, batch=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, cwd="/")
        except GprocError as e:
            return error(400 if isinstance(e, UsageError) else 502, str(e))
        return web.json_response({"job": job.id, "n": job.nnodes, "absent": job.absent})

    async def output(self, request: web.Request) -> web.StreamResponse:
        """A job's merged output, replayed then followed live, as server-sent events."""
        try:
            job = await self.c.output(int(request.match_info["job"]))
        except ValueError:
            return error(400, "a job id is a number")
        except GprocError as e:
            return error(404, str(e))
        # a browser that lost the stream reconnects saying the last event it got: the replay skips those
        try:
            seen = int(request.headers.get("Last-Event-ID", "0"))
        except ValueError:
            seen = 0
        n = 0
        stream = sse(request)
        async with stream as send:
            async for ev in job:
                n += 1
                if n > seen:
                    await send(event_json(ev), n)
            await send({"event": "end", "status": job.exit_status}, n + 1)
        return stream.resp  # the response already sent: aiohttp only ends it


class sse:  # a context manager, named like one
    """A server-sent-events response; ``send(obj)`` writes one event."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

    async def __aenter__(self) -> Callable[..., Awaitable[None]]:
        await self.resp.prepare(self.request)

        async def send(obj: dict[str, Any], event_id: int | None = None) -> None:
            head = f"id: {event_id}\n" if event_id is not None else ""
            await self.resp.write(f"{head}data: {json.dumps(obj)}\n\n".encode())

        return send

    async def __aexit__(self, *exc: object) -> bool:
        # the browser leaving is the normal end of a live page
        return exc[0] is not None and issubclass(exc[0], (ConnectionResetError, ConnectionError))  # type: ignore[arg-type]


def make_app(socket: str | None, token: str | None) -> web.Application:
    app = web.Application(middlewares=[auth_middleware(token)])
    App(client.Cluster(socket)).routes(app)
    return app


async def serve(listen: str, socket: str | None, token: str | None = None) -> int:
    """Serve until Ctrl-C. Off loopback a token is required: ``token`` or a random one, printed."""
    try:
        addr = parse_address(listen)
    except GprocError as e:
        raise UsageError(f"bad --listen {listen!r}: {e}") from None
    if not is_loopback(addr.host):
        token = token or secrets.token_urlsafe(18)
    app = make_app(socket, token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, addr.host, addr.port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise UsageError(f"cannot listen on {listen}: {e.strerror or e}") from None
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    port = runner.addresses[0][1] if runner.addresses else addr.port  # the port the kernel chose for :0
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    print(f"gproc web: serving {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return 0
