"""The Ansible role (ansible/) against booted Debian 12 hosts: a Plex host and two workers.

Three systemd-nspawn containers on a test bridge (198.51.100.0/24) share one transcode
directory (bind-mounted at /transcode in all three). ansible-playbook runs on this machine and
reaches them with the ``community.docker.nsenter`` connection (the container's PID 1 as
``ansible_nsenter_pid``; no sshd). Packages: the .debs built by debian/build.sh on the
controller (Plex host and worker 1) and the same packages from an apt repository (worker 2: a
flat repository of our packages, bound into the container, given to the role as
``clusterplex_apt_repository``); their Debian dependencies come from each host's own apt source
(the harness's offline repository, standing in for Debian's archive). A fake ``plexmediaserver`` package provides Plex's
transcoder on every host.

The tests run in file order on one set of containers: roll out and re-run (changed=0), workers
ready, a transcode through the shim lands on a worker, a worker marked absent is removed, then
the Plex host marked absent gets Plex's own transcoder back.
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from testbed import nspawn
from tests.fakes.plex_package import DEPENDENCIES, TRANSCODER, build_fake_plex

pytestmark = [pytest.mark.system, pytest.mark.packaging, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "ansible" / "site.yml"
VERSION = "0.1.0"
PLEX, W1, W2 = "cpaplex", "cpaw1", "cpaw2"
ADDRESS = {PLEX: "198.51.100.20", W1: "198.51.100.21", W2: "198.51.100.22"}
REPO_LINE = "deb [trusted=yes] file:/srv/clusterplex-apt ./"
OUR_PACKAGES = ("python3-clusterplex", "clusterplex-orchestrator", "clusterplex-pms", "clusterplex-worker")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    why = nspawn.ensure_host_tools()
    if why:
        pytest.fail(why)       # never a silent skip: CI runs as root with apt
    if shutil.which("ansible-playbook", path=nspawn.HOST_ENV["PATH"]) is None:
        pytest.fail("ansible-playbook not installed (apt-get install ansible)")
    out = tmp_path_factory.mktemp("ansible-debs")
    debs = out / "debs"
    subprocess.run(["bash", str(REPO / "debian" / "build.sh"), str(debs)], check=True, capture_output=True,
                   text=True, timeout=300)
    ours = sorted(debs.glob("*.deb"))
    assert {p.name.split("_")[0] for p in ours} == set(OUR_PACKAGES)
    assert all(f"_{VERSION}_" in p.name for p in ours), ours
    tree = nspawn.base_tree()
    plex_deb = build_fake_plex(out, "1.0")
    # The hosts' own apt source (standing in for Debian's archive): our dependencies and
    # python3-apt (for the apt module), not our packages.
    repo = nspawn.local_repo(DEPENDENCIES + ["python3-apt", "python3-prometheus-client"], tree, out / "repo")
    # "The project's apt repository": our packages only, a flat repository of its own.
    ours_repo = out / "clusterplex-apt"
    ours_repo.mkdir()
    for p in ours:
        shutil.copy2(p, ours_repo / p.name)
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=ours_repo, env=nspawn.HOST_ENV,
                           check=True, capture_output=True, text=True)
    (ours_repo / "Packages").write_text(index.stdout)
    return {"debs": debs, "tree": tree, "repo": repo, "ours_repo": ours_repo, "plex": plex_deb}


def _hostvars(c):
    return {"ansible_connection": "community.docker.nsenter", "ansible_nsenter_pid": c.leader,
            "ansible_python_interpreter": "/usr/bin/python3", "ansible_become": False}   # root already


def write_inventory(path, plex, workers, common):
    """A YAML inventory: ``plex`` and ``workers`` map host name -> (container, host vars)."""
    inv = {"all": {"vars": common, "children": {
        "plex": {"hosts": {n: {**_hostvars(c), **v} for n, (c, v) in plex.items()}},
        "workers": {"hosts": {n: {**_hostvars(c), **v} for n, (c, v) in workers.items()}}}}}
    path.write_text(json.dumps(inv, indent=1))       # JSON is YAML
    return path


def _name(task):
    """A task's name without its role ("clusterplex : Check ..." -> "Check ...")."""
    return task["task"]["name"].split(" : ", 1)[-1]


