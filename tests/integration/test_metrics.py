"""Metrics and the live feed of real daemons: /metrics of the orchestrator and the relay after real
jobs through shims, the relay's access rules for /metrics, the Grafana dashboard's queries, SSE."""

import http.client
import json
import re
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import asyncio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clusterplex.core import protocol
from testbed import cluster as cl

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
CLUSTERPLEX_NAMES = ("jobs_posted", "jobs_completed", "jobs_succeeded", "jobs_failed", "jobs_killed",
                     "job_posters_active", "workers_active", "worker_load_cpu", "worker_load_tasks",
                     "worker_load_ops", "worker_load_rank")


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with cl.Cluster(tmp_path_factory.mktemp("metrics"), workers=2) as c:
        yield c


def scrape_text(url, source=None):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    h = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0) if source else None)
    try:
        h.request("GET", "/metrics")
        r = h.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        h.close()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(sample name as exposed, sorted labels): value}. (prometheus_client's parser would rename
    ClusterPlex's counters to *_total: here the names are checked exactly as written.)"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                  for k, v in _LABEL.findall(m.group(2) or "")}
        out[(m.group(1), tuple(sorted(labels.items())))] = float(m.group(3))
    list(text_string_to_metric_families(text))          # and the official parser accepts all of it
    return out


def scrape(url):
    status, ctype, text = scrape_text(url)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype, text)
    return parse(text)


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def outcome(samples, o):
    return value(samples, "clusterplex_jobs_total", outcome=o)


def media(c):
    """An input that exists (the stand-in's test hooks act before it reads anything)."""
    path = c.media / "input.mkv"
    path.touch()
    return str(path)


def run_shim(c, argv, mode="remote", timeout=60):
    argv = [media(c) if a == "x" else a for a in argv]
    key, uid = f"m{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
    sdir = c.session_dir(key, uid)
    full = argv + ["-progressurl", f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress",
                   "out.ts"]
    p = c.shim(full, sdir, mode=mode)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, err.decode(errors="replace"), f"{key}/{uid}"


def test_clusterplex_names_exact_in_the_text(c):
    status, ctype, text = scrape_text(c.orchestrator.url)
    assert status == 200
    for name in CLUSTERPLEX_NAMES[:5]:
        assert re.search(rf"^# TYPE {name} counter\n{name} \d+\.\d+$", text, re.M), name
    for name in ("job_posters_active", "workers_active"):
        assert re.search(rf"^# TYPE {name} gauge\n{name} \d+\.\d+$", text, re.M), name
    for name in CLUSTERPLEX_NAMES[7:]:
        assert f'\n{name}{{worker_name="worker0"}} ' in text and f'\n{name}{{worker_name="worker1"}} ' in text
    s = scrape(c.orchestrator.url)
    assert value(s, "workers_active") == 2
    assert value(s, "clusterplex_worker_state", worker_name="worker0", state="ready") == 1
    assert value(s, "clusterplex_worker_max_jobs", worker_name="worker1") == 2
    assert value(s, "clusterplex_build_info", daemon="orchestrator", version="0.1.0") == 1


