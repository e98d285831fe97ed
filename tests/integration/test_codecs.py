"""CodecManager and fetch_eae against the fake codec server (tests/fakes/codec_server.py) over
loopback: first download, interrupted runs (cancelled, and a process SIGKILLed mid-file), 404s,
the server down then up, transient errors, bad payloads, a full disk, a transcoder upgrade and
pruning, the three Plex arches, EasyAudioEncoder."""

import asyncio
import fcntl
import io
import logging
import os
import re
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import aiohttp
import pytest

from clusterplex.worker import codecs
from clusterplex.worker import hardware as hw
from tests.fakes.codec_server import DEFAULT_LICENSE, ET_EXEC, FakeCodecServer, elf_library

REPO = Path(__file__).resolve().parents[2]
V1, V2 = "8217c1c-4578", "c75335c-a7cfb6836f3ed63280a7eb83"
ARCH = "linux-x86_64-standard"
LIBS = ["libh264_decoder", "libhevc_decoder", "libaac_decoder", "libaac_encoder", "libac3_decoder",
        "libdca_decoder", "libmp3_decoder", "liblibx264_encoder", "libmpeg2video_decoder", "libmpeg4_decoder",
        "libvc1_decoder", "libvp9_decoder"]
DAY = 86400


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Loopback only: no proxy from the environment may take the requests elsewhere."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def srv():
    with FakeCodecServer() as s:
        yield s


def fill(srv, version=V1, arch=ARCH, libs=LIBS, size=20000):
    data = {n: elf_library(arch, size, name=n) for n in libs}
    for name, blob in data.items():
        srv.put(version, arch, name, blob)
    return data


def manager(root, srv, version=V1, arch=ARCH, libs=LIBS, **kw):
    kw.setdefault("backoff", (0.001, 0.01))
    kw.setdefault("retries", 3)
    kw.setdefault("timeout", 5)
    kw.setdefault("concurrency", 3)
    return codecs.CodecManager(root, srv.codecs_url, version, arch, libs, **kw)


def vdir(root, version=V1, arch=ARCH):
    return Path(root) / f"{version}-{arch}"


def leftovers(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".tmp"))


def states(seen):
    """The states progress reports went through (repeats, i.e. count changes, collapsed)."""
    out = []
    for s in seen:
        if not out or out[-1] != s.state:
            out.append(s.state)
    return out


def assert_complete(path, data):
    for name, blob in data.items():
        f = Path(path) / f"{name}.so"
        assert f.read_bytes() == blob, name
        assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert leftovers(path) == []


# --- first download ------------------------------------------------------------------------

def test_first_download_then_nothing_to_do(srv, tmp_path):
    data = fill(srv)
    seen = []
    m = manager(tmp_path, srv, concurrency=2, on_progress=seen.append)
    assert m.path == str(vdir(tmp_path)) and m.state.state == "idle"
    st = asyncio.run(m.ensure())
    assert st.state == "ready" and st.reason == "" and st.failed == {}
    assert (st.present, st.total) == (len(LIBS), len(LIBS))
    assert st.summary() == f"codecs {len(LIBS)}/{len(LIBS)}"
    assert_complete(m.path, data)
    assert srv.count(status=200) == len(LIBS) and srv.max_inflight <= 2
    # progress: downloading with a growing count, then ready
    assert seen[0].state == "downloading" and seen[-1].state == "ready"
    counts = [s.present for s in seen]
    assert counts == sorted(counts) and counts[-1] == len(LIBS)
    # a second round (or a new manager: a worker restart) keeps what is there
    assert asyncio.run(m.ensure()).state == "ready"
    assert asyncio.run(manager(tmp_path, srv).ensure()).summary() == f"codecs {len(LIBS)}/{len(LIBS)}"
    assert srv.count() == len(LIBS)


