"""The Debian packages in booted Debian 12 containers (systemd-nspawn, offline apt).

A fake ``plexmediaserver`` package owns Plex's transcoder path, like the real one.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed import nspawn
from tests.fakes.plex_package import DEPENDENCIES, TRANSCODER, build_fake_plex

pytestmark = [pytest.mark.system, pytest.mark.packaging, pytest.mark.timeout(600)]   # builds, debootstraps

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    why = nspawn.ensure_host_tools()
    if why:
        pytest.fail(why)       # never a silent skip: CI runs as root with apt
    out = tmp_path_factory.mktemp("debs")
    built = {}
    for version in ("0.0.9", None):
        d = out / (version or "current")
        subprocess.run(["bash", str(REPO / "debian" / "build.sh"), str(d)] + ([version] if version else []),
                       check=True, capture_output=True, text=True, timeout=300)
        built[version or "current"] = {p.name.split("_")[0]: p for p in d.glob("*.deb")}
    lint = subprocess.run(["lintian", "--tag-display-limit", "0", "--fail-on", "error,warning",
                           str(next((out / "current").glob("*.changes")))], capture_output=True, text=True)
    built["lintian"] = lint
    built["plex-1.0"] = build_fake_plex(out, "1.0")
    built["plex-1.1"] = build_fake_plex(out, "1.1")
    tree = nspawn.base_tree()
    built["tree"] = tree
    built["repo"] = nspawn.local_repo(DEPENDENCIES, tree, out / "repo")
    return built


def test_lintian_is_clean(debs):
    assert debs["lintian"].returncode == 0, debs["lintian"].stdout + debs["lintian"].stderr


def unit_prop(c, unit, prop):
    return c.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


# Runs inside the container: follow the journal from a cursor until a line matches (event-driven).
_FOLLOW = """
import os, re, select, subprocess, sys, time
cursor, pattern, timeout = sys.argv[1], re.compile(sys.argv[2]), float(sys.argv[3])
units = sys.argv[4:]
cmd = ["journalctl", "-f", "-o", "short", "--after-cursor", cursor] + [a for u in units for a in ("-u", u)]
p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
deadline = time.monotonic() + timeout
buf, lines = b"", []
try:
    while time.monotonic() < deadline:
        if not select.select([p.stdout], [], [], deadline - time.monotonic())[0]:
            continue
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split(b"\\n")
        for line in done:
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if pattern.search(text):
                print(text)
                sys.exit(0)
    print("\\n".join(lines[-30:]))
    sys.exit(1)
finally:
    p.kill()
"""


def cursor(c):
    """The journal's current position: wait_log() only looks at what comes after it."""
    out = c.run(["journalctl", "-n", "0", "--show-cursor", "-q"]).stdout
    return out.strip().split("cursor: ", 1)[1]


def wait_log(c, after, pattern, *units, timeout=30):
    """Wait for a journal line (of ``units``) matching ``pattern`` after the cursor ``after``."""
    r = c.run(["python3", "-c", _FOLLOW, after, pattern, str(timeout), *units], check=False, timeout=timeout + 30)
    if r.returncode != 0:
        raise TimeoutError(f"no journal line matching {pattern!r} from {units} within {timeout}s:\n{r.stdout}")
    return r.stdout