def test_jobs_are_counted_by_outcome(c):
    before = scrape(c.orchestrator.url)
    recent_before = len(c.api("/api/v1/recent"))

    code, err, ok_session = run_shim(c, ["-x_test_exit", "0", "-i", "x"])
    assert code == 0, err
    code, err, bad_session = run_shim(c, ["-x_test_exit", "3", "-i", "x"])
    assert code == 3, err
    # No worker has a VA-API HEVC encoder: mode both runs Plex's own transcoder here (the stand-in exits 0).
    code, err, local_session = run_shim(c, ["-x_test_exit", "0", "-i", "x", "-codec:0", "hevc_vaapi"], mode="both")
    assert code == 0 and "running locally: no worker available" in err, err
    # Both workers refuse an output outside the session dir: refusals, then no worker (mode remote: fails).
    key, uid = f"m{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
    p = c.shim(["-x_test_exit", "0", "-i", media(c), "/etc/evil-output.ts"], c.session_dir(key, uid), mode="remote")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "refusing output /etc/evil-output.ts" in err.decode(), err
    # A held job that PMS stops (SIGKILL to the shim): cancelled once the worker reports the exit.
    key, uid = f"m{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
    sdir = c.session_dir(key, uid)
    p = c.shim(["-x_test_stderr", "transcoder-up", "-x_test_hold", "60", "-i", media(c), "-progressurl",
                f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"],
               sdir, mode="remote")
    cl.read_until(p.stderr, "transcoder-up", 30)
    during = scrape(c.orchestrator.url)
    assert value(during, "job_posters_active") == 1
    assert value(during, "clusterplex_jobs_active", state="running") == 1
    p.kill()
    p.communicate(timeout=10)
    # cancelled at once, but finished (and counted) only when its worker reports the transcoder's exit
    wait_feed(c, lambda snap: any(j["session"] == f"{key}/{uid}" for j in snap["finished"]))

    after = scrape(c.orchestrator.url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)
    assert delta("jobs_posted") == 5
    assert delta("jobs_completed") == 5
    assert delta("jobs_succeeded") == 1
    assert delta("jobs_failed") == 3          # exit code 3, and two jobs no worker could take
    assert delta("jobs_killed") == 1
    outcomes = ("remote_ok", "remote_failed", "no_worker", "fell_back_local", "cancelled", "resumed")
    assert [delta("clusterplex_jobs_total", outcome=o) for o in outcomes] == [1, 1, 2, 1, 1, 0]
    assert delta("clusterplex_dispatch_latency_seconds_count") == 3     # the jobs whose transcoder started
    assert 0 < delta("clusterplex_dispatch_latency_seconds_sum") < 3 * 10
    assert delta("clusterplex_job_duration_seconds_count", outcome="remote_ok") == 1
    assert delta("clusterplex_job_duration_seconds_count", outcome="remote_failed") == 1
    assert delta("clusterplex_job_duration_seconds_count", outcome="cancelled") == 1
    assert delta("clusterplex_job_refusals_total", worker_name="worker0") == 1
    assert delta("clusterplex_job_refusals_total", worker_name="worker1") == 1
    assert value(after, "job_posters_active") == 0

    recent = c.api("/api/v1/recent")
    new = recent[:len(recent) - recent_before]
    kinds = {(r["kind"], r["session"]) for r in new}
    assert ("remote_failed", bad_session) in kinds
    assert ("no_worker", local_session) in kinds and ("fell_back_local", local_session) in kinds
    refused = [r for r in new if r["kind"] == "refused"]
    assert {r["worker"] for r in refused} == {"worker0", "worker1"}
    assert all("refusing output /etc/evil-output.ts" in r["reason"] for r in refused)
    failed = next(r for r in new if r["kind"] == "remote_failed")
    assert failed["reason"].endswith("ended with exit code 3") and failed["worker"] in ("worker0", "worker1")
    assert ok_session not in {r["session"] for r in new}


def test_relay_metrics_count_relayed_and_refused_requests(c):
    before = scrape(c.relay.url)
    job = uuid.uuid4().hex
    prefix = protocol.relay_prefix(cl.SECRET.encode(), job)
    host, port = c.relay.listen.rsplit(":", 1)
    for path in (f"{prefix}/video/:/transcode/session/k/{job}/progress?progress=12.5&X-Plex-Token={cl.PLEX_TOKEN}",
                 f"/_cp/{job}/{'0' * 32}/video/:/transcode/session/k/{job}/progress",
                 f"{prefix}/library/sections"):
        h = http.client.HTTPConnection(host, int(port), timeout=10)
        h.request("PUT", path)
        h.getresponse().read()
        h.close()
    after = scrape(c.relay.url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)
    assert delta("clusterplex_relay_requests_total", code="2xx") == 1
    assert delta("clusterplex_relay_latency_seconds_count") == 1
    assert delta("clusterplex_relay_refused_total", reason="capability") == 1
    assert delta("clusterplex_relay_refused_total", reason="path") == 1
    assert value(after, "clusterplex_relay_joined") == 1
    assert value(after, "clusterplex_build_info", daemon="relay", version="0.1.0") == 1


def test_relay_metrics_only_for_this_host_and_metrics_allow(c, tmp_path):
    status, _, text = scrape_text(c.relay.url, source="127.0.0.2")      # a stranger on the LAN
    assert status == 403 and "relay.metrics_allow" in text
    cfg = c.pms_config("relay-metrics", relay={"listen": "127.0.0.1:0", "metrics_allow": ["127.0.0.2/32"],
                                                           "events_socket": ""})
    d = cl.Daemon("relay-metrics", cl.command("clusterplex-relay") + ["--config", str(cfg)], tmp_path).start()
    try:
        url = d.url
        assert scrape_text(url, source="127.0.0.2")[0] == 200
        assert scrape_text(url, source="127.0.0.3")[0] == 403
        # metrics_allow opens /metrics, nothing else: relaying still needs a known worker and a capability
        h = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10,
                                       source_address=("127.0.0.2", 0))
        h.request("PUT", protocol.relay_prefix(cl.SECRET.encode(), "a" * 32) + "/video/:/transcode/session/k/u/x")
        r = h.getresponse()
        assert r.status == 403 and "not a known worker" in r.read().decode()
        h.close()
        refused = scrape(url)
        assert value(refused, "clusterplex_relay_refused_total", reason="metrics_peer") == 1
        assert value(refused, "clusterplex_relay_refused_total", reason="peer") == 1
    finally:
        assert d.stop() == 0


