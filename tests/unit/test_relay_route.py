import pytest

from clusterplex.core import protocol
from clusterplex.relay import server as relay

SECRET = b"r" * 40
JOB = "0123456789abcdef" * 2
CAP = protocol.relay_prefix(SECRET, JOB)


@pytest.mark.parametrize("target,upstream", [
    (CAP + "/video/:/transcode/session/k/u/progress?progress=1.0&size=2",
     "/video/:/transcode/session/k/u/progress?progress=1.0&size=2"),
    (CAP + "/video/:/transcode/session/k/u/manifest?X-Plex-Http-Pipeline=infinite",
     "/video/:/transcode/session/k/u/manifest?X-Plex-Http-Pipeline=infinite"),
    (CAP + "/livetv/sessions/a/b/index.m3u8?offset=0", "/livetv/sessions/a/b/index.m3u8?offset=0"),
])
def test_allowed(target, upstream):
    assert relay.route(target, SECRET) == (upstream, None)


@pytest.mark.parametrize("target,reason", [
    ("/video/:/transcode/session/k/u/progress", "missing job capability"),
    ("http://evil.example/" + CAP + "/video/:/transcode/x", "absolute-form"),
    ("evil.example:443", "absolute-form"),
    (f"/_cp/{JOB}/{'0' * 32}/video/:/transcode/x", "invalid job capability"),
    (CAP + "/library/sections", "only Plex transcode"),
    (CAP + "/:/prefs", "only Plex transcode"),
    (CAP + "/video/:/transcode/../../library/sections", "path not allowed"),
    (CAP + "/video/:/transcode/%2e%2e/%2e%2e/library", "path not allowed"),
    (CAP + "/video/:/transcode/x%2f..%2fy", "path not allowed"),
    (CAP + "//video/:/transcode/x", "path not allowed"),
    (CAP + "/video/:/transcode//x", "path not allowed"),
    (CAP, "only Plex transcode"),
])
def test_refused(target, reason):
    upstream, refusal = relay.route(target, SECRET)
    assert upstream is None and refusal[0] == 403 and reason in refusal[1]