class Run:
    """One ansible-playbook run with the json callback: per-host stats and failure messages."""

    def __init__(self, proc, seconds):
        self.proc, self.seconds = proc, seconds
        self.output = proc.stdout + proc.stderr
        try:
            self.data = json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            self.data = {"plays": [], "stats": {}}
        self.stats = self.data.get("stats", {})

    def failures(self):
        """[(host, task name, message)] of every failed task."""
        found = []
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                for host, res in task.get("hosts", {}).items():
                    if res.get("failed") or res.get("unreachable"):
                        msgs = [i.get("msg", "") for i in res.get("results", []) if i.get("failed")]
                        found.append((host, _name(task), "\n".join(msgs) or res.get("msg", "")))
        return found

    def results(self, task_name):
        """{host: result} of the task with this name (the last one of that name)."""
        found = {}
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                if _name(task) == task_name:
                    found = task.get("hosts", {})
        return found

    def changed_tasks(self):
        return [(h, _name(t)) for p in self.data.get("plays", []) for t in p.get("tasks", [])
                for h, r in t.get("hosts", {}).items() if r.get("changed")]

    def explain(self):
        return (f"exit {self.proc.returncode}; failures: {self.failures()}\n--- stderr\n{self.proc.stderr[-4000:]}"
                f"\n--- stdout (tail)\n{self.proc.stdout[-4000:]}")