def test_a_bad_metrics_allow_is_a_config_error_with_its_key(c):
    cfg = c.pms_config("relay-bad", relay={"listen": "127.0.0.1:0", "metrics_allow": ["10.0.0.0/99"]})
    r = subprocess.run(cl.command("clusterplex-relay") + ["--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 78 and "/relay/metrics_allow" in r.stderr, r.stderr


def dashboard_metrics():
    """Metric names in the dashboard's PromQL (functions, labels, ranges and keywords left out)."""
    keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}
    names = set()
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)              # strings
        e = re.sub(r"\{[^}]*\}", "", e)                           # label matchers
        e = re.sub(r"\[[^\]]*\]", "", e)                          # ranges
        e = re.sub(r"\b(by|without)\s*\([^)]*\)", "", e)          # grouping labels
        for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(\(?))", e):
            if m.group(1) == "(" or m.group(0) in keywords:
                continue                                           # a function
            names.add(m.group(0))
    return names


def families(text):
    """{family name: sample names} as exposed (histograms: _bucket, _sum, _count)."""
    out = {}
    family = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            out[family] = set()
        elif line and not line.startswith("#"):
            out[family].add(_SAMPLE.match(line).group(1))
    return out


def test_every_metric_the_dashboard_queries_is_exported(c):
    run_shim(c, ["-x_test_exit", "0", "-i", "x"])        # so the histograms have samples
    names = dashboard_metrics()
    assert set(CLUSTERPLEX_NAMES) <= names
    exported = {}
    sample_names = set()
    for url in (c.orchestrator.url, c.relay.url):
        text = scrape_text(url)[2]
        for fam, samples in families(text).items():
            exported[fam] = samples
            sample_names |= samples
        sample_names |= set(exported)
    missing = sorted(n for n in names if n not in sample_names)
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
    # and the ones a running cluster always has carry samples now
    for n in ("workers_active", "worker_load_cpu", "worker_load_rank", "jobs_posted",
              "clusterplex_dispatch_latency_seconds_bucket", "clusterplex_job_duration_seconds_bucket",
              "clusterplex_worker_state", "clusterplex_relay_latency_seconds_bucket", "clusterplex_worker_info"):
        assert n in names and any(n in s for s in exported.values()), n


# --- live feed (SSE) ---------------------------------------------------------------------------

