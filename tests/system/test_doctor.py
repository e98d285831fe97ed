"""`clusterplex doctor` against real daemons: a healthy cluster, then deliberately broken setups
(share not mounted on one worker, Plex's transcode directory not the workers' transcode_root,
the relay unreachable from the workers' namespaces, codecs missing, the shim not diverted), each
with its own message. The fake Plex install is a temp dir with a real dpkg-divert database."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from clusterplex.worker import hardware
from testbed import cluster as cl
from testbed.netcluster import DirectCluster, NetCluster
from tests.fakes.codec_server import FakeCodecServer

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / "debian" / "plex-transcoder-shim"
NAME = "Plex Transcoder"


def fake_plex(root, divert=True):
    """A Plex install in ``root``: Plex's transcoder, and (``divert``) the package's preinst done for
    real with dpkg-divert in a throwaway admindir, then the shim at Plex's path."""
    plex, admin = root / "plex", root / "dpkg"
    plex.mkdir(parents=True)
    admin.mkdir()
    (admin / "diversions").write_text("")
    shutil.copy(cl.STANDIN, plex / NAME)
    if divert:
        subprocess.run(["dpkg-divert", "--admindir", str(admin), "--package", "clusterplex-pms", "--rename",
                        "--divert", str(plex / NAME) + ".distrib", "--add", str(plex / NAME)],
                       check=True, capture_output=True, timeout=30)
        shutil.copy(SHIM, plex / NAME)
    return plex, admin


def preferences(path, transcode_dir=None, **attrs):
    if transcode_dir is not None:
        attrs["TranscoderTempDirectory"] = str(transcode_dir)
    text = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<Preferences MachineIdentifier="x" {text}/>\n')
    return path


def doctor(*args, wrap=None, timeout=60):
    cmd = cl.command("clusterplex") + ["doctor", *map(str, args)]
    r = subprocess.run(wrap(cmd) if wrap else cmd, capture_output=True, text=True, timeout=timeout)
    return r


def doctor_json(*args, **kw):
    r = doctor(*args, "--json", **kw)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    out = json.loads(r.stdout)
    return r.returncode, out


def by(findings, check, host=""):
    [f] = [f for f in findings if f["check"] == check and f["host"] == host]
    return f


class ShareNotMountedOnWorker1(cl.Cluster):
    """worker1 runs in a mount namespace of its own where ``share`` is an empty mount point: the
    media share as a worker sees it when it is not mounted (the directory is there, the files not)."""

    def __init__(self, root, share, **kw):
        self.share = share
        super().__init__(root, **kw)

    def wrap(self, role, cmd):
        if role != "worker1":
            return cmd
        return ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                'mount -t tmpfs -o mode=0755 none "$0"; exec "$@"', str(self.share)] + cmd


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """One loopback cluster; on worker1 the media share is not mounted, and a NAS path maps to where
    its mount should be (and is not)."""
    tmp = tmp_path_factory.mktemp("doctor")
    nas, share = tmp / "nas", tmp / "share"
    for d in (nas, share):
        d.mkdir()
        (d / "Movie (2020).mkv").write_bytes(b"\x1aE\xdf\xa3" + b"\0" * 60)
    over = {1: {"path_map": [{"from": str(nas), "to": str(tmp / "mnt" / "nas")}]}}
    plex, admin = fake_plex(tmp / "install")
    with ShareNotMountedOnWorker1(tmp / "c", share, workers=2, worker_overrides=over) as c:
        (c.media / "Movie (2021).mkv").write_bytes(b"\x1aE\xdf\xa3" + b"\0" * 60)
        cfg = c.pms_config("doctor", original_transcoder=str(plex / NAME) + ".distrib")
        s = {"c": c, "tmp": tmp, "nas": nas, "share": share, "cfg": cfg}
        s["base"] = pms_args(s, plex, admin)
        yield s


def pms_args(setup, plex, admin):
    return ["--role", "pms", "--config", setup["cfg"], "--plex-dir", plex, "--dpkg-admindir", admin,
            "--plex-user", "root", "--plex-db", setup["tmp"] / "none.db"]