def playbook(inventory, *args, timeout=300):
    env = {**nspawn.HOST_ENV, "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"),
           "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_HOST_KEY_CHECKING": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    t0 = time.monotonic()
    proc = subprocess.run(["ansible-playbook", "-i", str(inventory), str(PLAYBOOK), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Run(proc, time.monotonic() - t0)


def api(c, path, port=3500):
    out = c.run(["python3", "-c", "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], "
                                  "timeout=10).read().decode())", f"http://127.0.0.1:{port}{path}"]).stdout
    return json.loads(out)


def installed(c, package):
    r = c.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", package], check=False)
    return r.returncode == 0 and r.stdout.startswith("ii")


# ---------------------------------------------------------------------------------------------
# Preflight: clear messages before anything changes


def test_preflight_stops_with_clear_messages(built, tmp_path):
    with nspawn.Container("cpapre", built["tree"], repo=built["repo"]) as c:
        # (the workers alone here: they get the secret from a variable, there is no Plex host)
        common = {"clusterplex_deb_dir": str(built["debs"]), "clusterplex_version": VERSION,
                  "clusterplex_secret": "s" * 40}

        # the Plex host without Plex
        c.run(["install", "-d", "-m", "0777", "/transcode"])
        inv = write_inventory(tmp_path / "a.yml", {"cpapre": (c, {})}, {}, common)
        r = playbook(inv, "--tags", "preflight")
        assert r.proc.returncode != 0, r.explain()
        fails = r.failures()
        assert [(h, t) for h, t, _ in fails] == [("cpapre", "Check that Plex's transcoder is on the Plex host")], \
            r.explain()
        assert "Plex's transcoder /usr/lib/plexmediaserver/Plex Transcoder not found: install Plex Media Server " \
               "on the Plex host first" in fails[0][2]

        # a worker whose transcode root is missing
        inv = write_inventory(tmp_path / "b.yml", {}, {"cpapre": (c, {"clusterplex_worker_transcode_root":
                                                                       "/srv/share/transcode"})}, common)
        r = playbook(inv, "--tags", "preflight")
        assert r.proc.returncode != 0, r.explain()
        assert [(h, t) for h, t, _ in r.failures()] == [("cpapre", "Check that the transcode root exists")], \
            r.explain()
        assert "transcode root /srv/share/transcode does not exist or is not a directory: mount the shared " \
               "transcode directory there" in r.failures()[0][2]

        # a worker whose transcode root the Plex user cannot write to
        c.run(["useradd", "--system", "plex"])
        c.run(["install", "-d", "-m", "0755", "-o", "root", "/srv/share/transcode"])
        r = playbook(inv, "--tags", "preflight")
        assert r.proc.returncode != 0, r.explain()
        assert [(h, t) for h, t, _ in r.failures()] == \
            [("cpapre", "Check that the transcode root is writable by the Plex user")], r.explain()
        assert "transcode root /srv/share/transcode is not writable by user plex" in r.failures()[0][2]
        assert "root:root" in r.failures()[0][2]

        # the .debs of the pinned version must be on the controller
        c.run(["chown", "plex", "/srv/share/transcode"])
        inv = write_inventory(tmp_path / "c.yml", {}, {"cpapre": (c, {"clusterplex_worker_transcode_root":
                                                                       "/srv/share/transcode"})},
                              {**common, "clusterplex_version": "9.9.9"})
        r = playbook(inv, "--tags", "preflight")
        assert r.proc.returncode != 0, r.explain()
        assert "python3-clusterplex_9.9.9_all.deb not found on the controller" in r.failures()[0][2]

        # a worker to roll out while its Plex host is being removed (one container, two names)
        inv = write_inventory(tmp_path / "e.yml", {"cpapre-plex": (c, {"clusterplex_state": "absent"})},
                              {"cpapre": (c, {"clusterplex_worker_transcode_root": "/srv/share/transcode",
                                              "clusterplex_secret": ""})}, common)
        r = playbook(inv, "--tags", "preflight")
        assert r.proc.returncode != 0, r.explain()
        assert [(h, t) for h, t, _ in r.failures()] == \
            [("cpapre", "Check that a present worker has an orchestrator host to join")], r.explain()
        assert "orchestrator host cpapre-plex, which is not in the inventory or is marked absent" in r.failures()[0][2]

        # fixed: the preflight passes (and warns: no Plex transcoder on the worker)
        inv = write_inventory(tmp_path / "d.yml", {}, {"cpapre": (c, {"clusterplex_worker_transcode_root":
                                                                       "/srv/share/transcode"})}, common)
        r = playbook(inv, "--tags", "preflight")
        assert r.proc.returncode == 0, r.explain()
        assert r.stats["cpapre"]["changed"] == 0
        warn = r.results("Warn when a worker has no Plex transcoder (the worker would stay not ready)")
        assert "will run but report \"not ready\"" in warn["cpapre"]["msg"]
        # nothing was installed by the preflight
        assert not any(installed(c, p) for p in OUR_PACKAGES)
        assert c.run(["test", "-e", "/etc/clusterplex"], check=False).returncode == 1


def test_preflight_compares_the_plex_uid_across_hosts(built, tmp_path):
    with nspawn.Container("cpauid1", built["tree"], repo=built["repo"]) as a, \
            nspawn.Container("cpauid2", built["tree"], repo=built["repo"]) as b:
        a.install_debs([built["plex"]])                          # Plex host: plex with a system uid
        b.run(["useradd", "--system", "--uid", "1500", "plex"])  # worker: plex made by hand, another uid
        for c in (a, b):
            c.run(["install", "-d", "-o", "plex", "/transcode"])
        uid = a.run(["id", "-u", "plex"]).stdout.strip()
        assert uid != "1500"
        common = {"clusterplex_deb_dir": str(built["debs"]), "clusterplex_version": VERSION}
        inv = write_inventory(tmp_path / "a.yml", {"cpauid1": (a, {})}, {"cpauid2": (b, {})}, common)
        r = playbook(inv, "--tags", "preflight")
        assert r.proc.returncode == 0, r.explain()
        warn = r.results("Compare the Plex user's uid with the Plex host's")
        assert warn["cpauid2"]["msg"] == (
            f"WARNING: cpauid2: user plex has uid 1500, but {uid} on cpauid1: transcodes written to the shared "
            "directory would belong to another user there. Give plex the same uid everywhere.")
        assert warn["cpauid1"].get("skipped")
        # strict: an error
        inv = write_inventory(tmp_path / "b.yml", {"cpauid1": (a, {})}, {"cpauid2": (b, {})},
                              {**common, "clusterplex_preflight_uid_strict": True})
        r = playbook(inv, "--tags", "preflight")
        assert r.proc.returncode != 0
        assert r.failures() == [("cpauid2", "Fail on different Plex uids (clusterplex_preflight_uid_strict)",
                                 f"cpauid2: user plex has uid 1500, but {uid} on cpauid1")], r.explain()


# ---------------------------------------------------------------------------------------------
# A cluster rolled out by the playbook


@pytest.fixture(scope="module")
def lab(built, tmp_path_factory):
    """Three booted hosts on one bridge with Plex (fake) installed and a shared transcode dir."""
    tmp = tmp_path_factory.mktemp("ansible-lab")
    shared = tmp / "transcode"
    (shared / "Transcode" / "Sessions" / "s1").mkdir(parents=True)
    (tmp / "test").mkdir()
    shutil.copy(REPO / "tests" / "fakes" / "fake_pms.py", tmp / "test" / "fake_pms.py")
    with nspawn.Bridge() as br, \
            nspawn.Container(PLEX, built["tree"], repo=built["repo"], bridge=br, address=ADDRESS[PLEX],
                             binds=[(shared, "/transcode"), (tmp / "test", "/srv/test")]) as plex, \
            nspawn.Container(W1, built["tree"], repo=built["repo"], bridge=br, address=ADDRESS[W1],
                             binds=[(shared, "/transcode")]) as w1, \
            nspawn.Container(W2, built["tree"], repo=built["repo"], bridge=br, address=ADDRESS[W2],
                             binds=[(shared, "/transcode"), (built["ours_repo"], "/srv/clusterplex-apt")]) as w2:
        hosts = {PLEX: plex, W1: w1, W2: w2}
        for c in hosts.values():
            c.install_debs([built["plex"]])           # also the host's apt source: the offline repository
        uid = plex.run(["id", "-u", "plex"]).stdout.strip()
        assert {c.run(["id", "-u", "plex"]).stdout.strip() for c in hosts.values()} == {uid}
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(shared)], check=True)

        state = {n: "present" for n in hosts}
        overrides = {n: {} for n in hosts}

        def inventory():
            def v(n, **kw):
                return {"clusterplex_state": state[n], "clusterplex_worker_discovery_interfaces": [ADDRESS[n]], **kw,
                        **overrides[n]}
            return write_inventory(
                tmp / "inventory.yml",
                {PLEX: (plex, v(PLEX, clusterplex_orchestrator_discovery_interfaces=[ADDRESS[PLEX]],
                                clusterplex_pms_discovery_interfaces=[ADDRESS[PLEX]],
                                clusterplex_pms_relay_advertise=f"http://{ADDRESS[PLEX]}:32499",
                                clusterplex_pms_mode="remote"))},
                {W1: (w1, v(W1, clusterplex_worker_max_jobs=2)),
                 W2: (w2, v(W2, clusterplex_worker_max_jobs=3, clusterplex_worker_weight=2.0,
                            clusterplex_package_source="repo", clusterplex_apt_repository=REPO_LINE))},
                {"clusterplex_deb_dir": str(built["debs"]), "clusterplex_version": VERSION,
                 "clusterplex_verify_retries": 30})

        yield {"hosts": hosts, "state": state, "overrides": overrides, "inventory": inventory, "shared": shared}


