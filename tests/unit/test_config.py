import subprocess
import sys

import pytest

from clusterplex.core import config


def parse(kind, text):
    return config.parse(kind, text.encode(), "/etc/clusterplex/x.yaml")


def test_defaults():
    o = parse("orchestrator", "")
    assert o.listen == ("0.0.0.0", 3500) and o.strategy == "LOAD_RANK" and o.workers == []
    assert o.discovery.enabled is True and o.discovery.interfaces == []
    w = parse("worker", "{}")
    assert w.listen == ("0.0.0.0", 3501) and w.max_jobs == "auto" and w.transcoder == config.PLEX_TRANSCODER
    p = parse("pms", "")
    assert p.mode == "both" and p.original_transcoder == "/usr/lib/plexmediaserver/Plex Transcoder.distrib"
    assert p.plex_url == "http://127.0.0.1:32400" and p.relay.listen == ("0.0.0.0", 32499)
    assert p.relay.advertise == ""


def test_values():
    o = parse("orchestrator", "listen: '[::1]:99'\nworkers: [a.lan:3501, '10.0.0.2:4000']\nstrategy: RR\n")
    assert o.listen == ("::1", 99) and o.workers == [("a.lan", 3501), ("10.0.0.2", 4000)]


@pytest.mark.parametrize("kind,text,message", [
    ("orchestrator", "strategy: FASTEST", "/strategy: must be one of RR, LOAD_CPU, LOAD_TASKS, LOAD_RANK"),
    ("orchestrator", "listne: 0.0.0.0:1", "/listne: unknown key"),
    ("orchestrator", "workers: [nohost]", "/workers[0]: expected host:port"),
    ("orchestrator", "discovery: {enabled: yes please}", "/discovery/enabled: expected true or false"),
    ("orchestrator", "discovery: {iface: []}", "/discovery/iface: unknown key"),
    ("worker", "max_jobs: 0", "/max_jobs: must be >= 1"),
    ("worker", "max_jobs: many", "/max_jobs: expected an integer"),
    ("worker", "transcode_root: relative/path", "/transcode_root: must be an absolute path"),
    ("worker", "listen: 0.0.0.0:99999", "/listen: port out of range"),
    ("worker", "env: {LD_PRELOAD: [1]}", "/env/LD_PRELOAD: expected a string"),
    ("pms", "mode: sometimes", "/mode: must be one of local, remote, both"),
    ("pms", "relay: {advertise: 'plexhost:32499'}", "/relay/advertise: expected a URL"),
    ("pms", "orchestrator: https://x:1", "/orchestrator: expected a URL"),
    ("pms", "local_rules: [{cwd_has: x}]", "/local_rules[0]/cwd_has: unknown key"),
    ("pms", "- a\n- b", "/: expected a mapping"),
    ("pms", "mode: [unclosed", "invalid YAML (line "),
])
def test_errors_name_the_key(kind, text, message):
    with pytest.raises(config.ConfigError) as e:
        parse(kind, text)
    assert message in str(e.value)
    assert str(e.value).startswith("/etc/clusterplex/x.yaml: ")


def test_secret_file(tmp_path):
    p = tmp_path / "secret"
    with pytest.raises(config.ConfigError, match="not found"):
        config.load_secret(str(p))
    p.write_text("short\n")
    with pytest.raises(config.ConfigError, match="at least 32"):
        config.load_secret(str(p))
    p.write_text("a" * 32 + "\n" + "b" * 32 + "\n")
    with pytest.raises(config.ConfigError, match="exactly one line"):
        config.load_secret(str(p))
    p.write_text("\n  " + "x" * 40 + "  \n")
    assert config.load_secret(str(p)) == b"x" * 40


def test_worker_rewrite_settings_are_checked_at_start(tmp_path):
    bad = tmp_path / "worker.yaml"
    bad.write_text(f"encoder_swaps: {{libx264: hevc_nvenc}}\nlisten: 127.0.0.1:0\nsecret_file: {tmp_path}/s\n"
                   f"discovery: {{enabled: false}}\n")
    r = subprocess.run([sys.executable, "-m", "clusterplex.worker", "--config", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    assert f"{bad}: /encoder_swaps/libx264: must be one of libx264, h264_vaapi, h264_nvenc, h264_qsv" in r.stderr


@pytest.mark.parametrize("daemon", ["orchestrator", "worker", "relay"])
def test_daemons_exit_78_on_bad_config(tmp_path, daemon):
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus_key: 1\n")
    r = subprocess.run([sys.executable, "-m", f"clusterplex.{daemon}", "--config", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    assert f"{bad}: /bogus_key: unknown key" in r.stderr
    r = subprocess.run([sys.executable, "-m", f"clusterplex.{daemon}", "--config", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and "file not found" in r.stderr


def test_shipped_configs_are_valid_and_document_every_key():
    from pathlib import Path
    etc = Path(__file__).resolve().parents[2] / "etc"
    for kind in ("orchestrator", "worker", "pms"):
        path = etc / f"{kind}.yaml"
        config.load(kind, str(path))
        text = path.read_text()
        for key in _keys(config.SCHEMAS[kind]):
            assert f"{key}:" in text, f"{path.name} does not document {key}"


def _keys(section):
    for name, field in section.fields.items():
        yield name
        if isinstance(field, config.Section):
            yield from _keys(field)
        if isinstance(field, config.List) and isinstance(field.item, config.Section):
            yield from _keys(field.item)
