"""clusterplex doctor's pure checks (facts in, findings out), the probe's wire validation, and its
small local I/O pieces (dpkg-divert in a throwaway admindir, file tests, Plex's library database)."""

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from clusterplex.cli.doctor import checks, plexhost
from clusterplex.core import protocol

REPO = Path(__file__).resolve().parents[2]
T = "/usr/lib/plexmediaserver/Plex Transcoder"
D = T + ".distrib"


# --- Plex's files ------------------------------------------------------------------------

def test_preferences_transcode_dir_set_unset_and_broken():
    prefs = checks.parse_preferences('<?xml version="1.0"?><Preferences TranscoderTempDirectory="/transcode/" '
                                     'allowedNetworks="10.0.0.0/8"/>')
    assert checks.plex_transcode_dir(prefs, "/p/Preferences.xml") == (
        "/transcode", "TranscoderTempDirectory in /p/Preferences.xml")
    for empty in ("<Preferences/>", '<Preferences TranscoderTempDirectory="  "/>'):
        d, source = checks.plex_transcode_dir(checks.parse_preferences(empty), "/p/Plex Media Server/Preferences.xml")
        assert d == "/p/Plex Media Server/Cache" and source.startswith("Plex's default")
    with pytest.raises(checks.PreferencesError, match="not valid XML"):
        checks.parse_preferences("<Preferences")
    with pytest.raises(checks.PreferencesError, match="root element is <Settings>"):
        checks.parse_preferences("<Settings/>")


def test_parse_divert():
    assert checks.parse_divert("clusterplex-pms\n", D + "\n", T) == ("clusterplex-pms", D)
    assert checks.parse_divert("", T + "\n", T) is None
    assert checks.parse_divert("", "", T) is None
    assert checks.parse_divert("", "/elsewhere\n", T) == ("LOCAL", "/elsewhere")


def test_divert_query_against_real_dpkg_divert(tmp_path):
    admin, plex = tmp_path / "dpkg", tmp_path / "plex"
    admin.mkdir()
    plex.mkdir()
    (admin / "diversions").write_text("")
    path = str(plex / "Plex Transcoder")
    Path(path).write_text("plex binary")
    assert plexhost.divert_query(path, str(admin)) is None
    subprocess.run(["dpkg-divert", "--admindir", str(admin), "--package", "clusterplex-pms", "--rename", "--divert",
                    path + ".distrib", "--add", path], check=True, capture_output=True)
    assert plexhost.divert_query(path, str(admin)) == ("clusterplex-pms", path + ".distrib")
    assert Path(path + ".distrib").read_text() == "plex binary" and not os.path.exists(path)
    with pytest.raises(OSError, match="dpkg-divert --listpackage failed"):
        plexhost.divert_query(path, str(admin), dpkg_divert="false")
    with pytest.raises(OSError):
        plexhost.divert_query(path, str(admin), dpkg_divert=str(REPO / "no-such-dpkg-divert"))


def test_sample_from_plex_db(tmp_path):
    media = tmp_path / "movie.mkv"
    media.write_bytes(b"x")
    db = tmp_path / "library.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE media_parts (id INTEGER PRIMARY KEY, file TEXT)")
    con.executemany("INSERT INTO media_parts (id, file) VALUES (?, ?)",
                    [(1, str(media)), (2, "/gone/away.mkv"), (3, "relative.mkv")])
    con.commit()
    con.close()
    assert plexhost.sample_from_plex_db(str(db)) == str(media)
    assert plexhost.sample_from_plex_db(str(tmp_path / "missing.db")) is None
    (tmp_path / "junk.db").write_text("not sqlite")
    assert plexhost.sample_from_plex_db(str(tmp_path / "junk.db")) is None


# --- the shim ----------------------------------------------------------------------------

def shim(diversion=("clusterplex-pms", D), present=True, path_is_shim=True, distrib_present=True,
         distrib_is_shim=False, original=D):
    return checks.check_shim(T, diversion, present, path_is_shim, distrib_present, distrib_is_shim, original)


def test_shim_ok():
    f = shim()
    assert f["status"] == "ok" and "diverted by clusterplex-pms" in f["message"]