async def read_event(resp, timeout=30):
    """The next SSE event as (name, parsed data), skipping comments."""
    name, data = None, []
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), timeout)).decode()
        if line == "":
            raise EOFError("stream ended")
        line = line.rstrip("\n")
        if line.startswith(":"):
            continue
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            return name, json.loads("\n".join(data))


def wait_feed(c, predicate, timeout=30):
    """Follow the orchestrator's live feed until a snapshot satisfies ``predicate``; return it."""
    async def follow():
        async with aiohttp.ClientSession() as s:
            async with s.get(c.orchestrator.url + "/api/v1/events") as r:
                while True:
                    _, snap = await read_event(r)
                    if predicate(snap):
                        return snap
    return asyncio.run(asyncio.wait_for(follow(), timeout))


def test_live_feed_snapshots_and_clients_that_leave_are_dropped(c):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            a = await s.get(c.orchestrator.url + "/api/v1/events")
            assert a.status == 200 and a.headers["Content-Type"].startswith("text/event-stream")
            name, snap = await read_event(a)
            assert name == "snapshot" and {w["name"] for w in snap["workers"]} == {"worker0", "worker1"}
            async with s.get(c.orchestrator.url + "/api/v1/events") as b:
                _, snap = await read_event(b)
                while snap["clients"] != 2:     # an earlier test's client may not be dropped yet
                    _, snap = await read_event(b)
                a.close()                       # the browser tab goes away
                # Workers report their load every few seconds: each change is a snapshot, and a write
                # to the closed stream drops that client.
                while snap["clients"] != 1:
                    _, snap = await read_event(b)
        return snap
    snap = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert snap["clients"] == 1
    assert c.api("/health")["status"] == "ok"
    assert "Traceback" not in c.orchestrator.log()


def test_static_page_and_headers(c):
    with urllib.request.urlopen(c.orchestrator.url + "/", timeout=5) as r:
        body = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert '<script src="/app.js" defer></script>' in body and "http" not in body.split("<footer>")[0]
    with urllib.request.urlopen(c.orchestrator.url + "/app.js", timeout=5) as r:
        js = r.read().decode()
        assert r.headers["Content-Type"].startswith("application/javascript")
        assert "innerHTML" not in js and "EventSource" in js
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(c.orchestrator.url + "/../etc/passwd", timeout=5)
    assert e.value.code == 404
    e.value.close()


def test_orchestrator_stops_promptly_with_a_live_client(tmp_path):
    c = cl.Cluster(tmp_path, workers=0).start()
    try:
        async def follow():
            async with aiohttp.ClientSession() as s:
                async with s.get(c.orchestrator.url + "/api/v1/events") as r:
                    await read_event(r)
                    proc = await asyncio.create_subprocess_exec("kill", "-TERM", str(c.orchestrator.proc.pid))
                    await proc.wait()
                    with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                        while True:
                            await read_event(r, timeout=10)
        asyncio.run(follow())
        assert c.orchestrator.proc.wait(10) == 0
    finally:
        c.stop()


def test_the_relay_counts_plays_the_shim_runs_locally_on_its_own(c):
    before = scrape(c.relay.url)
    inp = media(c)
    # mode local; a detection pass (always local); a configured local rule; the cluster unreachable (mode both)
    runs = [(dict(mode="local"), "sess"),
            (dict(), "PlexCreditsDetection"),
            (dict(local_rules=[{"argv_contains": "eac3_eae"}]), "sess"),
            (dict(orchestrator="http://127.0.0.1:9"), "sess")]
    for over, cwd_name in runs:
        cwd = c.root / cwd_name
        cwd.mkdir(exist_ok=True)
        argv = ["-x_test_exit", "0", "-i", inp, "-codec:1", "eac3_eae", "out.ts"]
        p = c.shim(argv, cwd, **({"mode": "both"} | over))
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    # garbage on the socket changes nothing and hurts nobody
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"forced_local \xff\x00 nonsense", str(c.root / "shim-events.sock"))
    after = scrape(c.relay.url)

    def delta(outcome, why):
        key = ("clusterplex_jobs_total", (("outcome", outcome), ("why", why)))
        return after.get(key, 0) - before.get(key, 0)
    assert [delta("forced_local", "mode_local"), delta("forced_local", "detection"),
            delta("forced_local", "local_rules"), delta("fell_back_local", "cluster_unreachable")] == [1, 1, 1, 1]
    assert "ignoring a malformed event" in c.relay.log() and "Traceback" not in c.relay.log()


