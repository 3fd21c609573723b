"""Watching the cluster: node metrics reduced in the tree (``Cluster.metrics``, ``gproc top``), and
``gproc web`` run as a real process: its HTTP API, ``/metrics``, the token off loopback, and the run
page in a real headless chromium driven over the DevTools protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.cluster.daemons import node
from tests.cluster.users import NOBODY, as_user, needs_root
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import client
from gproc.errors import GprocError
from gproc.services.metrics import METRICS, TOP

pytestmark = pytest.mark.cluster

TIMEOUT = aiohttp.ClientTimeout(total=30)


def metrics(c: LocalCluster, **kw: Any) -> dict[str, Any]:
    return asyncio.run(client.Cluster(c.socket).metrics(**kw))


def test_metrics_reach_the_master_in_the_same_bytes_for_16_and_64_nodes(cluster16: LocalCluster) -> None:
    """Both trees give the master four children; each sends one reduced reply whatever its subtree
    holds, so the bytes differ only by the digits of node names in the outliers (``node7`` against
    ``node63``: at most one byte per named outlier per reply)."""
    small = metrics(cluster16)
    big_c, d = start_cluster(64, 4)
    try:
        big = metrics(big_c)
    finally:
        stop_cluster(big_c, d)
    for snap, n in ((small, 16), (big, 64)):
        assert snap["targets"] == n and snap["nodes"] == {"up": n, "lost": 0} and snap["errors"] == []
        for m in METRICS:
            got = snap["metrics"][m.name]
            assert got["count"] == n and sum(got["hist"]["counts"]) == n
            assert got["min"] <= got["max"] and got["avg"] == pytest.approx(
                min(max(got["avg"], got["min"]), got["max"])
            )
            assert len(got["top"]) == TOP and all(re.fullmatch(r"node\d+", name) for _, name in got["top"])
    slack = 4 * len(METRICS) * TOP  # four replies, one more digit per outlier name
    assert abs(big["bytes_in"] - small["bytes_in"]) <= slack, (small["bytes_in"], big["bytes_in"])


def test_metrics_of_a_selection_and_their_errors_name_the_nodes(cluster16: LocalCluster) -> None:
    snap = metrics(cluster16, include="node[0-3]")
    assert snap["targets"] == 4 and snap["metrics"]["load1"]["count"] == 4
    assert {name for _, name in snap["metrics"]["disk_used_pct"]["top"]} <= {"node0", "node1", "node2", "node3"}
    bad = metrics(cluster16, include="node[0-3]", path="/no/such/dir")
    assert bad["metrics"]["load1"]["count"] == 0
    assert [(e["nodes"], e["count"]) for e in bad["errors"]] == [("node[0-3]", 4)]
    assert "No such file" in bad["errors"][0]["error"]


def test_proctop_names_the_busiest_processes_across_the_nodes(cluster16: LocalCluster) -> None:
    c = client.Cluster(cluster16.socket)
    r = asyncio.run(c.proctop(5))
    assert len(r["procs"]) == 5 and [p[0] for p in r["procs"]] == sorted((p[0] for p in r["procs"]), reverse=True)
    assert all(re.fullmatch(r"node\d+ \d+ \S+ .+", label) for _, label in r["procs"]), r["procs"]
    few = asyncio.run(c.proctop(3, include="node[2-3]"))["procs"]
    assert len(few) == 3 and {label.split()[0] for _, label in few} <= {"node2", "node3"}
    with pytest.raises(client.UsageError, match="1 to 50"):
        asyncio.run(c.proctop(0))


def test_proctop_finds_a_process_that_spins(cluster16: LocalCluster) -> None:
    """A busy loop on node5 is among node5's busiest processes, named (every node of a local cluster
    sees the whole machine, so across nodes the other processes of this machine crowd the list)."""

    async def go() -> list[list[Any]]:
        c = client.Cluster(cluster16.socket)
        job = await c.exec(
            ["sh", "-c", "while :; do :; done"], "./**", include="node5", batch=True, timeout=60, localbin=True
        )
        try:
            await c.proctop(10, include="node5")  # CPU % is since the previous proctop: prime it
            await asyncio.sleep(1.0)
            return list((await c.proctop(50, include="node5"))["procs"])
        finally:
            await c.kill(job=job.id, sig=9)

    procs = asyncio.run(go())
    assert all(label.startswith("node5 ") for _, label in procs)
    assert any(label.endswith(" sh") and cpu > 0 for cpu, label in procs), procs


def test_top_prints_one_snapshot_and_refuses_bad_input_in_one_line(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("top", "--json", check=True)
    snap = json.loads(r.stdout)
    assert snap["nodes"]["up"] == 16 and snap["metrics"]["mem_used_pct"]["count"] == 16
    assert len(snap["procs"]) == 10
    r = cluster16.gproc("top", "--once")
    assert r.returncode == 0 and "16 nodes asked, 16 up, 0 lost" in r.stdout and "load1" in r.stdout
    for args, msg in ((("--disk", "rel"), "absolute"), (("[[",), "bad node spec")):
        r = cluster16.gproc("top", "--json", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr


def test_top_refreshes_in_a_terminal_until_q(cluster16: LocalCluster) -> None:
    import pexpect

    env = {**os.environ, "GPROC_MASTER": cluster16.socket, "TERM": "xterm", "COLUMNS": "160", "LINES": "40"}
    s = pexpect.spawn(
        sys.executable, ["-m", "gproc", "top", "--interval", "0.2"], env=env, encoding="utf-8", timeout=30
    )
    try:
        for _ in range(2):  # the first view, then a refresh
            s.expect_exact("16 nodes asked, 16 up, 0 lost")
        s.send("q")
        s.expect(pexpect.EOF)
        s.close()
        assert s.exitstatus == 0
    finally:
        if s.isalive():
            s.terminate(force=True)


# ---- gproc web, a real process -----------------------------------------------------------------


class Web:
    def __init__(self, c: LocalCluster, argv_prefix: list[str] | None = None, listen: str = "127.0.0.1:0") -> None:
        env = {**os.environ, "GPROC_MASTER": c.socket}
        argv = [*(argv_prefix or []), sys.executable, "-m", "gproc", "web", "--listen", listen]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the server prints its address once it listens
        m = re.search(r"(http://\S+)", line)
        if m is None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"gproc web did not start: {line!r} {err}")
        self.url = m.group(1)
        self.base = self.url.split("?")[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture(scope="module")
def web16(cluster16: LocalCluster) -> Iterator[Web]:
    w = Web(cluster16)
    try:
        yield w
    finally:
        w.stop()


async def sse_events(session: aiohttp.ClientSession, url: str, until: str) -> list[dict[str, Any]]:
    """Server-sent events from ``url`` until one whose ``event`` is ``until``."""
    out: list[dict[str, Any]] = []
    async with session.get(url) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
                if out[-1].get("event") == until:
                    return out
    raise AssertionError(f"the stream ended before {until!r}: {out}")


def test_web_metrics_parse_as_prometheus_exposition(web16: Web) -> None:
    async def scrape() -> str:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s, s.get(web16.base + "metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            return await r.text()

    fams = {f.name: f for f in text_string_to_metric_families(asyncio.run(scrape()))}
    nodes = {s.labels["state"]: s.value for s in fams["gproc_nodes"].samples}
    assert nodes == {"up": 16, "lost": 0}
    assert {s.labels["state"] for s in fams["gproc_jobs"].samples} >= {"running", "done", "lost"}
    for m in METRICS:
        for agg in ("min", "max", "avg"):
            assert len(fams[f"gproc_node_{m.name}_{agg}"].samples) == 1
        hist = fams[f"gproc_node_{m.name}"]
        assert hist.type == "histogram"
        inf = [s.value for s in hist.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
        count = [s.value for s in hist.samples if s.name.endswith("_count")]
        assert inf == [16] and count == [16]
        buckets = [s.value for s in hist.samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets), "buckets are cumulative"


def test_web_run_streams_merged_output_and_refuses_bad_forms_in_one_line(web16: Web) -> None:
    async def go() -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            async with s.post(
                web16.base + "api/run", json={"nodes": "./**", "command": "sh -c 'echo hi; exit 3'"}
            ) as r:
                assert r.status == 200
                job = (await r.json())["job"]
            events = await sse_events(s, f"{web16.base}events/output/{job}", "end")
            bad = []
            for form in ({"nodes": "[[", "command": "true"}, {"nodes": "./**", "command": ""}, {"command": "'"}):
                async with s.post(web16.base + "api/run", json=form) as r:
                    bad.append((r.status, (await r.json())["error"]))
            async with s.post(web16.base + "api/run", data="nodes=./**&command=true") as r:
                bad.append((r.status, (await r.json())["error"]))
            return events, bad

    events, bad = asyncio.run(go())
    out = [(e["nodes"], e["data"]) for e in events if e["event"] == "out"]
    assert out == [("node[0-15]", "hi\n")]
    assert [(e["nodes"], e["status"]) for e in events if e["event"] == "status"] == [("node[0-15]", 3)]
    assert events[-1] == {"event": "end", "status": 3}
    assert [status for status, _ in bad] == [400, 400, 400, 415]
    for _, msg in bad:
        assert msg.startswith("gproc: ") and "\n" not in msg
    assert "bad node spec" in bad[0][1] and "no command" in bad[1][1]


def test_web_tree_and_jobs_are_live_event_streams(web16: Web) -> None:
    async def first(path: str) -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s, s.get(web16.base + path) as r:
            assert r.content_type == "text/event-stream"
            async for raw in r.content:
                if raw.startswith(b"data: "):
                    return dict(json.loads(raw[6:]))
        raise AssertionError("no event")

    tree = asyncio.run(first("events/tree"))
    assert (tree["up"], tree["lost"]) == (16, 0) and len(tree["nodes"]) == 16
    jobs = asyncio.run(first("events/jobs"))
    assert isinstance(jobs["jobs"], list)


NETNS_UP = "ip link set lo up && ip addr add 10.77.0.1/32 dev lo"  # a non-loopback address, on lo: no modules needed


def netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return "needs unshare, nsenter and ip"
    r = subprocess.run(["unshare", "--net", "sh", "-c", NETNS_UP], capture_output=True, text=True, timeout=10)
    return None if r.returncode == 0 else f"cannot make a network namespace: {r.stderr.strip()}"


PROBE = """
import asyncio, sys, aiohttp
async def main(base, token):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        codes = []
        for url in (base + "metrics", base + "api/jobs", base + "metrics?token=wrong"):
            async with s.get(url) as r:
                codes.append(r.status)
        async with s.get(base + "metrics", headers={"Authorization": "Bearer " + token}) as r:
            codes.append(r.status)
        async with s.get(base + "?token=" + token) as r:
            codes.append(r.status)
        async with s.get(base + "metrics") as r:  # the cookie the token set
            codes.append(r.status)
        print(*codes)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_web_off_loopback_answers_401_without_the_printed_token(cluster16: LocalCluster) -> None:
    """In a network namespace of its own, ``gproc web`` listens on a non-loopback address: requests
    without the token it printed get 401; with it (query, bearer, then the cookie) 200."""
    problem = netns_problem()
    if problem:
        pytest.skip(problem)
    w = Web(cluster16, ["unshare", "--net", "sh", "-c", NETNS_UP + ' && exec "$@"', "sh"], listen="10.77.0.1:0")
    try:
        m = re.search(r"\?token=(\S+)", w.url)
        assert m is not None, w.url
        r = subprocess.run(
            ["nsenter", f"--net=/proc/{w.proc.pid}/ns/net", sys.executable, "-c", PROBE, w.base, m.group(1)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.stdout.split() == ["401", "401", "401", "200", "200", "200"], r.stderr
    finally:
        w.stop()


# ---- a real browser ----------------------------------------------------------------------------


class Chromium:
    """Headless chromium driven over the DevTools protocol (a WebSocket, aiohttp's client)."""

    def __init__(self) -> None:
        exe = shutil.which("chromium")
        assert exe is not None
        self.profile = tempfile.mkdtemp(prefix="gpt-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "TMPDIR": self.profile},  # its singleton socket directory goes with the profile
        )  # fmt: skip
        assert self.proc.stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        stderr = self.proc.stderr

        # read on a thread (so that chromium never blocks on a full pipe) and wait for the line with a deadline
        def pump() -> None:
            with stderr:
                for x in iter(stderr.readline, ""):
                    lines.put(x)
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        seen = []
        while True:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                break
            seen.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                self.ws_url = m.group(1)
                return
            if not line:
                break
        self.stop()
        raise AssertionError(f"chromium did not start its DevTools endpoint: {''.join(seen)[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


def chromium_problem() -> str | None:
    if shutil.which("chromium") is None:
        return "chromium is not installed (apt-get install -y chromium)"
    return None


async def drive_run_page(browser: Chromium, url: str, shots: str) -> tuple[str, str]:
    """Open the page, fill the run form, submit it, and read the output and exit groups once done."""
    port = browser.ws_url.split("/")[2]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        async with s.put(f"http://{port}/json/new?{url}") as r:
            target = await r.json()
        async with s.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            n = 0

            async def cdp(method: str, **params: Any) -> dict[str, Any]:
                nonlocal n
                n += 1
                await ws.send_json({"id": n, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json(timeout=30)
                    if msg.get("id") == n:
                        assert "error" not in msg, msg
                        return dict(msg.get("result", {}))

            async def js(expr: str) -> Any:
                r = await cdp("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
                return r["result"].get("value")

            for _ in range(600):
                if await js("document.readyState") == "complete" and await js("!!document.getElementById('run-form')"):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the page did not load")
            await js(
                "document.querySelector('a[data-tab=run]').click();"
                "document.getElementById('run-nodes').value = './**';"
                "document.getElementById('run-command').value = 'echo from-the-browser';"
                "document.getElementById('run-form').requestSubmit(); true"
            )
            try:
                for _ in range(600):  # the page says done when the job's stream ended
                    if await js("!!document.getElementById('run-done')"):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the run page never showed the end of the job")
                out = await js("document.getElementById('run-output').textContent")
                status = await js("document.getElementById('run-status').textContent")
                return str(out), str(status)
            except AssertionError:
                shot = await cdp("Page.captureScreenshot")
                import base64

                with open(os.path.join(shots, "run-page.png"), "wb") as f:
                    f.write(base64.b64decode(shot["data"]))
                raise


def test_run_page_in_chromium_shows_merged_output_and_exit_groups(web16: Web) -> None:
    problem = chromium_problem()
    if problem:
        pytest.skip(problem)
    shots = tempfile.mkdtemp(prefix="gpt-shots-")
    browser = Chromium()
    try:
        out, status = asyncio.run(drive_run_page(browser, web16.url, shots))
    except AssertionError as e:
        raise AssertionError(f"{e} (screenshot in {shots})") from None
    finally:
        browser.stop()
    shutil.rmtree(shots, ignore_errors=True)
    assert out == "node[0-15]: from-the-browser\n", (out, status)
    assert "node[0-15]: exit 0" in status and "done: 0" in status


@needs_root
def test_web_on_loopback_answers_only_the_user_who_started_it(web16: Web) -> None:
    """Loopback is shared by every local user: another one gets 403, its owner 200."""

    import encodings.idna  # noqa: F401  (socket encodes host names with it; nobody cannot import it after the fork)

    host, port = web16.base.split("/")[2].split(":")

    def status() -> int:  # plain HTTP/1.0 over a socket: the child dropped to nobody imports nothing
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"GET /api/jobs HTTP/1.0\r\nHost: x\r\n\r\n")
            return int(s.recv(64).split()[1])

    assert as_user(NOBODY, status) == 403
    assert status() == 200


class Tab:
    """One page of the browser, over its DevTools WebSocket: run JavaScript, wait for the page to
    show something (with a deadline), screenshot into ``shots`` when a wait fails."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, shots: str, name: str) -> None:
        self.ws, self.shots, self.name, self.n = ws, shots, name, 0

    async def cdp(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=30)
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return dict(msg.get("result", {}))

    async def js(self, expr: str) -> Any:
        r = await self.cdp("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    async def screenshot(self) -> str:
        import base64

        shot = await self.cdp("Page.captureScreenshot")
        path = os.path.join(self.shots, f"{self.name}.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path

    async def wait_for(self, expr: str, what: str, deadline: float = 60.0) -> Any:
        """The first truthy value of ``expr`` within ``deadline`` seconds; else a screenshot and failure."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while loop.time() < end:
            v = await self.js(expr)
            if v:
                return v
            await asyncio.sleep(0.1)
        path = await self.screenshot()
        raise AssertionError(f"the page did not show {what} within {deadline:.0f} s (screenshot {path})")


@contextlib.asynccontextmanager
async def tab(browser: Chromium, url: str, shots: str, name: str) -> AsyncIterator[Tab]:
    port = browser.ws_url.split("/")[2]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        async with s.put(f"http://{port}/json/new?{url}") as r:
            target = await r.json()
        async with s.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            t = Tab(ws, shots, name)
            await t.wait_for("document.readyState === 'complete' && !!document.getElementById('ps-table')", "the page")
            yield t


@pytest.fixture
def browser() -> Iterator[tuple[Chromium, str]]:
    """A headless chromium and a directory for its screenshots (kept, and named, when a test fails)."""
    problem = chromium_problem()
    if problem:
        pytest.skip(problem)
    shots = tempfile.mkdtemp(prefix="gpt-shots-")
    b = Chromium()
    try:
        yield b, shots
    finally:
        b.stop()
    if not os.listdir(shots):
        os.rmdir(shots)


async def start_sleep(c: LocalCluster, node: str) -> tuple[int, int]:
    """A ``sleep`` started through the client API on ``node``: (job id, its gpid)."""
    k = client.Cluster(c.socket)
    job = await k.exec(["sleep", "300"], "./**", include=node, batch=True, timeout=60, localbin=True)
    for _ in range(100):
        rows, _ = await k.ps(include=node)
        mine = [r["gpid"] for r in rows if r["job"] == job.id and r["cmd"].startswith("sleep")]
        if mine:
            return job.id, mine[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the sleep of job {job.id} never showed in ps")


def test_processes_page_in_chromium_ends_a_sleep_by_its_signal_button(
    cluster16: LocalCluster, web16: Web, browser: tuple[Chromium, str]
) -> None:
    async def go() -> tuple[int, str]:
        job, gpid = await start_sleep(cluster16, "node3")
        try:
            async with tab(browser[0], web16.url, browser[1], "processes-page") as t:
                await t.js("document.querySelector('a[data-tab=procs]').click(); true")
                row = f"document.querySelector('#ps-table tr[data-gpid=\"{gpid}\"]')"
                cmd = await t.wait_for(f"{row} && {row}.querySelector('td.cmd').textContent", f"gpid {gpid}")
                await t.js(f"{row}.querySelector('button[data-sig=TERM]').click(); true")
                await t.wait_for(f"!{row}", f"gpid {gpid} gone from the forest")
                shown_error = str(await t.js("document.getElementById('ps-error').textContent"))
        finally:
            with contextlib.suppress(GprocError):  # "no such job" once the button ended it
                await client.Cluster(cluster16.socket).kill(job=job, sig=9)
        r = cluster16.gproc("wait", str(gpid))
        return r.returncode, f"{cmd!r} {shown_error!r} {r.stderr}"

    status, seen = asyncio.run(go())
    assert status == 143, seen  # 128 + SIGTERM: the button's signal ended it, not the clean-up's KILL
    assert "sleep 300" in seen and "''" in seen, seen


class WebAs:
    """``gproc web`` serving as another user: a forked child that drops to ``uid`` and serves (that
    user cannot read root's Python packages, so the child imports nothing after the fork)."""

    def __init__(self, c: LocalCluster, uid: int) -> None:
        import encodings.idna  # noqa: F401  (aiohttp encodes host names with it)

        from gproc.web import server

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setsid()
                os.close(r)
                sys.stdout = os.fdopen(w, "w")  # where serve prints its address (pytest holds the old one)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                asyncio.run(server.serve("127.0.0.1:0", c.socket))
            finally:
                os._exit(1)
        os.close(w)
        self.pid = pid
        with os.fdopen(r) as f:
            ready, _, _ = select.select([f], [], [], 30)
            line = f.readline() if ready else ""  # its address once it listens (EOF if it died)
        m = re.search(r"(http://\S+)", line)
        if m is None:
            self.stop()
            raise AssertionError(f"gproc web as uid {uid} did not start: {line!r}")
        self.url = m.group(1)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


@needs_root
def test_processes_page_shows_the_masters_refusal_for_another_users_process(browser: tuple[Chromium, str]) -> None:
    """``gproc web`` run by nobody lists root's sleep without signal buttons; a signal sent anyway (as
    a crafted request would) is refused by the master, and the page shows ``gproc kill``'s line."""
    c, d = start_cluster(2, 2)
    os.chmod(os.path.dirname(c.socket), 0o755)  # let nobody reach the master's socket
    w = None
    try:
        w = WebAs(c, NOBODY)

        async def go() -> tuple[Any, Any, str]:
            _, gpid = await start_sleep(c, "node1")
            async with tab(browser[0], w.url, browser[1], "processes-refused") as t:
                await t.js("document.querySelector('a[data-tab=procs]').click(); true")
                row = f"document.querySelector('#ps-table tr[data-gpid=\"{gpid}\"]')"
                await t.wait_for(f"!!{row}", f"root's gpid {gpid}")
                buttons = await t.js(f"{row}.querySelectorAll('button').length")
                answer = await t.js(f"signalProcess({gpid}, 'KILL')")
                shown = await t.wait_for("document.getElementById('ps-error').textContent", "the refusal")
            cli = c.gproc("kill", "-KILL", str(gpid))  # what the CLI says, for the same request, as root it succeeds
            return buttons, answer, f"{shown}\n{cli.returncode}"

        buttons, answer, shown = asyncio.run(go())
    finally:
        if w is not None:
            w.stop()
        stop_cluster(c, d)
    text, rc = shown.rsplit("\n", 1)
    assert buttons == 0, "no signal buttons on another user's process"
    assert answer["error"] == text and re.fullmatch(r"gproc: kill \d+: permission denied", text), (answer, text)
    assert rc == "0", "root's own sleep was still running after nobody's signal"


def test_tree_page_in_chromium_shows_a_frozen_node_lost(browser: tuple[Chromium, str], tmpdir_short: str) -> None:
    """64 nodes: 63 of a local cluster and one daemon this test started; SIGSTOP on that one (by its
    process group) and the tree page marks it lost. The liveness rule takes 3-4 s and the page asks
    every 0.5 s (4-5 s here when the machine is quiet); the bound is looser so that a loaded machine's
    timing cannot fail the test: what is tested is that the page shows it, not how fast."""
    c, d = start_cluster(63, 4)
    victim = w = None
    try:
        victim = node("victim", "100", c.master_address, c.key, os.path.join(tmpdir_short, "victim.log"))
        w = Web(c)

        async def go() -> str:
            async with tab(browser[0], w.url, browser[1], "tree-frozen") as t:
                state = "document.querySelector('#tree-body tr[data-node=victim] td:last-child')?.textContent"
                await t.wait_for(f"{state} === 'up'", "the victim up")
                summary = await t.wait_for(
                    "document.getElementById('tree-summary').textContent.includes('64 nodes up')"
                    " && document.getElementById('tree-summary').textContent",
                    "64 nodes up",
                )
                assert victim is not None
                victim.signal(signal.SIGSTOP)
                await t.wait_for(f"{state} === 'lost'", "the frozen victim lost", deadline=20.0)
                return str(summary)

        summary = asyncio.run(go())
    finally:
        if victim is not None:
            victim.end()  # SIGCONT, then SIGKILL: nothing of it is left stopped
        if w is not None:
            w.stop()
        stop_cluster(c, d)
    assert "64 nodes up, 0 lost" in summary, summary


ODD_ONE = 'echo same; if [ "$GPROC_NAME" = node5 ]; then echo odd; exit 1; fi; echo even'


def test_job_page_in_chromium_shows_the_b_and_diff_views_as_gproc_output_does(
    cluster16: LocalCluster, web16: Web, browser: tuple[Chromium, str]
) -> None:
    async def go() -> tuple[int, dict[str, tuple[str, str]]]:
        k = client.Cluster(cluster16.socket)
        job = await k.exec(["sh", "-c", ODD_ONE], "./**", batch=True, timeout=60, localbin=True)
        await k.wait(job=job.id)
        views = {}
        async with tab(browser[0], web16.url, browser[1], "job-views") as t:
            await t.js("document.querySelector('a[data-tab=jobs]').click(); true")
            link = f"document.querySelector('#jobs-table a[data-job=\"{job.id}\"]')"
            await t.wait_for(f"!!{link}", f"job {job.id} in the list")
            await t.js(f"{link}.click(); true")
            for view in ("b", "diff"):
                await t.js(f"document.querySelector('#job-views a[data-view={view}]').click(); true")
                await t.wait_for(f"document.getElementById('job-output').dataset.view === '{view}'", f"the {view} view")
                views[view] = (
                    str(await t.js("document.getElementById('job-output').textContent")),
                    str(await t.js("document.getElementById('job-stderr').textContent")),
                )
        return job.id, views

    job, views = asyncio.run(go())
    for view, switch in (("b", "-b"), ("diff", "--diff")):
        cli = cluster16.gproc("output", switch, str(job))
        assert cli.returncode == 1, cli.stderr
        assert views[view] == (cli.stdout, cli.stderr), (view, views[view], cli.stdout, cli.stderr)
    assert "node[0-4,6-15] (15)" in views["b"][0] and "node5 (1)" in views["b"][0], views["b"]
    assert "-even\n+odd\n" in views["diff"][0] and "node5: exit 1" in views["diff"][1], views["diff"]


def test_web_signal_and_view_requests_refuse_bad_input_in_one_line(web16: Web) -> None:
    async def go() -> list[tuple[int, str]]:
        got = []
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            for form in ({"gpid": "7", "sig": "TERM"}, {"gpid": 7, "sig": "HUP"}, {"gpid": 999999, "sig": "TERM"}):
                async with s.post(web16.base + "api/kill", json=form) as r:
                    got.append((r.status, (await r.json())["error"]))
            async with s.post(web16.base + "api/kill", data="gpid=7&sig=TERM") as r:
                got.append((r.status, (await r.json())["error"]))
            for path in ("api/output/1?view=tree", "api/output/x?view=b", "api/output/999999?view=b"):
                async with s.get(web16.base + path) as r:
                    got.append((r.status, (await r.json())["error"]))
        return got

    got = asyncio.run(go())
    assert [status for status, _ in got] == [400, 400, 404, 415, 400, 400, 404], got
    assert all(msg.startswith("gproc: ") and "\n" not in msg for _, msg in got), got
    assert "not a gpid" in got[0][1] and "unknown signal 'HUP'" in got[1][1], got
    assert got[2][1] == "gproc: kill 999999: no such process", got