def test_plex_host_install_divert_upgrade_kill_purge(debs, tmp_path):
    current = debs["current"]
    with nspawn.Container("cpplex", debs["tree"], repo=debs["repo"]) as c:
        c.run(["install", "-d", "/transcode/Transcode/Sessions/s1"])      # the share, already mounted
        # ClusterPlex first, Plex after (both orders must work)
        c.install_debs([current["python3-clusterplex"], current["clusterplex-orchestrator"],
                        current["clusterplex-worker"], current["clusterplex-pms"]])
        c.run(["chown", "-R", "plex:plex", "/transcode"])
        assert "clusterplex.shim" in c.read_file(TRANSCODER)
        # the secret: generated once, 0600, the daemons' user
        assert c.run(["stat", "-c", "%a %U", "/etc/clusterplex/secret"]).stdout.split() == ["600", "plex"]
        secret = c.read_file("/etc/clusterplex/secret")
        assert len(secret.strip()) >= 32
        # all three units enabled, active, Type=notify; verify clean
        for unit in ("clusterplex-orchestrator", "clusterplex-worker", "clusterplex-relay"):
            # Type=notify: installing returned after READY=1
            assert c.run(["systemctl", "is-enabled", unit]).stdout.strip() == "enabled"
            assert c.run(["systemctl", "is-active", unit]).stdout.strip() == "active"
            assert unit_prop(c, unit, "Type") == "notify"
            verify = c.run(["systemd-analyze", "verify", f"{unit}.service"], check=False)
            problems = [ln for ln in verify.stderr.splitlines() if "man " not in ln and ln.strip()]
            assert not problems, verify.stderr
        # no Plex yet: the worker runs, not ready, with the reason, and no restart loop
        status = unit_prop(c, "clusterplex-worker", "StatusText")
        assert status.startswith("not_ready") and "is the ClusterPlex shim, not Plex's transcoder" in status
        assert unit_prop(c, "clusterplex-worker", "NRestarts") == "0"
        # Plex arrives: its binary goes to the diverted name, the worker becomes ready by itself
        mark = cursor(c)
        c.install_debs([debs["plex-1.0"]])
        divert = c.run(["dpkg-divert", "--list", TRANSCODER]).stdout
        assert "clusterplex-pms" in divert and f"{TRANSCODER}.distrib" in divert
        assert "clusterplex.shim" in c.read_file(TRANSCODER)
        assert "fake Plex Transcoder 1.0" in c.read_file(TRANSCODER + ".distrib")
        wait_log(c, mark, r"clusterplex.worker: state ready", "clusterplex-worker")
        assert unit_prop(c, "clusterplex-worker", "NRestarts") == "0"

        # a transcode through the local cluster, then SIGKILL of the worker during it
        c.write_file("/etc/clusterplex/orchestrator.yaml", "workers: [127.0.0.1:3501]\ndiscovery: {enabled: false}\n")
        c.write_file("/etc/clusterplex/pms.yaml", "relay: {advertise: 'http://127.0.0.1:32499'}\n"
                                                  "discovery: {enabled: false}\nmode: remote\n")
        mark = cursor(c)
        c.systemctl("restart", "clusterplex-orchestrator", "clusterplex-relay")
        wait_log(c, mark, r"worker .* is ready", "clusterplex-orchestrator")
        mark = cursor(c)
        c.run(["sh", "-c", "cd /transcode/Transcode/Sessions/s1 && setsid runuser -u plex -- "
                           f"'{TRANSCODER}' -i /etc/os-release -x_test_hold 300 out.ts >/tmp/shim.log 2>&1 &"])
        wait_log(c, mark, r"clusterplex.worker: job \w+ started", "clusterplex-worker")
        assert c.run(["pgrep", "-f", "fake Plex Transcoder|Plex Transcoder.distrib"], check=False).returncode == 0
        pid_before = unit_prop(c, "clusterplex-worker", "MainPID")
        mark = cursor(c)
        c.systemctl("kill", "-s", "KILL", "clusterplex-worker")
        wait_log(c, mark, r"Started clusterplex-worker.service", "clusterplex-worker", timeout=20)
        assert unit_prop(c, "clusterplex-worker", "NRestarts") == "1"
        assert unit_prop(c, "clusterplex-worker", "MainPID") not in ("0", pid_before)
        assert c.run(["pgrep", "-f", "Plex Transcoder.distrib"], check=False).returncode == 1, "transcoder survived"

        # Plex upgrade: the new binary goes to the diverted name, the shim stays
        c.install_debs([debs["plex-1.1"]])
        assert "clusterplex.shim" in c.read_file(TRANSCODER)
        assert "fake Plex Transcoder 1.1" in c.read_file(TRANSCODER + ".distrib")

        # purge restores Plex's own transcoder
        c.run(["apt-get", "purge", "-y", "clusterplex-pms"])
        assert "fake Plex Transcoder 1.1" in c.read_file(TRANSCODER)
        assert c.run(["test", "-e", TRANSCODER + ".distrib"], check=False).returncode == 1
        assert c.run(["dpkg-divert", "--list", TRANSCODER]).stdout.strip() == ""
        # the orchestrator still has its secret (it is still installed)
        assert c.read_file("/etc/clusterplex/secret") == secret