@pytest.mark.parametrize("kw, says, fix", [
    ({"diversion": None, "path_is_shim": False}, "the shim is not installed: " + T + " is Plex's own transcoder",
     "apt install clusterplex-pms"),
    ({"diversion": None}, "dpkg knows no diversion for it: the next Plex upgrade overwrites it",
     "apt install --reinstall clusterplex-pms"),
    ({"diversion": None, "present": False, "path_is_shim": False}, "does not exist and is not diverted",
     "install plexmediaserver"),
    ({"diversion": ("other-pkg", T + ".real")}, "is diverted to " + T + ".real by other-pkg",
     "dpkg-divert --package other-pkg --rename --remove"),
    ({"path_is_shim": False}, "is diverted by clusterplex-pms but is Plex's own binary, not the shim",
     "--reinstall clusterplex-pms"),
    ({"present": False, "path_is_shim": False}, "but is missing", "--reinstall clusterplex-pms"),
    ({"distrib_present": False}, "Plex's real transcoder at " + D + " is missing",
     "apt install --reinstall plexmediaserver"),
    ({"distrib_is_shim": True}, "is a copy of the shim", "apt install --reinstall plexmediaserver"),
    ({"original": "/opt/plex/transcoder"}, "original_transcoder /opt/plex/transcoder", "set original_transcoder"),
])
def test_shim_failures(kw, says, fix):
    f = shim(**kw)
    assert f["status"] == "fail" and says in f["message"] and fix in f["fix"], f


# --- per-worker checks --------------------------------------------------------------------

def test_transcode_dir_against_transcode_root():
    ok = checks.check_worker_transcode_dir("w", "/transcode", "src", {"root": "/transcode", "mapped": "/transcode"})
    assert ok["status"] == "ok"
    assert ok["message"] == "Plex's transcode directory /transcode is transcode_root /transcode."
    mapped = checks.check_worker_transcode_dir("w", "/transcode", "src", {"root": "/mnt/t", "mapped": "/mnt/t/plex"})
    assert mapped["status"] == "ok" and "is /mnt/t/plex here, inside transcode_root /mnt/t" in mapped["message"]
    bad = checks.check_worker_transcode_dir("w", "/var/lib/x/Cache", "default", {"root": "/transcode",
                                                                                 "mapped": "/var/lib/x/Cache"})
    assert bad["status"] == "fail" and bad["host"] == "w"
    assert bad["message"].startswith("Plex writes transcodes to /var/lib/x/Cache (default), but w's transcode_root "
                                     "is /transcode")
    prefix = checks.check_worker_transcode_dir("w", "/transcode2", "s", {"root": "/transcode", "mapped": ""})
    assert prefix["status"] == "fail"         # a name prefix is not a subdirectory
    assert checks.check_worker_transcode_dir("w", "", "", {"root": "/transcode"}) is None


def test_codecs():
    base = {"enabled": True, "version": "v1", "arch": "linux-x86_64-standard", "state": "ready", "present": 3,
            "total": 3, "reason": ""}
    assert checks.check_codecs("w", base)["status"] == "ok"
    assert checks.check_codecs("w", dict(base, version=None, state=None))["status"] == "ok"
    off = checks.check_codecs("w", dict(base, enabled=False, state=None))
    assert off["status"] == "warn" and "codecs.enabled is false" in off["message"]
    dl = checks.check_codecs("w", dict(base, state="downloading", present=1))
    assert dl["status"] == "warn" and "still downloading: 1/3" in dl["message"]
    err = checks.check_codecs("w", dict(base, state="error", present=0, reason="libx: HTTP 404"))
    assert err["status"] == "fail"
    assert err["message"] == ("Plex codec libraries v1 (linux-x86_64-standard) missing: 0/3 present (libx: HTTP "
                              "404); the worker takes no jobs without them.")


