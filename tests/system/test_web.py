"""The orchestrator's web page in a real headless browser (Debian's chromium), driven over the
DevTools protocol (aiohttp's WebSocket client), against a running test cluster.

Chromium listens for DevTools on 127.0.0.1 only and resolves no host name but 127.0.0.1; the
page itself must load nothing but the orchestrator's own files. Waits are event-driven: a
MutationObserver inside the page resolves when the DOM shows what the test waits for.
"""

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import uuid

import aiohttp
import pytest

from clusterplex.core import protocol
from testbed import cluster as cl

pytestmark = pytest.mark.system

HOSTILE = '<img src=x onerror="document.title=\'pwned\'">w1'


def chromium():
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: the web page test needs Debian's chromium "
                    "(tests/setup.sh installs it: apt-get install chromium)")
    return exe


class Browser:
    """One headless chromium and one page, over a flattened DevTools session."""

    def __init__(self, profile):
        self.proc = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--no-first-run",
             "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-default-apps", "--disable-extensions", "--disable-breakpad",
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=dict(os.environ, DBUS_SESSION_BUS_ADDRESS="disabled:"))
        out = cl.read_until(self.proc.stderr, "DevTools listening on ", 60)
        while not re.search(rb"DevTools listening on \S+\n", out):
            out += cl.read_until(self.proc.stderr, "\n", 10)
        self.ws_url = re.search(rb"DevTools listening on (\S+)\n", out).group(1).decode()
        self.stderr = [out]
        # keep draining chromium's (chatty) stderr so it never blocks on a full pipe
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self.events = []
        self._pending = {}
        self._next = 0

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    async def open(self):
        assert self.ws_url.startswith("ws://127.0.0.1:"), self.ws_url
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.ws_url, max_msg_size=0)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.call(f"{domain}.enable", session=self.session)

    async def _read(self):
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                self.events.append(data)

    async def call(self, method, session=None, **params):
        self._next += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, 30)

    async def navigate(self, url):
        await self.call("Page.navigate", session=self.session, url=url)

    async def evaluate(self, expression, timeout=30):
        result = await asyncio.wait_for(self.call("Runtime.evaluate", session=self.session, expression=expression,
                                                  awaitPromise=True, returnByValue=True), timeout)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, predicate, timeout=30, what="the page"):
        """Resolve when ``predicate`` (a JS expression) is truthy; re-checked on every DOM change."""
        js = ("new Promise((resolve) => {"
              f"  const check = () => {{ try {{ const v = ({predicate}); if (v) {{ obs.disconnect(); resolve(v); }} }}"
              "    catch (e) {} };"
              "  const obs = new MutationObserver(check);"
              "  obs.observe(document, {subtree: true, childList: true, characterData: true, attributes: true});"
              "  check();"
              "})")
        try:
            return await self.evaluate(js, timeout)
        except asyncio.TimeoutError:
            text = await self.evaluate("document.body ? document.body.innerText : ''", 10)
            raise AssertionError(f"{what}: not shown within {timeout}s:\n{text}") from None

    def errors(self):
        """Console errors, exceptions and failed requests seen so far (CSP violations included)."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def requests(self):
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    async def close(self):
        if getattr(self, "ws", None) is not None:
            await self.ws.close()
            await self.http.close()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._drain.join(5)
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    with cl.Cluster(root, workers=2, worker_overrides={1: {"name": HOSTILE}}) as c:
        (c.media / "input.mkv").touch()
        yield c


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.stop()


def held_shim(c, mode="remote", extra=(), outputs=()):
    key, uid = f"w{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
    sdir = c.session_dir(key, uid)
    argv = ["-x_test_pidfile", str(sdir / "pids.json"), "-x_test_stderr", "transcoder-up", *extra,
            "-i", str(c.media / "input.mkv"), *outputs, "-progressurl",
            f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]
    return c.shim(argv, sdir, mode=mode), f"{key}/{uid}", sdir


def put_progress(c, job_id, session, percent):
    """What the job's transcoder does every half second: PUT its progress to PMS, via the relay."""
    prefix = protocol.relay_prefix(cl.SECRET.encode(), job_id)
    key, uid = session.split("/")
    host, port = c.relay.listen.rsplit(":", 1)
    h = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        h.request("PUT", f"{prefix}/video/:/transcode/session/{key}/{uid}/progress?progress={percent}&size=1")
        r = h.getresponse()
        r.read()
        assert r.status // 100 == 2, r.status
    finally:
        h.close()


def row_with(table, session, extra=""):
    """JS: the row of ``table`` whose cells include the text ``session`` (and match ``extra``)."""
    return (f"[...document.querySelectorAll('#{table} tbody tr{extra}')]"
            f".find(tr => [...tr.cells].some(td => td.firstChild && "
            f"td.firstChild.textContent === {json.dumps(session)}))")


