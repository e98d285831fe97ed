"""clusterplex.worker.probe: the checks a worker runs for `clusterplex doctor` (and the doctor on its own host)."""

import asyncio
import os
import tempfile
from pathlib import Path

from clusterplex.core import protocol
from clusterplex.worker import probe as wprobe


def test_nearest_existing(tmp_path):
    (tmp_path / "a").mkdir()
    assert wprobe.nearest_existing(str(tmp_path / "a" / "b" / "c.mkv"), os.path.exists) == str(tmp_path / "a")
    assert wprobe.nearest_existing("/nonexistent-x/y", os.path.exists) == "/"


# --- the probe on the wire -----------------------------------------------------------------

def test_rw_test_and_sample_test(tmp_path):
    assert wprobe.rw_test(str(tmp_path)) == "" and not list(tmp_path.iterdir())
    assert wprobe.rw_test(str(tmp_path / "missing" / "deeper")).startswith(
        f"does not exist (the nearest existing directory is {tmp_path}")
    (tmp_path / "f.mkv").write_bytes(b"x")
    assert wprobe.sample_test(str(tmp_path / "f.mkv")) == ""
    assert wprobe.sample_test(str(tmp_path)) == ""
    assert wprobe.sample_test(str(tmp_path / "nas" / "f.mkv")).startswith("not found (the nearest existing "
                                                                          f"directory is {tmp_path}")


def test_rw_test_as_another_user():
    assert os.geteuid() == 0, "the suite runs as root (it drops to another user here)"
    with tempfile.TemporaryDirectory(dir="/tmp") as top:      # pytest's tmp_path is not reachable for nobody
        hidden = Path(top) / "hidden"
        root = hidden / "transcode"
        root.mkdir(parents=True)
        os.chmod(top, 0o755)
        hidden.chmod(0o700)
        problem, who = wprobe.rw_test_as(str(root), "nobody")
        assert problem.startswith("uid ") and "may not reach it (permission denied on the way)" in problem
        assert who.startswith("user nobody (uid ")
        hidden.chmod(0o755)
        root.chmod(0o755)
        problem, _ = wprobe.rw_test_as(str(root), "nobody")
        assert problem.startswith("cannot write a file as uid ") and "Permission denied" in problem
        root.chmod(0o777)
        assert wprobe.rw_test_as(str(root), "nobody")[0] == ""
        assert not list(root.iterdir())
    assert wprobe.rw_test_as("/tmp", "no-such-user-x")[0] == "user no-such-user-x does not exist here"


def test_probe_here_without_relay(tmp_path):
    root = tmp_path / "transcode"
    root.mkdir()
    facts = {"name": "w", "version": "0", "state": "ready", "reason": "", "transcoder": "/t",
             "transcoder_problem": "", "transcode_root": str(root),
             "path_map": [{"from": "/media", "to": str(tmp_path / "mnt")}],
             "codecs": {"enabled": False, "version": None, "arch": None, "state": None, "present": 0, "total": 0,
                        "reason": ""}, "fingerprint": "abc"}
    probe = protocol.check_probe({"sample": "/media/a.mkv", "transcode_dir": "/media/t", "plex_user": "root"})
    r = asyncio.run(wprobe.probe_here(probe, facts))
    assert protocol.check_probe_result(r) == r
    assert r["sample"]["mapped"] == f"{tmp_path}/mnt/a.mkv" and not r["sample"]["ok"]
    assert r["transcode"]["ok"] and r["transcode"]["mapped"] == f"{tmp_path}/mnt/t"
    assert r["plex_uid"] == 0 and "relay" not in r