@pytest.fixture(scope="module")
def rolled_out(lab):
    first = playbook(lab["inventory"]())
    assert first.proc.returncode == 0, first.explain()
    second = playbook(lab["inventory"]())
    assert second.proc.returncode == 0, second.explain()
    check = playbook(lab["inventory"](), "--check", "--diff")
    assert check.proc.returncode == 0, check.explain()
    return {"first": first, "second": second, "check": check}


def test_rollout_installs_joins_and_a_rerun_changes_nothing(lab, rolled_out):
    first, second = rolled_out["first"], rolled_out["second"]
    hosts = lab["hosts"]
    plex, w1, w2 = hosts[PLEX], hosts[W1], hosts[W2]
    print(f"first run {first.seconds:.1f} s, second run {second.seconds:.1f} s")
    for n in hosts:
        assert first.stats[n]["failures"] == 0 and first.stats[n]["changed"] > 0
    # idempotent: the second run changes nothing anywhere, and --check --diff agrees
    assert {n: second.stats[n]["changed"] for n in hosts} == {PLEX: 0, W1: 0, W2: 0}, second.changed_tasks()
    check = rolled_out["check"]
    assert {n: check.stats[n]["changed"] for n in hosts} == {PLEX: 0, W1: 0, W2: 0}, check.changed_tasks()
    assert second.stats[PLEX]["failures"] == 0
    # packages: the pinned version, from .debs (plex, w1) and from the apt repository (w2)
    for c, pkgs in ((plex, ("python3-clusterplex", "clusterplex-orchestrator", "clusterplex-pms")),
                    (w1, ("python3-clusterplex", "clusterplex-worker")), (w2, ("python3-clusterplex", "clusterplex-worker"))):
        for p in pkgs:
            assert c.run(["dpkg-query", "-W", "-f", "${Version}", p]).stdout == VERSION
    assert not installed(plex, "clusterplex-worker") and not installed(w1, "clusterplex-pms")
    assert REPO_LINE in w2.read_file("/etc/apt/sources.list.d/clusterplex.list")
    assert w1.run(["test", "-e", "/etc/apt/sources.list.d/clusterplex.list"], check=False).returncode == 1
    # the secret: generated on the Plex host, the same on every worker, 0600, never in the output
    secret = plex.read_file("/etc/clusterplex/secret")
    assert len(secret.strip()) >= 32
    for w in (w1, w2):
        assert w.read_file("/etc/clusterplex/secret") == secret
        assert w.run(["stat", "-c", "%a %U", "/etc/clusterplex/secret"]).stdout.split() == ["600", "plex"]
    for run in rolled_out.values():
        assert secret.strip() not in run.output
    # configuration rendered from role variables, per-host overrides applied, valid for the daemons
    worker_yaml = w1.read_file("/etc/clusterplex/worker.yaml")
    assert "Ansible managed" in worker_yaml and "max_jobs: 2\n" in worker_yaml
    assert f'interfaces: ["{ADDRESS[W1]}"]' in worker_yaml
    assert "max_jobs: 3\n" in w2.read_file("/etc/clusterplex/worker.yaml")
    assert 'mode: "remote"' in plex.read_file("/etc/clusterplex/pms.yaml")
    w1.run(["clusterplex-worker", "--check-config"])
    plex.run(["clusterplex-orchestrator", "--check-config"])
    plex.run(["clusterplex-relay", "--check-config"])
    assert "ReadWritePaths=-/transcode" in w1.read_file(
        "/etc/systemd/system/clusterplex-worker.service.d/clusterplex-paths.conf")
    for c, units in ((plex, ("clusterplex-orchestrator", "clusterplex-relay")), (w1, ("clusterplex-worker",)),
                     (w2, ("clusterplex-worker",))):
        for u in units:
            assert c.is_active(u) == "active"
            assert c.systemctl("is-enabled", u).stdout.strip() == "enabled"