def test_progress_reaches_the_orchestrator_through_the_relay(c):
    key, uid = f"m{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
    session = f"{key}/{uid}"
    p = c.shim(["-x_test_stderr", "transcoder-up", "-x_test_hold", "60", "-i", media(c), "-progressurl",
                f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"],
               c.session_dir(key, uid), mode="remote")
    try:
        cl.read_until(p.stderr, "transcoder-up", 30)
        job = next(j for j in c.api("/api/v1/jobs") if j["session"] == session)
        assert job["progress"] is None
        # what the transcoder does every half second, through the relay (the shim rewrote its URL)
        prefix = protocol.relay_prefix(cl.SECRET.encode(), job["id"])
        host, port = c.relay.listen.rsplit(":", 1)
        h = http.client.HTTPConnection(host, int(port), timeout=10)
        h.request("PUT", f"{prefix}/video/:/transcode/session/{key}/{uid}/progress?progress=42.5&size=100"
                         f"&remaining=12&speed=1.5")
        r = h.getresponse()
        r.read()
        assert r.status // 100 == 2
        h.close()
        snap = wait_feed(c, lambda s: any(j["id"] == job["id"] and j["progress"] == 42.5 for j in s["jobs"]))
        assert snap
        assert next(j for j in c.api("/api/v1/jobs") if j["id"] == job["id"])["progress"] == 42.5
        # Without the job's capability nobody else can set it; junk is refused with a reason.
        forged = json.dumps({"reports": [{"job_id": job["id"], "mac": "0" * 32, "progress": 99},
                                         {"job_id": job["id"], "mac": "\u00e9" * 32, "progress": 99},
                                         {"job_id": 5, "mac": None}, "junk"]}).encode()
        req = urllib.request.Request(c.orchestrator.url + "/api/v1/progress", data=forged, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.load(r) == {"accepted": 0}
        for body in (b"[" * 100000, b"{not json", b'{"reports": 1}'):
            req = urllib.request.Request(c.orchestrator.url + "/api/v1/progress", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=5)
            assert e.value.code == 400
            e.value.close()
        assert next(j for j in c.api("/api/v1/jobs") if j["id"] == job["id"])["progress"] == 42.5
    finally:
        p.kill()
        p.communicate(timeout=10)
    assert "Traceback" not in c.orchestrator.log() + c.relay.log()


def test_live_clients_are_limited(c):
    async def from_peer(s, streams):
        """Streams from one address until refused; the refusal."""
        for _ in range(20):
            r = await s.get(c.orchestrator.url + "/api/v1/events")
            if r.status != 200:
                refused = (r.status, await r.json())
                r.close()
                return refused
            streams.append(r)

    async def scenario():
        sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.0.{10 + i}", 0)))
                    for i in range(10)]            # ten machines, as far as the orchestrator can tell
        streams, refusals = [], []
        try:
            for s in sessions:
                refusals.append(await from_peer(s, streams))
            return len(streams), refusals
        finally:
            for r in streams:
                r.close()
            for s in sessions:
                await s.close()
    opened, refusals = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert 50 <= opened <= 64        # earlier tests may hold a few
    assert refusals[0] == (503, {"error": "too many live clients from 127.0.0.10 (at most 8)"})
    assert refusals[-1] == (503, {"error": "too many live clients"})
    assert c.api("/health")["status"] == "ok"


def test_codec_provisioning_state_is_exported(tmp_path):
    from clusterplex.worker import hardware
    from tests.fakes.codec_server import FakeCodecServer, elf_library
    version, arch, libs = "1a2b3c4-5678", hardware.plex_arch(), ["libh264_decoder", "libaac_decoder", "libaac_encoder"]
    transcoder = tmp_path / "Plex Transcoder"
    transcoder.write_text(f"#!/bin/sh\n# Plex codec version: {version}\nexit 0\n")
    transcoder.chmod(0o755)
    (tmp_path / "codecs.txt").write_text("\n".join(libs) + "\n")
    with FakeCodecServer() as srv:
        srv.stall(libs[0])                       # the first library hangs until we let it go
        for lib in libs:
            srv.put(version, arch, lib, elf_library(arch))
        codec_cfg = {"enabled": True, "dir": str(tmp_path / "codecs"), "server": srv.codecs_url,
                     "list": str(tmp_path / "codecs.txt")}
        over = {0: {"transcoder": str(transcoder), "codecs": codec_cfg}}
        with cl.Cluster(tmp_path / "c", workers=1, worker_overrides=over, wait_ready=False) as c:
            srv.wait_stalled(10)
            wait_feed(c, lambda s: any((w.get("codecs") or {}).get("state") == "downloading" for w in s["workers"]))
            s = scrape(c.orchestrator.url)
            assert value(s, "clusterplex_worker_codecs_state", worker_name="worker0", state="downloading") == 1
            assert value(s, "clusterplex_worker_codecs_state", worker_name="worker0", state="ready") == 0
            assert value(s, "clusterplex_worker_codecs_total", worker_name="worker0") == 3
            assert value(s, "clusterplex_worker_codecs_present", worker_name="worker0") < 3
            assert value(s, "clusterplex_worker_state", worker_name="worker0", state="not_ready") == 1
            srv.release()
            c.wait_workers_ready(1)
            wait_feed(c, lambda s: any((w.get("codecs") or {}).get("state") == "ready" for w in s["workers"]))
            s = scrape(c.orchestrator.url)
            assert value(s, "clusterplex_worker_codecs_state", worker_name="worker0", state="ready") == 1
            assert value(s, "clusterplex_worker_codecs_present", worker_name="worker0") == 3
            assert value(s, "clusterplex_worker_state", worker_name="worker0", state="ready") == 1
            [info] = [dict(k[1]) for k, v in s.items() if k[0] == "clusterplex_worker_info" and v == 1]
            assert info["worker_name"] == "worker0" and info["address"] == c.workers[0].listen
            assert info["plex_codecs"] == version and info["version"] == "0.1.0" and info["source"] == "static"


def test_a_job_that_moves_after_its_worker_died_counts_as_resumed(tmp_path):
    with cl.Cluster(tmp_path, workers=2) as c:
        key, uid = f"m{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
        p = c.shim(["-x_test_stderr", "transcoder-up", "-x_test_hold", "60", "-i", media(c), "-progressurl",
                    f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"],
                   c.session_dir(key, uid), mode="remote")
        try:
            cl.read_until(p.stderr, "transcoder-up", 30)
            [job] = [j for j in c.api("/api/v1/jobs") if j["state"] == "running"]
            victim = next(w for w in c.workers if w.name == job["worker"])
            victim.kill()
            cl.read_until(p.stderr, "restarting it on another worker", 10)
            cl.read_until(p.stderr, "transcoder-up", 10)
            s = scrape(c.orchestrator.url)
            assert outcome(s, "resumed") == 1 and outcome(s, "remote_failed") == 0
            assert value(s, "clusterplex_dispatch_latency_seconds_count") == 1      # first start only
            assert value(s, "workers_active") == 1
            assert value(s, "clusterplex_worker_state", worker_name=victim.name, state="offline") == 1
            [r] = c.api("/api/v1/recent")
            assert r["kind"] == "resumed" and r["worker"] == victim.name and r["session"] == f"{key}/{uid}"
            assert "lost while running the job" in r["reason"] and "from the last segment" in r["reason"]
        finally:
            p.kill()
            p.communicate(timeout=10)