def test_healthy_cluster_all_checks_ok(setup):
    c, tmp = setup["c"], setup["tmp"]
    prefs = preferences(tmp / "Preferences.xml", c.transcode_root)
    sample = c.media / "Movie (2021).mkv"
    r = doctor(*setup["base"], "--plex-preferences", prefs, "--sample", sample)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 warnings, 0 failed" in r.stdout and "FAIL" not in r.stdout
    code, out = doctor_json(*setup["base"], "--plex-preferences", prefs, "--sample", sample)
    assert code == 0 and out["ok"] and out["roles"] == ["pms"]
    statuses = {(f["host"], f["check"]): f["status"] for f in out["findings"]}
    assert set(statuses.values()) == {"ok"}, out["findings"]
    for w in ("worker0", "worker1"):
        for check in ("worker", "transcoder", "media", "transcode-root", "transcode-path", "relay", "codecs", "uid",
                      "clock"):
            assert statuses[(w, check)] == "ok"
    for check in ("config", "shim", "transcode-dir", "orchestrator", "workers"):
        assert statuses[("", check)] == "ok"
    assert "diverted by clusterplex-pms" in by(out["findings"], "shim")["message"]
    assert "reaches the relay at " + c.relay.url in by(out["findings"], "relay", "worker0")["message"]
    # the probe left nothing in the shared transcode directory
    assert not [p for p in c.transcode_root.iterdir() if p.name.startswith(".clusterplex-doctor-")]


def test_share_not_mounted_on_one_worker(setup):
    c, tmp, share = setup["c"], setup["tmp"], setup["share"]
    prefs = preferences(tmp / "Preferences.xml", c.transcode_root)
    code, out = doctor_json(*setup["base"], "--plex-preferences", prefs, "--sample", share / "Movie (2020).mkv")
    assert code == 1
    f = by(out["findings"], "media", "worker1")
    assert f["status"] == "fail"
    assert f["message"] == (f"cannot see the media: {share}/Movie (2020).mkv: not found (the nearest existing "
                            f"directory is {share}: share not mounted, or mounted elsewhere?).")
    assert by(out["findings"], "media", "worker0")["status"] == "ok"
    assert [(x["host"], x["check"]) for x in out["findings"] if x["status"] != "ok"] == [("worker1", "media")]


def test_share_mounted_elsewhere_on_one_worker(setup):
    c, tmp, nas = setup["c"], setup["tmp"], setup["nas"]
    prefs = preferences(tmp / "Preferences.xml", c.transcode_root)
    r = doctor(*setup["base"], "--plex-preferences", prefs, "--sample", nas / "Movie (2020).mkv")
    assert r.returncode == 1, r.stdout + r.stderr
    mapped = tmp / "mnt" / "nas" / "Movie (2020).mkv"
    assert (f"FAIL  worker1: media: cannot see the media: {nas}/Movie (2020).mkv (= {mapped} there, by path_map): "
            f"not found (the nearest existing directory is {tmp}: share not mounted, or mounted elsewhere?)"
            in r.stdout), r.stdout
    assert "fix: mount the media share on worker1 at the same path as on the Plex host" in r.stdout
    assert f"ok    worker0: media: sees the media: {nas}/Movie (2020).mkv is readable." in r.stdout


def test_wrong_transcode_path(setup):
    c, tmp = setup["c"], setup["tmp"]
    elsewhere = tmp / "plexdata" / "Cache"
    elsewhere.mkdir(parents=True)
    prefs = preferences(tmp / "Preferences.xml", elsewhere)
    code, out = doctor_json(*setup["base"], "--plex-preferences", prefs, "--sample", c.media / "Movie (2021).mkv")
    assert code == 1
    for w in ("worker0", "worker1"):
        f = by(out["findings"], "transcode-path", w)
        assert f["status"] == "fail"
        assert f["message"] == (f"Plex writes transcodes to {elsewhere} (TranscoderTempDirectory in {prefs}), but "
                                f"{w}'s transcode_root is {c.transcode_root}: every job sent there is refused and "
                                f"plays fall back to the Plex host.")
        assert "Transcoder temporary directory" in f["fix"]
    # Plex's default when the setting is absent: Cache next to Preferences.xml
    support = tmp / "Plex Media Server"
    support.mkdir()
    prefs = preferences(support / "Preferences.xml")
    code, out = doctor_json(*setup["base"], "--plex-preferences", prefs, "--sample", c.media / "Movie (2021).mkv")
    f = by(out["findings"], "transcode-path", "worker0")
    assert code == 1 and f["status"] == "fail" and f"to {support}/Cache (Plex's default" in f["message"]
    f = by(out["findings"], "transcode-dir")          # and it does not exist here
    assert f["status"] == "fail" and f["message"].startswith(
        f"Plex's transcode directory {support}/Cache (Plex's default: TranscoderTempDirectory is not set in {prefs}): "
        f"does not exist (the nearest existing directory is {support}: shared directory not mounted?) (checked as ")
    # the shared root given on the command line: Plex's setting is compared with it directly
    prefs = preferences(tmp / "Preferences.xml", elsewhere)
    code, out = doctor_json(*setup["base"], "--plex-preferences", prefs, "--transcode-root", c.transcode_root)
    f = by(out["findings"], "transcode-dir")
    assert f["status"] == "fail" and f"not to the shared transcode root {c.transcode_root}" in f["message"]