def test_plex_first_then_upgrade_keeps_config_and_secret(debs):
    old, new = debs["0.0.9"], debs["current"]
    with nspawn.Container("cpupg", debs["tree"], repo=debs["repo"]) as c:
        c.install_debs([debs["plex-1.0"]])
        c.install_debs([old["python3-clusterplex"], old["clusterplex-orchestrator"], old["clusterplex-pms"],
                        old["clusterplex-worker"]])
        assert "clusterplex.shim" in c.read_file(TRANSCODER)
        assert "fake Plex Transcoder 1.0" in c.read_file(TRANSCODER + ".distrib")
        secret = c.read_file("/etc/clusterplex/secret")
        worker_yaml = c.read_file("/etc/clusterplex/worker.yaml") + "\nmax_jobs: 3\n"
        c.write_file("/etc/clusterplex/worker.yaml", worker_yaml)
        units = ("clusterplex-orchestrator", "clusterplex-worker", "clusterplex-relay")
        pids = {u: unit_prop(c, u, "MainPID") for u in units}
        c.install_debs([new["python3-clusterplex"], new["clusterplex-orchestrator"], new["clusterplex-pms"],
                        new["clusterplex-worker"]])
        assert c.run(["dpkg-query", "-W", "-f", "${Version}", "clusterplex-worker"]).stdout == "0.1.0"
        for u in units:     # restarted on upgrade (new processes), running the new code
            assert unit_prop(c, u, "MainPID") not in ("0", pids[u])
        assert c.read_file("/etc/clusterplex/worker.yaml") == worker_yaml
        assert c.read_file("/etc/clusterplex/secret") == secret
        assert "clusterplex.shim" in c.read_file(TRANSCODER)
        for unit in ("clusterplex-orchestrator", "clusterplex-worker", "clusterplex-relay"):
            assert c.run(["systemctl", "is-active", unit]).stdout.strip() == "active"   # restarted on upgrade
        # removing everything leaves Plex as it was
        c.run(["apt-get", "purge", "-y", "clusterplex-pms", "clusterplex-worker", "clusterplex-orchestrator",
               "python3-clusterplex"])
        assert "fake Plex Transcoder 1.0" in c.read_file(TRANSCODER)
        assert c.run(["test", "-e", "/etc/clusterplex/secret"], check=False).returncode == 1
        # stopped on removal: no daemon left
        assert c.run(["pgrep", "-f", "clusterplex-"], check=False).returncode == 1


def test_worker_without_secret_waits_not_joined(debs):
    new = debs["current"]
    with nspawn.Container("cpwrk", debs["tree"], repo=debs["repo"]) as c:
        c.install_debs([new["python3-clusterplex"], new["clusterplex-worker"]])
        assert c.run(["test", "-e", "/etc/clusterplex/secret"], check=False).returncode == 1
        status = unit_prop(c, "clusterplex-worker", "StatusText")
        assert status.startswith("not_ready: not joined: secret file /etc/clusterplex/secret not found")
        assert "transcoder /usr/lib/plexmediaserver/Plex Transcoder not found" in status
        assert c.run(["systemctl", "is-active", "clusterplex-worker"]).stdout.strip() == "active"
        assert unit_prop(c, "clusterplex-worker", "NRestarts") == "0"


