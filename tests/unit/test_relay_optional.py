"""Relay optional (``relay.enabled: false``): the configuration rules and the shim's callback rewrite."""

import json
import subprocess
import sys

import pytest

from clusterplex.core import args, config, protocol
from clusterplex import shim
from testbed.fixtures import load_argv as fixture

SECRET = b"s3cr3t-" + b"0123456789abcdef" * 3
JOB = "0123456789abcdef0123456789abcdef"


def pms(relay, **top):
    return config.parse("pms", json.dumps({"relay": relay, **top}), "/etc/clusterplex/pms.yaml")


# --- configuration --------------------------------------------------------------------------

def test_relay_is_on_by_default_and_direct_url_is_empty():
    cfg = config.parse("pms", "{}")
    assert cfg.relay.enabled is True and cfg.relay.direct_url == ""


@pytest.mark.parametrize("url", ["http://192.168.1.10:32400", "https://plex.lan:32400", "https://plex.lan:32400/"])
def test_relay_off_with_a_direct_url_http_or_https(url):
    cfg = pms({"enabled": False, "direct_url": url})
    assert cfg.relay.enabled is False and cfg.relay.direct_url == url.rstrip("/")


@pytest.mark.parametrize("relay,message", [
    ({"enabled": False}, "/relay/direct_url: required when /relay/enabled is false"),
    ({"enabled": False, "direct_url": ""}, "/relay/direct_url: required when /relay/enabled is false"),
    ({"enabled": False, "direct_url": "ftp://plex.lan:32400"}, "/relay/direct_url: expected a URL like http://"),
    ({"enabled": False, "direct_url": "plex.lan:32400"}, "/relay/direct_url: expected a URL like http://"),
    ({"enabled": False, "direct_url": "http://127.0.0.1:32400"}, "/relay/direct_url: http://127.0.0.1:32400 is a "
                                                                 "loopback address: each worker would call itself"),
    ({"enabled": False, "direct_url": "https://localhost:32400"}, "loopback address"),
    ({"enabled": False, "direct_url": "http://[::1]:32400"}, "loopback address"),
    ({"enabled": True, "direct_url": "http://127.0.0.2:32400"}, "loopback address"),
    ({"enabled": "no", "direct_url": "http://192.168.1.10:32400"}, "/relay/enabled: expected true or false"),
])
def test_bad_relay_settings_name_the_key(relay, message):
    with pytest.raises(config.ConfigError) as e:
        pms(relay)
    assert str(e.value).startswith("/etc/clusterplex/pms.yaml: /relay/")
    assert message in str(e.value)
    assert e.value.exit_code == 78


def test_a_missing_direct_url_stops_the_relay_with_exit_78(tmp_path):
    cfg = tmp_path / "pms.yaml"
    cfg.write_text("relay:\n  enabled: false\n")
    r = subprocess.run([sys.executable, "-m", "clusterplex.relay", "--config", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert f"{cfg}: /relay/direct_url: required when /relay/enabled is false" in r.stderr


# --- where the callbacks go -------------------------------------------------------------------

def test_callbacks_go_to_the_relay_with_the_job_capability_by_default():
    cfg = pms({"advertise": "http://plexhost.lan:32499"})
    assert shim.callback_base(cfg, SECRET, JOB) == "http://plexhost.lan:32499" + protocol.relay_prefix(SECRET, JOB)


@pytest.mark.parametrize("direct", ["http://192.168.1.10:32400", "https://plex.lan:32400"])
@pytest.mark.parametrize("name", ["F1", "F2", "F3", "F4", "F5", "F6"])
def test_relay_off_points_every_callback_at_the_direct_url(name, direct):
    cfg = pms({"enabled": False, "direct_url": direct, "advertise": "http://plexhost.lan:32499"})
    argv = fixture(name)
    out = args.rewrite_urls(argv, cfg.plex_url, shim.callback_base(cfg, SECRET, JOB))
    assert len(out) == len(argv)
    assert not [a for a in out if "127.0.0.1:32400" in a or "/_cp/" in a or "32499" in a]
    changed = [(a, b) for a, b in zip(argv, out) if a != b]
    # exactly the PMS URLs changed, host and port only: paths and queries stay as PMS wrote them
    assert changed and all(a.startswith("http://127.0.0.1:32400/") for a, _ in changed)
    assert all(b == direct + a[len("http://127.0.0.1:32400"):] for a, b in changed)
    for opt in ("progressurl", "manifest_name", "segment_list"):
        for value in args.option_values(out, opt):
            if "://" in value:
                assert value.startswith(direct + "/video/:/transcode/session/")
    assert args.inputs(out) == args.inputs(argv)    # the IPTV input of F6 is not PMS: untouched


def test_relay_off_rewrites_a_live_tv_input_and_plex_url_spellings():
    cfg = pms({"enabled": False, "direct_url": "https://plex.lan:32400"}, plex_url="http://127.0.0.1:32400")
    argv = ["-i", "http://localhost:32400/livetv/sessions/a/b/index.m3u8?offset=0.000000&X-Plex-Token=t",
            "-progressurl", "http://[::1]:32400/video/:/transcode/session/k/u/progress", "-y", "media-%05d.ts",
            "-i", "http://127.0.0.1:324001/not-pms"]
    out = args.rewrite_urls(argv, cfg.plex_url, shim.callback_base(cfg, SECRET, JOB))
    assert out == ["-i", "https://plex.lan:32400/livetv/sessions/a/b/index.m3u8?offset=0.000000&X-Plex-Token=t",
                   "-progressurl", "https://plex.lan:32400/video/:/transcode/session/k/u/progress", "-y",
                   "media-%05d.ts", "-i", "http://127.0.0.1:324001/not-pms"]