def test_shim_not_diverted(setup, tmp_path):
    c = setup["c"]
    plex, admin = fake_plex(tmp_path, divert=False)
    prefs = preferences(tmp_path / "Preferences.xml", c.transcode_root)
    code, out = doctor_json(*pms_args(setup, plex, admin), "--plex-preferences", prefs,
                            "--sample", c.media / "Movie (2021).mkv")
    assert code == 1
    f = by(out["findings"], "shim")
    assert f["status"] == "fail"
    assert f["message"] == (f"the shim is not installed: {plex}/{NAME} is Plex's own transcoder (no dpkg diversion), "
                            f"so every transcode runs on this host.")
    assert f["fix"].startswith("install the shim: apt install clusterplex-pms")
    assert [x["check"] for x in out["findings"] if x["status"] != "ok"] == ["shim"]

    # diverted, but Plex's real binary is gone from the diverted name
    plex2, admin2 = fake_plex(tmp_path / "gone")
    (plex2 / (NAME + ".distrib")).unlink()
    code, out = doctor_json(*pms_args(setup, plex2, admin2), "--plex-preferences", prefs)
    f = by(out["findings"], "shim")
    assert code == 1 and f["message"].startswith(f"Plex's real transcoder at {plex2}/{NAME}.distrib is missing")


def test_missing_codecs(tmp_path):
    version = "1a2b3c4-5678"
    transcoder = tmp_path / NAME
    transcoder.write_text(f"#!/bin/sh\n# Plex codec version: {version}\nexit 0\n")
    transcoder.chmod(0o755)
    (tmp_path / "codecs.txt").write_text("libh264_decoder\n")
    with FakeCodecServer() as srv:       # knows no library for this version: every download is a 404
        over = {0: {"transcoder": str(transcoder), "codecs": {
            "enabled": True, "dir": str(tmp_path / "codecs"), "server": srv.codecs_url,
            "list": str(tmp_path / "codecs.txt")}}}
        with cl.Cluster(tmp_path / "c", workers=1, worker_overrides=over, wait_ready=False) as c:
            c.workers[0].wait_status(r"404", 15)
            c.orchestrator.wait_status(r"^0 of 1 workers ready, 1 not_ready", 15)
            prefs = preferences(tmp_path / "Preferences.xml", c.transcode_root)
            code, out = doctor_json("--role", "pms", "--config", c.pms_config("doctor"), "--plex-preferences", prefs,
                                    "--plex-user", "root", "--plex-dir", tmp_path / "noplex",
                                    "--plex-db", tmp_path / "none.db")
            assert code == 1
            f = by(out["findings"], "codecs", "worker0")
            arch = hardware.plex_arch()
            assert f["status"] == "fail"
            assert f["message"].startswith(f"Plex codec libraries {version} ({arch}) missing: 0/1 present (")
            assert "404" in f["message"] and "takes no jobs without them" in f["message"]
            assert "clusterplex worker codecs --refresh" in f["fix"]
            assert by(out["findings"], "worker", "worker0")["status"] == "fail"
            # the same seen from the worker's own host
            r = doctor("--role", "worker", "--worker-config", c.root / "worker0.yaml", "--worker", c.workers[0].url,
                       "--service-user", "root", "--orchestrator", c.orchestrator.url, "--relay", c.relay.url)
            assert r.returncode == 1
            assert f"FAIL  worker0: codecs: Plex codec libraries {version} ({arch}) missing: 0/1" in r.stdout, r.stdout
            assert "ok    orchestrator: 1 orchestrator(s) connected to this worker." in r.stdout
            assert "ok    orchestrator: the orchestrator at " in r.stdout
            assert "ok    worker0: relay: reaches the relay at" in r.stdout


def test_worker_host_healthy(setup):
    c = setup["c"]
    r = doctor("--role", "worker", "--worker-config", c.root / "worker0.yaml", "--worker", c.workers[0].url,
               "--service-user", "root", "--orchestrator", c.orchestrator.url, "--relay", c.relay.url,
               "--sample", c.media / "Movie (2021).mkv")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 warnings, 0 failed" in r.stdout and "skip" not in r.stdout, r.stdout
    # a worker whose secret is not the cluster's: the orchestrator refuses it
    wrong = c.root / "wrong-secret"
    wrong.write_text("x" * 40 + "\n")
    cfg = json.loads((c.root / "worker0.yaml").read_text())
    cfg["secret_file"] = str(wrong)
    cl.write_yaml(c.root / "worker-wrong.yaml", cfg)
    r = doctor("--role", "worker", "--worker-config", c.root / "worker-wrong.yaml", "--worker", c.workers[0].url,
               "--service-user", "root", "--orchestrator", c.orchestrator.url)
    assert r.returncode == 1
    assert f"FAIL  orchestrator: the orchestrator at {c.orchestrator.url} does not accept this host's cluster " \
           f"secret" in r.stdout, r.stdout