def test_two_hosts_worker_discovered_and_transcode_through_the_relay(debs, tmp_path):
    new = debs["current"]
    shared = tmp_path / "transcode"
    (shared / "Transcode" / "Sessions" / "s2").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "fakes" / "fake_pms.py", tmp_path / "fake_pms.py")
    with nspawn.Bridge() as br, \
            nspawn.Container("cpph", debs["tree"], repo=debs["repo"], bridge=br, address="198.51.100.10",
                             binds=[(str(shared), "/transcode"), (str(tmp_path), "/srv/test")]) as plex, \
            nspawn.Container("cpwh", debs["tree"], repo=debs["repo"], bridge=br, address="198.51.100.11",
                             binds=[(str(shared), "/transcode")]) as worker:
        plex.install_debs([debs["plex-1.0"], new["python3-clusterplex"], new["clusterplex-orchestrator"],
                           new["clusterplex-pms"]])
        worker.install_debs([debs["plex-1.0"], new["python3-clusterplex"], new["clusterplex-worker"]])
        # same uid for plex on both hosts (the shared directory's owner)
        uid = plex.run(["id", "-u", "plex"]).stdout.strip()
        assert worker.run(["id", "-u", "plex"]).stdout.strip() == uid
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(shared)], check=True)
        # join: the worker gets the orchestrator's secret; mDNS only on the LAN addresses
        worker.write_file("/etc/clusterplex/secret", plex.read_file("/etc/clusterplex/secret"), mode=0o600,
                          owner="plex")
        worker.write_file("/etc/clusterplex/worker.yaml", "discovery: {interfaces: [198.51.100.11]}\n")
        plex.write_file("/etc/clusterplex/orchestrator.yaml", "discovery: {interfaces: [198.51.100.10]}\n")
        plex.write_file("/etc/clusterplex/pms.yaml", "orchestrator: auto\nmode: remote\n"
                                                     "relay: {advertise: 'http://198.51.100.10:32499'}\n"
                                                     "discovery: {interfaces: [198.51.100.10]}\n")
        worker.systemctl("restart", "clusterplex-worker")
        mark = cursor(plex)
        plex.systemctl("restart", "clusterplex-orchestrator", "clusterplex-relay")
        wait_log(plex, mark, r"worker cpwh \(198.51.100.11:3501\) is ready", "clusterplex-orchestrator")
        wait_log(plex, mark, r"orchestrator .* found at http://198.51.100.10:3500", "clusterplex-relay")
        # the fake PMS as a unit, so the test can wait for its readiness (Type=notify, READY=1)
        plex.run(["systemd-run", "--unit=fake-pms", "--property=Type=notify", "--property=NotifyAccess=all",
                  "python3", "/srv/test/fake_pms.py", "--listen", "127.0.0.1:32400"])
        r = plex.run(["sh", "-c", "cd /transcode/Transcode/Sessions/s2 && runuser -u plex -- "
                                  f"'{TRANSCODER}' -i /etc/os-release -progressurl "
                                  "http://127.0.0.1:32400/video/:/transcode/session/k1/u1/progress out.ts"],
                     check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "fake Plex Transcoder 1.0" in r.stderr
        jobs = json.loads(plex.run(["python3", "-c", "import urllib.request;print(urllib.request.urlopen("
                                                     "'http://127.0.0.1:3500/api/v1/jobs').read().decode())"]).stdout)
        assert jobs[0]["worker"] == "cpwh" and jobs[0]["exit_code"] == 0
        recs = json.loads(plex.run(["python3", "-c", "import urllib.request;print(urllib.request.urlopen("
                                                     "'http://127.0.0.1:32400/_fake/requests').read().decode())"]).stdout)
        progress = [x for x in recs if x["path"] == "/video/:/transcode/session/k1/u1/progress"]
        assert progress and progress[0]["remote"] == "127.0.0.1"
        assert "worker: job" in worker.journal("clusterplex-worker") or "started" in worker.journal("clusterplex-worker")