def test_uid():
    assert checks.check_uid("w", "plex", 999, 999, 999)["status"] == "ok"
    assert checks.check_uid("w", "plex", 999, 999, None)["status"] == "ok"
    f = checks.check_uid("w", "plex", 999, 998, 998)
    assert f["status"] == "fail" and f["message"].startswith("the worker runs as uid 998 and user plex there is "
                                                             "uid 998, but plex is uid 999 on the Plex host")
    assert "usermod -u 999 plex" in f["fix"]
    assert checks.check_uid("w", "plex", 999, 999, 1000)["status"] == "fail"
    assert checks.check_uid("w", "plex", None, 0, 0)["status"] == "warn"


def test_clock():
    # worker 3 s ahead of the orchestrator, which is 0.5 s behind us
    assert checks.clock_offset(1003.0, 1000.0, 2000.0, 2000.5) == pytest.approx(2.5)
    assert checks.check_clock("w", 0.3)["status"] == "ok"
    assert checks.check_clock("w", -2.0)["status"] == "ok"
    warn = checks.check_clock("w", 2.5)
    assert warn["status"] == "warn" and "ahead of this host's by 2.5 s" in warn["message"]
    fail = checks.check_clock("w", -31)
    assert fail["status"] == "fail" and "behind this host's by 31.0 s" in fail["message"]


def test_relay_and_sample_messages():
    ok = checks.check_relay("w", {"url": "http://p:32499", "kind": "relay", "ok": True})
    assert ok["status"] == "ok"
    refused = checks.check_relay("w", {"url": "http://p:32499", "kind": "relay", "ok": False, "status": 403,
                                       "problem": "HTTP 403: 10.0.0.5 is not a known worker"})
    assert refused["status"] == "fail" and "relay.allow" in refused["fix"]
    plex = checks.check_relay("w", {"url": "http://p:32400", "kind": "plex", "ok": False, "problem": "refused"})
    assert "Plex directly (relay disabled)" in plex["message"] and "relay.direct_url" in plex["fix"]
    s = checks.check_sample("w", {"path": "/media/a.mkv", "mapped": "/mnt/media/a.mkv", "ok": False,
                                  "problem": "not found"})
    assert s["message"] == "cannot see the media: /media/a.mkv (= /mnt/media/a.mkv there, by path_map): not found."


def result(**over):
    r = {"name": "w0", "version": "0.1.0", "state": "ready", "reason": "", "clock": 1000.0, "uid": 0,
         "plex_user": "plex", "plex_uid": 0,
         "transcoder": {"path": "/t", "ok": True, "problem": ""},
         "sample": {"path": "/m/a.mkv", "mapped": "/m/a.mkv", "ok": True, "problem": ""},
         "transcode": {"root": "/transcode", "ok": True, "problem": "", "plex_dir": "/transcode",
                       "mapped": "/transcode"},
         "codecs": {"enabled": True, "version": None, "arch": None, "state": None, "present": 0, "total": 0,
                    "reason": ""},
         "relay": {"url": "http://p:32499", "kind": "relay", "ok": True, "problem": "", "status": 200}}
    r.update(over)
    return r


CTX = {"plex_dir": "/transcode", "plex_dir_source": "s", "sample": True, "relay": True, "plex_user": "plex",
       "plex_uid": 0, "orchestrator_clock": 2000.0, "received": 2000.0}


def test_worker_result_all_ok_and_each_problem():
    entry = {"name": "w0", "address": "10.0.0.2:3501", "state": "ready", "result": result(), "received": 1000.0}
    found = checks.check_worker_result(entry, CTX)
    assert [f["check"] for f in found] == ["worker", "transcoder", "media", "transcode-root", "transcode-path",
                                           "relay", "codecs", "uid", "clock"]
    assert {f["status"] for f in found} == {"ok"} and {f["host"] for f in found} == {"w0"}
    bad = dict(entry, result=result(state="not_ready", reason="transcode_root /transcode does not exist",
                                    transcode={"root": "/transcode", "ok": False, "problem": "does not exist",
                                               "plex_dir": "/transcode", "mapped": "/transcode"}))
    statuses = {f["check"]: f["status"] for f in checks.check_worker_result(bad, CTX)}
    assert statuses["worker"] == "fail" and statuses["transcode-root"] == "fail"
    gone = {"name": "w1", "address": "10.0.0.3:3501", "state": "offline", "reason": "unreachable: refused",
            "error": "not connected (unreachable: refused)"}
    [f] = checks.check_worker_result(gone, CTX)
    assert f["status"] == "fail" and "not connected to this worker at 10.0.0.3:3501: unreachable: refused" in \
        f["message"]
    silent = {"name": "w2", "address": "a:1", "state": "ready", "error": "no answer within 10 s"}
    [f] = checks.check_worker_result(silent, CTX)
    assert f["message"] == "did not answer the probe: no answer within 10 s."