def test_orchestrator_down_or_wrong_secret(setup, tmp_path):
    c = setup["c"]
    prefs = preferences(tmp_path / "Preferences.xml", c.transcode_root)
    wrong = tmp_path / "secret"
    wrong.write_text("y" * 40 + "\n")
    cfg = c.pms_config("doctor-wrong", secret_file=str(wrong))
    code, out = doctor_json("--role", "pms", "--config", cfg, "--plex-preferences", prefs, "--plex-user", "root",
                            "--plex-dir", tmp_path, "--plex-db", tmp_path / "none.db")
    f = by(out["findings"], "orchestrator")
    assert code == 1 and f["status"] == "fail" and "does not accept this host's cluster secret" in f["message"]
    code, out = doctor_json(*setup["base"], "--plex-preferences", prefs, "--orchestrator", "http://127.0.0.1:9")
    f = by(out["findings"], "orchestrator")
    assert code == 1 and f["message"].startswith("cannot reach the orchestrator at http://127.0.0.1:9: ")


class RelayOnLoopback(NetCluster):
    """The relay listens on 127.0.0.1 of the Plex host only: the port the workers use is closed to them."""

    def pms_config(self, name, mode="both", **over):
        path = super().pms_config(name, mode=mode, **over)
        if name == "relay":
            data = json.loads(path.read_text())
            data["relay"] = dict(data["relay"], listen="127.0.0.1:32499")
            cl.write_yaml(path, data)
        return path


def test_relay_unreachable_from_the_workers_namespaces(lan, tmp_path):
    with RelayOnLoopback(tmp_path / "c", lan, workers=1) as c:
        prefs = preferences(tmp_path / "Preferences.xml", c.transcode_root)
        advertise = f"http://{c.orch_host.addr}:32499"
        code, out = doctor_json("--role", "pms", "--config", c.pms_config("doctor"), "--plex-preferences", prefs,
                                "--plex-user", "root", "--plex-dir", tmp_path / "noplex",
                                "--plex-db", tmp_path / "none.db", "--timeout", "5", wrap=c.orch_host.exec)
        assert code == 1
        f = by(out["findings"], "relay", "worker0")
        assert f["status"] == "fail"
        assert f["message"].startswith(f"cannot reach the relay at {advertise}: ")
        assert "Plex never hears about the transcode's progress" in f["message"]
        assert "relay.listen" in f["fix"] and "relay.advertise" in f["fix"]
        assert by(out["findings"], "orchestrator")["status"] == "ok"       # found over mDNS, authenticated
        fails = {(x["host"], x["check"]) for x in out["findings"] if x["status"] == "fail"}
        assert fails == {("worker0", "relay"), ("", "shim")}      # no Plex installed in this namespace test


def test_relay_off_the_workers_must_be_allowed_without_auth(lan, tmp_path):
    plex, admin = fake_plex(tmp_path / "install")
    with DirectCluster(tmp_path / "c", lan, workers=1) as c:
        (c.media / "a.mkv").write_bytes(b"x")
        cfg = c.pms_config("doctor", original_transcoder=str(plex / NAME) + ".distrib")
        args = ["--role", "pms", "--config", cfg, "--plex-dir", plex, "--dpkg-admindir", admin, "--plex-user", "root",
                "--sample", c.media / "a.mkv", "--plex-db", tmp_path / "none.db"]
        worker_ip = c.worker_hosts[0].addr
        prefs = preferences(tmp_path / "Preferences.xml", c.transcode_root, allowedNetworks="10.0.0.0/8")
        code, out = doctor_json(*args, "--plex-preferences", prefs, wrap=c.orch_host.exec)
        f = by(out["findings"], "allowed-networks")
        assert code == 1 and f["status"] == "fail"
        assert f["message"].startswith(f"relay.enabled is false, but Plex does not allow {worker_ip} without auth "
                                       f"(allowedNetworks: 10.0.0.0/8)")
        assert "allowed without auth" in f["fix"]
        relay = by(out["findings"], "relay", "worker0")
        assert relay["status"] == "ok" and relay["message"] == f"reaches Plex directly (relay disabled) at {c.pms.url}."
        prefs = preferences(tmp_path / "Preferences.xml", c.transcode_root,
                            allowedNetworks="10.0.0.0/8,198.51.100.0/24")
        code, out = doctor_json(*args, "--plex-preferences", prefs, wrap=c.orch_host.exec)
        assert code == 0 and {f["status"] for f in out["findings"]} == {"ok"}, out["findings"]