def test_verify_reports_both_workers_ready(lab, rolled_out):
    plex = lab["hosts"][PLEX]
    workers = {w["name"]: w for w in api(plex, "/api/v1/workers")}
    assert set(workers) == {W1, W2}
    assert {n: (w["state"], w["max_jobs"], w["address"]) for n, w in workers.items()} == \
        {W1: ("ready", 2, f"{ADDRESS[W1]}:3501"), W2: ("ready", 3, f"{ADDRESS[W2]}:3501")}
    assert workers[W2]["weight"] == 2.0
    # the role's last task reported the list (on both runs)
    for run in rolled_out.values():
        report = run.results("Report the workers the orchestrator sees")
        assert sorted(report[PLEX]["msg"]) == [f"{W1} {ADDRESS[W1]}:3501 ready max_jobs=2",
                                               f"{W2} {ADDRESS[W2]}:3501 ready max_jobs=3"]
        assert all(r.get("skipped") for h, r in report.items() if h != PLEX)


def test_transcode_through_the_shim_runs_on_a_worker(lab, rolled_out):
    plex = lab["hosts"][PLEX]
    plex.run(["systemd-run", "--unit=fake-pms", "--property=Type=notify", "--property=NotifyAccess=all",
              "python3", "/srv/test/fake_pms.py", "--listen", "127.0.0.1:32400"])
    r = plex.run(["sh", "-c", "cd /transcode/Transcode/Sessions/s1 && runuser -u plex -- "
                              f"'{TRANSCODER}' -i /etc/os-release -progressurl "
                              "http://127.0.0.1:32400/video/:/transcode/session/k1/u1/progress out.ts"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fake Plex Transcoder 1.0" in r.stderr
    jobs = api(plex, "/api/v1/jobs")
    assert len(jobs) == 1 and jobs[0]["worker"] in (W1, W2) and jobs[0]["exit_code"] == 0, jobs
    recs = api(plex, "/_fake/requests", port=32400)
    progress = [x for x in recs if x["path"] == "/video/:/transcode/session/k1/u1/progress"]
    assert progress and progress[0]["remote"] == "127.0.0.1"      # through the relay


def test_verify_fails_naming_the_worker_that_is_not_ready(lab, rolled_out):
    plex = lab["hosts"][PLEX]
    lab["overrides"][W1] = {"clusterplex_worker_transcoder": "/opt/plex/Plex Transcoder"}
    lab["overrides"][PLEX] = {"clusterplex_verify_retries": 3}
    try:
        r = playbook(lab["inventory"]())
        assert r.proc.returncode != 0, r.explain()
        fails = r.failures()
        assert [(h, t) for h, t, _ in fails] == [
            (PLEX, "Wait until every worker of the inventory is ready (and removed ones are gone)"),   # rescued
            (PLEX, "Say which workers are not ready")], r.explain()
        msg = fails[-1][2]
        assert "did not show every worker ready after 3 tries" in msg, msg
        assert f"{W1} is not_ready:" in msg and "/opt/plex/Plex Transcoder not found" in msg, msg
        assert W2 not in msg
    finally:
        lab["overrides"][W1], lab["overrides"][PLEX] = {}, {}
    r = playbook(lab["inventory"]())
    assert r.proc.returncode == 0, r.explain()
    assert {w["name"]: w["state"] for w in api(plex, "/api/v1/workers")} == {W1: "ready", W2: "ready"}


def unit_pid(c, unit):
    return c.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()


def test_rerun_after_a_change_restarts_only_what_changed(lab, rolled_out):
    """A rotated secret reaches every worker and a per-host override only its host: restarts
    through handlers, only where something changed."""
    plex, w1, w2 = lab["hosts"][PLEX], lab["hosts"][W1], lab["hosts"][W2]
    plex.run(["clusterplex", "token", "--rotate", "--quiet"])
    secret = plex.read_file("/etc/clusterplex/secret")
    pids = {(n, u): unit_pid(c, u) for n, c, u in ((PLEX, plex, "clusterplex-orchestrator"),
                                                   (PLEX, plex, "clusterplex-relay"),
                                                   (W1, w1, "clusterplex-worker"), (W2, w2, "clusterplex-worker"))}
    lab["overrides"][W2] = {"clusterplex_worker_max_jobs": 1}
    r = playbook(lab["inventory"]())
    assert r.proc.returncode == 0, r.explain()
    assert secret.strip() not in r.output
    changed = r.changed_tasks()
    assert {(W1, "Install the cluster secret on the worker (mode 0600)"),
            (W2, "Install the cluster secret on the worker (mode 0600)"),
            (W2, "Write /etc/clusterplex/worker.yaml")} <= set(changed), changed
    # plus one handler run per worker (the json callback files handler results under another
    # task's name: counted here, and seen in the new pids below)
    assert {n: r.stats[n]["changed"] for n in lab["hosts"]} == {PLEX: 0, W1: 2, W2: 3}, changed
    for w in (w1, w2):
        assert w.read_file("/etc/clusterplex/secret") == secret
    # the workers restarted (handlers), the Plex host's daemons were left alone
    assert unit_pid(plex, "clusterplex-orchestrator") == pids[(PLEX, "clusterplex-orchestrator")]
    assert unit_pid(plex, "clusterplex-relay") == pids[(PLEX, "clusterplex-relay")]
    assert unit_pid(w1, "clusterplex-worker") != pids[(W1, "clusterplex-worker")]
    assert unit_pid(w2, "clusterplex-worker") != pids[(W2, "clusterplex-worker")]
    # verified ready with the new secret and the new limit
    workers = {w["name"]: (w["state"], w["max_jobs"]) for w in api(plex, "/api/v1/workers")}
    assert workers == {W1: ("ready", 2), W2: ("ready", 1)}


def test_worker_marked_absent_is_removed_and_leaves_the_orchestrator(lab, rolled_out):
    plex, w2 = lab["hosts"][PLEX], lab["hosts"][W2]
    lab["state"][W2] = "absent"
    r = playbook(lab["inventory"]())
    assert r.proc.returncode == 0, r.explain()
    assert r.stats[W2]["changed"] > 0 and r.stats[PLEX]["changed"] == 0 and r.stats[W1]["changed"] == 0
    # gone from the host: packages purged, no config, no secret, no repository, no unit
    assert not any(installed(w2, p) for p in OUR_PACKAGES)
    for path in ("/etc/clusterplex", "/etc/apt/sources.list.d/clusterplex.list",
                 "/etc/systemd/system/clusterplex-worker.service.d", "/var/lib/clusterplex"):
        assert w2.run(["test", "-e", path], check=False).returncode == 1, path
    assert w2.is_active("clusterplex-worker") in ("inactive", "unknown")
    assert w2.run(["pgrep", "-f", "clusterplex-"], check=False).returncode == 1
    # gone from the orchestrator (its goodbye), and the role's check saw it
    journal = plex.journal("clusterplex-orchestrator")
    assert f"worker {W2} said goodbye" in journal, journal[-3000:]
    assert [w["name"] for w in api(plex, "/api/v1/workers")] == [W1]
    report = r.results("Report the workers the orchestrator sees")
    assert report[PLEX]["msg"] == [f"{W1} {ADDRESS[W1]}:3501 ready max_jobs=2"]
    # Plex's transcoder on the worker is untouched
    assert "fake Plex Transcoder 1.0" in w2.read_file(TRANSCODER)
    # and absent is idempotent too
    again = playbook(lab["inventory"]())
    assert again.proc.returncode == 0, again.explain()
    assert {n: again.stats[n]["changed"] for n in lab["hosts"]} == {PLEX: 0, W1: 0, W2: 0}, again.changed_tasks()


def test_plex_host_marked_absent_gets_plex_transcoder_back(lab, rolled_out):
    plex, w1 = lab["hosts"][PLEX], lab["hosts"][W1]
    assert "clusterplex.shim" in plex.read_file(TRANSCODER)
    lab["state"][PLEX] = lab["state"][W1] = "absent"
    r = playbook(lab["inventory"]())
    assert r.proc.returncode == 0, r.explain()
    for c in (plex, w1):
        assert not any(installed(c, p) for p in OUR_PACKAGES)
        assert c.run(["test", "-e", "/etc/clusterplex"], check=False).returncode == 1
        assert c.run(["pgrep", "-f", "clusterplex-"], check=False).returncode == 1
    # Plex's own transcoder is back at its path, the diversion is gone
    assert "fake Plex Transcoder 1.0" in plex.read_file(TRANSCODER)
    assert plex.run(["test", "-e", TRANSCODER + ".distrib"], check=False).returncode == 1
    assert plex.run(["dpkg-divert", "--list", TRANSCODER]).stdout.strip() == ""
    assert installed(plex, "plexmediaserver")
