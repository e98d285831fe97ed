"""The relay as a real process between a client and the fake PMS."""

import http.client
import socket
import struct
import subprocess
import uuid

import pytest

from clusterplex.core import protocol
from testbed import cluster as cl


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with cl.Cluster(tmp_path_factory.mktemp("relay"), workers=0) as c:
        yield c


def cap(job=None, secret=cl.SECRET):
    return protocol.relay_prefix(secret.encode(), job or uuid.uuid4().hex)


def request(listen, method, path, **kw):
    """One request on a fresh connection; returns (status, body text)."""
    host, port = listen.rsplit(":", 1)
    h = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        h.request(method, path, **kw)
        r = h.getresponse()
        return r.status, r.read().decode("latin-1")
    finally:
        h.close()


def from_address(listen, source, path):
    """A request sent from another local address (127.0.0.2 stands for a stranger on the LAN)."""
    host, port = listen.rsplit(":", 1)
    h = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        h.request("PUT", path)
        r = h.getresponse()
        return r.status, r.read().decode()
    finally:
        h.close()


def raw(c, data):
    host, port = c.relay.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        return s.recv(65536).decode("latin-1")


def recorded(c, marker):
    return [r for r in c.pms_requests() if marker in r["path"]]


def test_progress_put_reaches_pms_from_loopback_with_query_and_token(c):
    key = uuid.uuid4().hex
    status, body = request(c.relay.listen, "PUT",
                           f"{cap()}/video/:/transcode/session/{key}/u1/progress?progress=12.5&size=-22&remaining=3",
                           headers={"X-Plex-Token": cl.PLEX_TOKEN, "X-Plex-Http-Pipeline": "infinite"})
    assert status == 206 and body
    [rec] = recorded(c, key)
    assert rec["method"] == "PUT" and rec["remote"] == "127.0.0.1"
    assert rec["path"] == f"/video/:/transcode/session/{key}/u1/progress"
    assert rec["query"] == {"progress": "12.5", "size": "-22", "remaining": "3"}
    assert rec["headers"]["X-Plex-Token"] == cl.PLEX_TOKEN


def test_chunked_manifest_post_passes_through_chunked(c):
    key = uuid.uuid4().hex
    body = [b"media-00028.ts,224.0,232.0\n", b"#media-00029.ts,232.0,240.0\n"]
    status, _ = request(c.relay.listen, "POST",
                        f"{cap()}/video/:/transcode/session/{key}/u2/manifest?X-Plex-Http-Pipeline=infinite",
                        body=iter(body), encode_chunked=True,
                        headers={"Transfer-Encoding": "chunked", "Connection": "close"})
    assert status == 200
    [rec] = recorded(c, key)
    assert rec["headers"].get("Transfer-Encoding") == "chunked"
    assert rec["body"] == b"".join(body).decode()


def test_response_body_streams_back(c):
    status, body = request(c.relay.listen, "GET", f"{cap()}/livetv/sessions/a/b/index.m3u8?offset=0.000000")
    assert status == 200 and body


def test_client_gone_mid_answer_is_not_an_error(c):
    """PMS kills a transcoder while the relay streams it a Live TV segment: routine, not a traceback."""
    mark = c.relay.log_size()
    host, port = c.relay.listen.rsplit(":", 1)
    h = http.client.HTTPConnection(host, int(port), timeout=10)
    h.request("GET", f"{cap()}/livetv/sessions/a/b/0.ts")
    r = h.getresponse()
    assert r.status == 200 and r.read(4096)[:1] == b"\x47"
    h.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # RST, as a SIGKILL would
    r.close()
    h.close()
    c.relay.wait_log("client went away", 10, since=mark)
    status, body = request(c.relay.listen, "GET", f"{cap()}/livetv/sessions/a/b/index.m3u8")
    assert "Error handling request" not in c.relay.log()[mark:]
    assert status == 200 and body.startswith("#EXTM3U")


@pytest.mark.parametrize("path,reason", [
    ("/video/:/transcode/session/k/u/progress", "missing job capability"),
    (f"/_cp/{'a' * 32}/{'0' * 32}/video/:/transcode/session/k/u/progress", "invalid job capability"),
    ("CAP/library/sections", "only Plex transcode"),
    ("CAP/video/:/transcode/../../library/sections", "path not allowed"),
    ("CAP/video/:/transcode/%2e%2e/%2e%2e/:/prefs", "path not allowed"),
])
def test_refused_paths(c, path, reason):
    before = len(c.pms_requests())
    status, body = request(c.relay.listen, "GET", path.replace("CAP", cap()))
    assert status == 403 and reason in body
    assert len(c.pms_requests()) == before