def test_allowed_networks():
    assert checks.covered_by("10.0.0.0/8, 192.168.1.0/255.255.255.0", "192.168.1.7")
    assert not checks.covered_by("10.0.0.0/8,junk", "192.168.2.7")
    assert not checks.covered_by("", "10.0.0.1")
    assert checks.check_allowed_networks(["10.1.2.3"], "10.0.0.0/8", True)["status"] == "ok"
    f = checks.check_allowed_networks(["10.1.2.3", "172.16.0.2"], "10.0.0.0/8", True)
    assert f["status"] == "fail" and "does not allow 172.16.0.2 without auth" in f["message"]
    assert checks.check_allowed_networks(["10.1.2.3"], "", False)["status"] == "warn"


def test_format_and_exit_code():
    fs = [checks.finding("shim", "ok", "fine."), checks.finding("media", "fail", "gone.", "mount it", "w1"),
          checks.finding("clock", "warn", "off.", "ntp", "w2")]
    text = checks.format_text(fs, "title")
    assert text.splitlines() == ["title", "  ok    shim: fine.", "  FAIL  w1: media: gone.", "        fix: mount it",
                                 "  WARN  w2: clock: off.", "        fix: ntp", "1 ok, 1 warnings, 1 failed"]
    assert checks.exit_code(fs) == 1 and checks.exit_code(fs[:1] + fs[2:]) == 0


def test_check_probe():
    assert protocol.check_probe({}) == {"sample": "", "transcode_dir": "", "relay_url": "", "relay_kind": "relay",
                                        "plex_user": "plex", "timeout": 10.0}
    good = {"sample": "/m/a b.mkv", "transcode_dir": "/t", "relay_url": "http://10.0.0.1:32499",
            "relay_kind": "plex", "plex_user": "plex", "timeout": 5}
    assert protocol.check_probe(dict(good, extra="dropped")) == good
    for bad, msg in ((None, "object"), ({"sample": "rel.mkv"}, "absolute"), ({"sample": "/a\x00b"}, "string"),
                     ({"sample": "/" + "a" * 5000}, "string"), ({"relay_url": "file:///etc/passwd"}, "http"),
                     ({"relay_url": "http://a b"}, "http"), ({"relay_kind": "ssh"}, "relay_kind"),
                     ({"plex_user": "pl ex"}, "user name"), ({"plex_user": ""}, "user name"),
                     ({"timeout": 0}, "timeout"), ({"timeout": 61}, "timeout"), ({"timeout": True}, "timeout"),
                     ({"timeout": "5"}, "timeout")):
        with pytest.raises(protocol.ProtocolError, match=msg):
            protocol.check_probe(bad)


def test_check_probe_result():
    r = result()
    assert protocol.check_probe_result(dict(r, junk=1)) == r
    no_optional = {k: v for k, v in r.items() if k not in ("sample", "relay")}
    assert protocol.check_probe_result(no_optional) == no_optional
    assert protocol.check_probe_result(dict(r, sample=None)) == no_optional | {"relay": r["relay"]}
    for bad, msg in ((dict(r, uid="0"), "result.uid"), (dict(r, uid=True), "result.uid"),
                     (dict(r, transcode=dict(r["transcode"], ok="yes")), "result.transcode.ok"),
                     ({k: v for k, v in r.items() if k != "codecs"}, "result.codecs missing"),
                     (dict(r, codecs=[]), "result.codecs must be an object"), ([], "result must be an object"),
                     (dict(r, reason="x" * protocol.MAX_PROBE_RESULT), "too large")):
        with pytest.raises(protocol.ProtocolError, match=msg):
            protocol.check_probe_result(bad)


# --- local I/O pieces ----------------------------------------------------------------------------