def test_the_page_lists_the_workers_and_shows_a_job_appearing_and_finishing(cluster, browser):
    c = cluster

    async def scenario():
        await browser.open()
        try:
            await browser.navigate(c.orchestrator.url + "/")
            # The workers of the running cluster, live.
            names = await browser.wait_for(
                "document.querySelectorAll('#workers tbody tr[data-state=\"ready\"]').length === 2 && "
                "document.getElementById('live').textContent === 'live' && "
                "[...document.querySelectorAll('#workers tbody tr')].map(tr => tr.dataset.name)",
                what="2 ready workers")
            assert sorted(names) == sorted(["worker0", HOSTILE])
            hardware = await browser.evaluate(
                "[...document.querySelectorAll('#workers tbody tr')].map(tr => tr.cells[2].textContent)")
            assert all("threads" in h for h in hardware), hardware
            status = await browser.evaluate("document.getElementById('status').textContent")
            assert status.startswith("2 of 2 workers ready"), status
            # A worker's name is text, never markup.
            assert await browser.evaluate("document.querySelectorAll('img').length") == 0
            assert await browser.evaluate(f"[...document.querySelectorAll('#workers td.name')]"
                                          f".some(td => td.firstChild.textContent === {json.dumps(HOSTILE)})")

            # A job appears (held by the stand-in transcoder) with its session, worker and a running clock.
            proc, session, sdir = held_shim(c, extra=("-x_test_hold", "60"))
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, cl.read_until, proc.stderr, "transcoder-up", 30)
                worker = await browser.wait_for(
                    f"(r => r && r.dataset.state === 'running' && r.cells[2].textContent)"
                    f"({row_with('jobs', session)})", what="the running job")
                assert worker in ("worker0", HOSTILE)
                await browser.wait_for(f"(r => r && /^0:0[1-9]$/.test(r.querySelector('td.time').textContent))"
                                       f"({row_with('jobs', session)})", what="the job's clock ticking")
                # The transcoder's progress callback (through the relay) shows as the job's progress.
                job_id = await browser.evaluate(f"{row_with('jobs', session)}.dataset.id")
                await asyncio.get_running_loop().run_in_executor(None, put_progress, c, job_id, session, 42.5)
                await browser.wait_for(f"(r => r && r.querySelector('td.progress').textContent === '42.5%')"
                                       f"({row_with('jobs', session)})", what="the job's progress")
                # ... and finishes: the transcoder is stopped on its worker (exit status 255).
                pid = json.loads((sdir / "pids.json").read_text())["pid"]
                os.kill(pid, signal.SIGTERM)
                assert proc.wait(30) == 255
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=10)
            await browser.wait_for(f"!{row_with('jobs', session)} && "
                                   f"(r => r && r.cells[3].textContent.startsWith('exit code 255'))"
                                   f"({row_with('finished', session)})", what="the finished job")
            reason = await browser.wait_for(
                f"(r => r && r.dataset.kind === 'remote_failed' && r.cells[4].textContent)"
                f"({row_with('recent', session)})", what="the failure in the recent list")
            assert reason == f"transcoder on {worker} ended with exit code 255"

            # A job that ends well shows as done.
            proc, session, _ = held_shim(c, extra=("-x_test_exit", "0"))
            assert proc.wait(30) == 0
            proc.communicate(timeout=10)
            await browser.wait_for(f"(r => r && r.cells[3].textContent === 'done')({row_with('finished', session)})",
                                   what="the successful job")

            # No worker has a VA-API HEVC encoder: Plex's own transcoder runs it (mode both).
            proc, session, _ = held_shim(c, mode="both", extra=("-x_test_exit", "0"),
                                          outputs=("-codec:0", "hevc_vaapi"))
            assert proc.wait(30) == 0
            proc.communicate(timeout=10)
            reason = await browser.wait_for(
                f"(r => r && r.cells[1].textContent === 'fell back to local' && r.cells[4].textContent)"
                f"({row_with('recent', session, '[data-kind=fell_back_local]')})", what="the local fallback")
            assert "no worker available" in reason and "lacks hevc:vaapi:encode" in reason

            assert await browser.evaluate("document.title") == "ClusterPlex"
            assert browser.errors() == []
            own = c.orchestrator.url + "/"
            assert all(u.startswith(own) for u in browser.requests()), browser.requests()
        finally:
            await browser.close()

    asyncio.run(asyncio.wait_for(scenario(), 150))


def test_the_page_reconnects_after_an_orchestrator_restart(cluster, browser):
    c = cluster

    async def scenario():
        await browser.open()
        try:
            await browser.navigate(c.orchestrator.url + "/")
            await browser.wait_for("document.getElementById('live').textContent === 'live' && "
                                   "document.querySelectorAll('#workers tbody tr').length === 2", what="the workers")
            await asyncio.get_running_loop().run_in_executor(None, c.restart_orchestrator)
            await browser.wait_for("document.getElementById('live').textContent === 'live' && "
                                   "Number(document.body.dataset.snapshots) >= 2 && "
                                   "document.querySelectorAll('#workers tbody tr[data-state=\"ready\"]').length === 2",
                                   timeout=60, what="the workers after the restart")
        finally:
            await browser.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))