def test_progress_logged_at_most_every_ten_percent(srv, tmp_path, caplog):
    libs = [f"libc{i}_decoder" for i in range(30)]
    fill(srv, libs=libs, size=2000)
    with caplog.at_level(logging.INFO, logger="clusterplex.worker.codecs"):
        st = asyncio.run(manager(tmp_path, srv, libs=libs, concurrency=4).ensure())
    assert st.state == "ready"
    steps = [r.getMessage() for r in caplog.records if re.fullmatch(r"codecs \d+/30 \(\d+%\)", r.getMessage())]
    assert 1 <= len(steps) <= 10, steps
    assert any("codecs ready: 30 libraries" in r.getMessage() for r in caplog.records)


def test_bad_files_on_disk_are_replaced_and_temp_files_removed(srv, tmp_path):
    data = fill(srv)
    path = vdir(tmp_path)
    path.mkdir(parents=True)
    for name, blob in data.items():
        (path / f"{name}.so").write_bytes(blob)
    (path / f"{LIBS[0]}.so").write_bytes(b"<html>Service Unavailable</html>")
    (path / f"{LIBS[1]}.so").write_bytes(data[LIBS[1]][:5000])              # left by a non-atomic tool
    (path / f"{LIBS[2]}.so").write_bytes(b"")
    (path / f".{LIBS[3]}.so.123.abcd.tmp").write_bytes(b"\x7fELF half")
    st = asyncio.run(manager(tmp_path, srv).ensure())
    assert st.state == "ready"
    assert_complete(path, data)
    assert {r["name"] for r in srv.requests} == set(LIBS[:3])


# --- interrupted runs ----------------------------------------------------------------------