def test_capability_from_another_cluster_is_refused(c):
    status, _ = request(c.relay.listen, "GET", cap(secret="z" * 40) + "/video/:/transcode/session/k/u/progress")
    assert status == 403


def test_no_open_proxy(c):
    reply = raw(c, b"GET http://example.invalid/video/:/transcode/x HTTP/1.1\r\nHost: example.invalid\r\n"
                   b"Connection: close\r\n\r\n")
    assert reply.startswith("HTTP/1.1 403") or reply.startswith("HTTP/1.1 400"), reply[:80]
    reply = raw(c, b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n")
    assert reply.split(" ")[1] in ("400", "403", "405"), reply[:80]


def test_pms_down_gives_502_with_the_reason(c):
    cfg = c.pms_config("relay-down", plex_url="http://127.0.0.1:9", relay={"listen": "127.0.0.1:0"})
    d = cl.Daemon("relay-down", cl.command("clusterplex-relay") + ["--config", str(cfg)], c.root).start()
    try:
        status, body = request(d.listen, "PUT", cap() + "/video/:/transcode/session/k/u/progress?progress=1")
        assert status == 502 and "PMS unreachable at http://127.0.0.1:9" in body
    finally:
        d.stop()


def test_relay_waits_for_the_secret(c, tmp_path):
    """Installed before the orchestrator (or before `join`): refuse everything, then work once it exists."""
    secret = tmp_path / "late-secret"
    cfg = c.pms_config("relay-late", secret_file=str(secret), relay={"listen": "127.0.0.1:0"})
    d = cl.Daemon("relay-late", cl.command("clusterplex-relay") + ["--config", str(cfg)], c.root).start()
    try:
        d.wait_status(r"^not joined: secret file .* not found", 5)
        path = cap() + "/video/:/transcode/session/k/u/progress?progress=1"
        status, body = request(d.listen, "PUT", path)
        assert status == 503 and "not joined" in body
        mark = d.mark()
        secret.write_text(cl.SECRET + "\n")
        d.wait_status(r"^relaying to ", 10, since=mark)
        assert request(d.listen, "PUT", path)[0] == 206
    finally:
        assert d.stop() == 0


def test_only_known_workers_and_allowed_networks_reach_the_relay(c):
    path = cap() + "/video/:/transcode/session/k/u/progress?progress=1"
    status, body = from_address(c.relay.listen, "127.0.0.2", path)
    assert status == 403 and "127.0.0.2 is not a known worker" in body
    cfg = c.pms_config("relay-allow", relay={"listen": "127.0.0.1:0", "allow": ["127.0.0.0/29"]})
    d = cl.Daemon("relay-allow", cl.command("clusterplex-relay") + ["--config", str(cfg)], c.root).start()
    try:
        assert from_address(d.listen, "127.0.0.2", path)[0] == 206
    finally:
        d.stop()
    bad = c.pms_config("relay-bad", relay={"listen": "127.0.0.1:0", "allow": ["10.0.0.0/33"]})
    r = subprocess.run(cl.command("clusterplex-relay") + ["--config", str(bad)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 78 and "/relay/allow:" in r.stderr


def test_callbacks_wait_for_a_restarting_pms(c):
    """PMS restarts: a progress PUT arriving meanwhile is retried (bounded) instead of failing."""
    import threading
    listen = c.pms.listen
    c.pms.stop()
    c.daemons.remove(c.pms)
    result = {}
    path = cap() + "/video/:/transcode/session/restart/u/progress?progress=5"

    def put():
        result["status"] = request(c.relay.listen, "PUT", path)[0]

    t = threading.Thread(target=put)
    t.start()
    try:
        c.relay.wait_status(r"relaying", 5)
        c.pms = cl.Daemon("fake-pms-2", [cl.sys.executable, str(cl.FAKE_PMS), "--listen", listen, "--token",
                                         cl.PLEX_TOKEN], c.root)
        c.daemons.append(c.pms)
        c.pms.start()
    finally:
        t.join(20)
    assert result.get("status") == 206
    assert "not answering" in c.relay.log() and "retrying" in c.relay.log()