def test_resume_after_cancelled_run(srv, tmp_path):
    data = fill(srv)
    stalled = LIBS[4]
    srv.stall(stalled, after=3000)

    async def interrupted():
        m = manager(tmp_path, srv, concurrency=2)
        task = asyncio.ensure_future(m.ensure())
        await asyncio.to_thread(srv.wait_stalled, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return m.state

    st = asyncio.run(interrupted())
    srv.release()
    path = vdir(tmp_path)
    assert st.state == "downloading" and st.present < len(LIBS)
    assert leftovers(path) == [] and not (path / f"{stalled}.so").exists()
    done_before = {p.name[:-3] for p in path.glob("*.so")}
    st = asyncio.run(manager(tmp_path, srv).ensure())
    assert st.state == "ready"
    assert_complete(path, data)
    for name in done_before:
        assert srv.count(name) == 1, name                 # kept, not fetched again
    assert srv.count(stalled) == 2


KILLED_WORKER = r"""
import asyncio, sys
from clusterplex.worker import codecs

real_open = codecs.files.open_tmp


class Loud:
    # the real temp file; says on stdout when bytes of it reached the disk
    def __init__(self, path):
        self.path, self.f = path, real_open(path)
    def write(self, b):
        n = self.f.write(b)
        self.f.flush()
        print("WROTE", self.path, flush=True)
        return n
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()


codecs.files.open_tmp = Loud
root, server, version, arch, *libs = sys.argv[1:]
asyncio.run(codecs.CodecManager(root, server, version, arch, libs, concurrency=1).ensure())
print("FINISHED", flush=True)
"""


def test_resume_after_killed_worker_leaves_no_half_files(srv, tmp_path):
    """A worker process SIGKILLed in the middle of a library: only a temp file is left, which
    the next start removes; the libraries finished before are kept."""
    data = fill(srv)
    victim = LIBS[2]                   # concurrency 1: LIBS[0] and LIBS[1] are complete by then
    srv.stall(victim, after=8000)
    path = vdir(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(tmp_path), srv.codecs_url, V1, ARCH, *LIBS],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        while True:
            line = proc.stdout.readline()
            assert line and "FINISHED" not in line, f"worker never stalled: {proc.stderr.read()}"
            if line.startswith("WROTE") and f"{victim}.so" in line:
                break
        proc.kill()
        proc.wait()
    srv.release()
    half = leftovers(path)
    assert len(half) == 1 and half[0].startswith(f".{victim}.so.")
    assert 0 < (path / half[0]).stat().st_size < len(data[victim])
    assert not (path / f"{victim}.so").exists()
    assert sorted(p.name for p in path.glob("*.so")) == sorted(f"{n}.so" for n in LIBS[:2])

    st = asyncio.run(manager(tmp_path, srv).ensure())
    assert st.state == "ready"
    assert_complete(path, data)
    assert srv.count(LIBS[0]) == srv.count(LIBS[1]) == 1
    assert srv.count(victim) == 2


def test_temp_files_of_another_live_process_are_left_alone(srv, tmp_path):
    """A second manager on the same directory (the CLI's refresh beside the worker) does not
    remove temp files while the directory's lock is held."""
    data = fill(srv)
    path = vdir(tmp_path)
    path.mkdir(parents=True)
    theirs = path / f".{LIBS[0]}.so.999.beef.tmp"
    theirs.write_bytes(b"\x7fELF in progress")
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert asyncio.run(manager(tmp_path, srv).ensure()).state == "ready"
        assert theirs.exists()
    finally:
        os.close(fd)
    assert asyncio.run(manager(tmp_path, srv).ensure()).state == "ready"
    assert not theirs.exists()
    assert_complete(path, data)


def test_run_is_cancellable_between_rounds(srv, tmp_path):
    fill(srv)
    srv.down()

    async def go():
        failed = asyncio.Event()
        m = manager(tmp_path, srv, on_progress=lambda s: s.state == "error" and failed.set())
        task = asyncio.ensure_future(m.run(retry_interval=60))
        await failed.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return m.state

    t0 = time.monotonic()
    st = asyncio.run(go())
    assert st.state == "error" and "unreachable" in st.reason and time.monotonic() - t0 < 5
    assert leftovers(vdir(tmp_path)) == []


# --- failures ------------------------------------------------------------------------------

def test_404_for_one_library_then_retried_by_run(srv, tmp_path):
    data = fill(srv)
    missing = LIBS[5]
    srv.not_found.add(missing)
    st = asyncio.run(manager(tmp_path, srv).ensure())
    assert st.state == "error"
    assert st.reason == (f"404 for {missing}.so of version {V1} for {ARCH} "
                         "(this transcoder version is not on the server?)")
    assert list(st.failed) == [missing] and st.failed[missing].startswith(f"404 for {missing}.so of version {V1}")
    assert (st.present, st.total) == (len(LIBS) - 1, len(LIBS))
    assert st.summary().startswith(f"codecs {len(LIBS) - 1}/{len(LIBS)}: 404 for {missing}.so")
    assert srv.count(missing) == 1                                    # a 404 is not retried
    assert not (vdir(tmp_path) / f"{missing}.so").exists() and leftovers(vdir(tmp_path)) == []

    seen = []

    def progress(s):
        seen.append(s)
        if s.state == "error":
            srv.not_found.discard(missing)            # Plex publishes it later

    st = asyncio.run(manager(tmp_path, srv, on_progress=progress).run(retry_interval=0.001))
    assert st.state == "ready"
    assert states(seen) == ["downloading", "error", "downloading", "ready"]
    assert_complete(vdir(tmp_path), data)
    assert srv.count(missing, 404) == 2 and srv.count(missing, 200) == 1


def test_several_404s_name_the_first_and_count_the_rest(srv, tmp_path):
    fill(srv)
    srv.not_found.update(LIBS[7:10])
    st = asyncio.run(manager(tmp_path, srv).ensure())
    assert st.reason == (f"404 for {LIBS[7]}.so and 2 more of version {V1} for {ARCH} "
                         "(this transcoder version is not on the server?)")
    assert sorted(st.failed) == sorted(LIBS[7:10]) and st.present == len(LIBS) - 3


def test_server_down_then_up_without_restart(srv, tmp_path):
    data = fill(srv)
    srv.down()
    seen = []

    def progress(s):
        seen.append(s)
        if s.state == "error" and srv.count() == 0:
            srv.up()

    t0 = time.monotonic()
    st = asyncio.run(manager(tmp_path, srv, on_progress=progress).run(retry_interval=0.001))
    assert st.state == "ready" and time.monotonic() - t0 < 5
    errors = [s for s in seen if s.state == "error"]
    assert len(errors) == 1
    assert errors[0].reason.startswith(f"codec server {srv.codecs_url} unreachable: ")
    assert len(errors[0].failed) <= 3                      # the round stopped after the first slots
    assert_complete(vdir(tmp_path), data)


def test_transient_errors_are_retried_within_a_round(srv, tmp_path):
    data = fill(srv)
    srv.fail(LIBS[0], 2, "503")
    srv.fail(LIBS[1], 1, "truncate")
    srv.fail(LIBS[2], 1, "reset")
    st = asyncio.run(manager(tmp_path, srv).ensure())
    assert st.state == "ready"
    assert_complete(vdir(tmp_path), data)
    assert srv.count(LIBS[0], 503) == 2 and srv.count(LIBS[0], 200) == 1
    assert srv.count(LIBS[1], "truncate") == 1 and srv.count(LIBS[1], 200) == 1
    assert srv.count(LIBS[2], "reset") == 1


def test_stalled_download_times_out_and_is_retried(srv, tmp_path):
    data = fill(srv)
    srv.stall(LIBS[0], after=1000)
    st = asyncio.run(manager(tmp_path, srv, timeout=0.3).ensure())
    assert st.state == "ready"
    assert_complete(vdir(tmp_path), data)
    assert srv.count(LIBS[0]) == 2


def test_persistent_5xx_gives_up_after_retries(srv, tmp_path):
    fill(srv)
    srv.fail(LIBS[0], 100, "503")
    st = asyncio.run(manager(tmp_path, srv, retries=2).ensure())
    assert st.state == "error"
    assert st.reason == f"codec server {srv.codecs_url} answered HTTP 503 for {LIBS[0]}.so"
    assert srv.count(LIBS[0]) == 3 and st.present == len(LIBS) - 1


def test_wrong_arch_html_and_short_payloads_rejected(srv, tmp_path):
    fill(srv)
    srv.put(V1, ARCH, LIBS[0], b"<!DOCTYPE html>\n<html><body><h1>Sign in to the Wi-Fi</h1></body></html>")
    srv.put(V1, ARCH, LIBS[1], elf_library("linux-aarch64-standard", 5000, name=LIBS[1]))
    srv.put(V1, ARCH, LIBS[2], elf_library(ARCH, 9000, name=LIBS[2])[:6000])
    st = asyncio.run(manager(tmp_path, srv).ensure())
    assert st.state == "error" and st.present == len(LIBS) - 3
    assert st.failed == {
        LIBS[0]: f"bad library {LIBS[0]}.so: HTML/XML page instead of a library (an error page from the server "
                 "or a proxy?)",
        LIBS[1]: f"bad library {LIBS[1]}.so: not an ELF file for {ARCH}: built for 64-bit aarch64 (e_machine 183), "
                 f"{ARCH} needs 64-bit x86-64 (e_machine 62)",
        LIBS[2]: f"bad library {LIBS[2]}.so: truncated: 6000 bytes, its ELF headers reach byte 9000 "
                 "(download cut short?)",
    }
    assert st.reason == st.failed[LIBS[0]] + " (and 2 more failed)"
    path = vdir(tmp_path)
    assert not any((path / f"{n}.so").exists() for n in LIBS[:3]) and leftovers(path) == []
    assert all(srv.count(n) == 1 for n in LIBS[:3])                   # not retried within the round


def test_disk_full(srv, tmp_path, monkeypatch):
    fill(srv)
    # every temp file is /dev/full: the kernel's ENOSPC on the first write
    monkeypatch.setattr(codecs.files, "open_tmp", lambda path: open("/dev/full", "wb", buffering=0))
    st = asyncio.run(manager(tmp_path, srv, concurrency=2).ensure())
    assert st.state == "error"
    assert re.fullmatch(rf"disk full writing {re.escape(str(vdir(tmp_path)))}/lib\w+\.so", st.reason), st.reason
    assert srv.count() <= 2                                       # the round ends: no more downloads
    assert leftovers(vdir(tmp_path)) == []


def test_codec_dir_cannot_be_created(srv, tmp_path):
    (tmp_path / "codecs").write_text("a file where the directory should be")
    st = asyncio.run(manager(tmp_path / "codecs", srv).ensure())
    assert st.state == "error"
    assert st.reason.startswith(f"cannot create codec directory {tmp_path / 'codecs'}/{V1}-{ARCH}: ")
    assert srv.count() == 0


@pytest.mark.parametrize("version, arch, reason", [
    (None, ARCH, "no codec version: the transcoder was not found or has no codec version in it"),
    (V1, None, "no Plex codec build for this machine's architecture"),
])
def test_unknown_version_or_arch(srv, tmp_path, version, arch, reason):
    seen = []
    m = manager(tmp_path, srv, version=version, arch=arch, on_progress=seen.append)
    assert m.path is None
    st = asyncio.run(m.run(retry_interval=0.001))               # returns: nothing to retry
    assert (st.state, st.reason) == ("error", reason) and [s.state for s in seen] == ["error"]
    assert srv.count() == 0 and os.listdir(tmp_path) == []


# --- upgrades and pruning ------------------------------------------------------------------

def test_transcoder_upgrade_new_dir_old_pruned_after_grace(srv, tmp_path):
    old_data, new_data = fill(srv, V1), fill(srv, V2, size=30000)
    other_arch = tmp_path / f"{V1}-linux-aarch64-standard"        # another machine sharing the root
    other_arch.mkdir()
    unrelated = tmp_path / "eae"
    unrelated.mkdir()
    long_ago = time.time() - 30 * DAY
    for d in (other_arch, unrelated):
        os.utime(d, (long_ago, long_ago))

    assert asyncio.run(manager(tmp_path, srv, V1).run(retry_interval=0.001)).state == "ready"
    m2 = manager(tmp_path, srv, V2)
    st = asyncio.run(m2.run(retry_interval=0.001))
    assert st.state == "ready" and st.path == str(vdir(tmp_path, V2))
    assert_complete(vdir(tmp_path, V2), new_data)
    assert_complete(vdir(tmp_path, V1), old_data)                 # within the grace period: kept

    eight_days_ago = time.time() - 8 * DAY
    os.utime(vdir(tmp_path, V1), (eight_days_ago, eight_days_ago))
    assert asyncio.run(m2.prune()) == [f"{V1}-{ARCH}"]
    assert sorted(os.listdir(tmp_path)) == sorted([f"{V2}-{ARCH}", other_arch.name, "eae"])
    assert_complete(vdir(tmp_path, V2), new_data)


def test_run_prunes_when_ready(srv, tmp_path):
    fill(srv, V2)
    old = vdir(tmp_path, V1)
    old.mkdir(parents=True)
    (old / "libh264_decoder.so").write_bytes(b"old")
    os.utime(old, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    st = asyncio.run(manager(tmp_path, srv, V2, grace=DAY).run(retry_interval=0.001))
    assert st.state == "ready" and not old.exists()


# --- arches --------------------------------------------------------------------------------

@pytest.mark.parametrize("uname_m, bits, arch", [
    ("x86_64", 64, "linux-x86_64-standard"),
    ("aarch64", 64, "linux-aarch64-standard"),
    ("armv7l", 32, "linux-armv7neon-standard"),
])
def test_arch_naming_end_to_end(srv, tmp_path, uname_m, bits, arch):
    """`uname -m` → Plex arch (hardware.plex_arch) → the URL and directory the libraries come
    from, with ELF files for that machine accepted and another machine's refused."""
    assert hw.plex_arch(uname_m, bits) == arch
    libs = LIBS[:4]
    data = fill(srv, arch=arch, libs=libs, size=3000)
    other = {"linux-x86_64-standard": "linux-aarch64-standard"}.get(arch, "linux-x86_64-standard")
    srv.put(V1, arch, "libwrong_decoder", elf_library(other, 3000))
    st = asyncio.run(manager(tmp_path, srv, arch=arch, libs=libs + ["libwrong_decoder"]).ensure())
    assert st.state == "error" and list(st.failed) == ["libwrong_decoder"]
    assert f"not an ELF file for {arch}" in st.reason
    assert {r["path"] for r in srv.requests} == {f"/codecs/{V1}/{arch}/{n}.so" for n in libs + ["libwrong_decoder"]}
    assert os.listdir(tmp_path) == [f"{V1}-{arch}"]
    assert_complete(vdir(tmp_path, arch=arch), data)


# --- EasyAudioEncoder ----------------------------------------------------------------------

def eae_zip(arch=ARCH, member="EasyAudioEncoder/EasyAudioEncoder", binary=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("EasyAudioEncoder/", "")
        if member:
            z.writestr(member, elf_library(arch, 6000, etype=ET_EXEC, name="eae") if binary is None else binary)
        z.writestr("EasyAudioEncoder/Info.txt", "EasyAudioEncoder for Plex")
    return buf.getvalue()


def fetch(srv, dest, session=False, **kw):
    kw.setdefault("device_id", "6f1c6a6e-0b7e-4a55-9d1e-4d1f2b3c4d5e")

    async def go():
        if not session:
            return await codecs.fetch_eae(None, srv.eae_api_url, ARCH, str(dest), **kw)
        async with aiohttp.ClientSession() as s:
            return await codecs.fetch_eae(s, srv.eae_api_url, ARCH, str(dest), **kw)
    return asyncio.run(go())


@pytest.mark.parametrize("session", [False, True])
def test_fetch_eae(srv, tmp_path, session):
    srv.eae_zip = eae_zip()
    dest = tmp_path / "eae"
    path = fetch(srv, dest, session, version="1785", oldest_previous_version="1.40.3.8555-fef15d30c")
    assert path == str(dest / "EasyAudioEncoder")
    binary = Path(path)
    assert binary.read_bytes() == elf_library(ARCH, 6000, etype=ET_EXEC, name="eae")
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    assert (dest / "eae-license.txt").read_text() == DEFAULT_LICENSE + "\n"
    assert sorted(os.listdir(dest)) == ["EasyAudioEncoder", "eae-license.txt"]
    api = [r for r in srv.requests if r["name"] == "easyaudioencoder"]
    assert api[0]["query"] == {"build": ARCH, "deviceId": "6f1c6a6e-0b7e-4a55-9d1e-4d1f2b3c4d5e",
                               "oldestPreviousVersion": "1.40.3.8555-fef15d30c", "version": "1785"}
    assert srv.count("eae-zip", 200) == 1
    # again: replaced in place, atomically
    assert fetch(srv, dest, session) == path and sorted(os.listdir(dest)) == ["EasyAudioEncoder", "eae-license.txt"]


@pytest.mark.parametrize("setup, error", [
    (lambda s: setattr(s, "eae_xml", "<html><body>502 Bad Gateway</body>"), "answer is not XML"),
    (lambda s: setattr(s, "eae_xml", "<MediaContainer size='0'/>"), "no Codec element"),
    (lambda s: setattr(s, "eae_xml", "<MediaContainer><Codec license='x'/></MediaContainer>"), "no Codec url"),
    (lambda s: setattr(s, "eae_zip", None),
     r"EasyAudioEncoder download http://127\.0\.0\.1:\d+/eae/.* answered HTTP 404"),
    (lambda s: setattr(s, "eae_zip", b"<html>not a zip</html>"), "is not a zip file"),
    (lambda s: setattr(s, "eae_zip", eae_zip(member=None)), r"no EasyAudioEncoder in the zip .*Info\.txt"),
    (lambda s: setattr(s, "eae_zip", eae_zip(binary=b"#!/bin/sh\nrm -rf /\n")), "is not a program for"),
    (lambda s: setattr(s, "eae_zip", eae_zip(arch="linux-aarch64-standard")),
     "not an ELF file for linux-x86_64-standard"),
])
def test_fetch_eae_errors(srv, tmp_path, setup, error):
    srv.eae_zip = eae_zip()
    setup(srv)
    dest = tmp_path / "eae"
    with pytest.raises(codecs.EAEError, match=error):
        fetch(srv, dest)
    assert not dest.exists() or os.listdir(dest) == []


def test_fetch_eae_api_unreachable(srv, tmp_path):
    srv.down()
    with pytest.raises(codecs.EAEError, match="Cannot connect"):
        fetch(srv, tmp_path / "eae")
