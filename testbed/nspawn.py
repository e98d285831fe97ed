"""Throwaway Debian 12 hosts for system tests: booted systemd-nspawn containers (stdlib only).

    why = ensure_host_tools()                  # None, or why the host cannot run containers
    tree = base_tree()                         # cached debootstrap tree (built once, ~40 s)
    repo = local_repo(["python3-yaml"], tree, tmp_path / "repo", debs=[my_deb])
    with Bridge() as br, \\
            Container("a", tree, repo=repo, bridge=br, address="198.51.100.11") as a:
        a.install_debs([my_deb])               # offline apt, dependencies from the local repo
        a.systemctl("is-active", "my.service")

Every container boots a read-only cached tree with ``--volatile=overlay`` (changes live in a
tmpfs and vanish at power-off), with no network at all (``--private-network``) or on a veth into
a Linux bridge that lives in a network namespace of its own (``Bridge``; addresses in
198.51.100.0/24, TEST-NET-2). Nothing is attached to the host's interfaces and nothing is routed.
The containers never reach the network: packages come from a local ``file:`` repository made
on the host (``local_repo``), whose downloaded .debs are cached between runs.

Host requirements (see /work/shared/TESTBED.md): root, systemd-container, debootstrap, dpkg-dev;
the host's PID 1 need not be systemd. Commands run inside with ``nsenter`` on the container's
PID 1 (``machinectl``/``systemctl -M`` need machined, which is not there).

Diagnostics: each container's console (``--console=read-only``: systemd's [  OK  ]/[FAILED]
lines; ``pipe`` would leave it empty, the container then has no /dev/console) goes to
``<log dir>/<machine>.console.log`` (log dir: ``$CLUSTERPLEX_NSPAWN_LOGS`` or
``/tmp/clusterplex-nspawn-logs``; kept a day); a failed boot or command
raises with its tail, and a ``with Container(...)`` block that raises prints the console tail,
the failed units and the journal's warnings to stderr (pytest shows them with the failure).

Cache layout (``$CLUSTERPLEX_NSPAWN_CACHE``, default /var/cache/clusterplex-tests):

    bookworm-<key>/            the debootstrap tree (key: suite, packages, setup version)
    bookworm-<key>.log         debootstrap's output and how long it took
    debs/                      every .deb downloaded for local_repo (apt's archive dir)
    .lock, .lock-debs          flock files (concurrent test runs build/download once)

A tree of another key (older setup) is not removed automatically. A test run that was killed
(SIGKILL) leaves its containers running: the next ``ensure_host_tools()`` reaps them
(``reap_stale``: cgroups, processes and bridges whose owner pid is gone).
"""

import atexit
import contextlib
import fcntl
import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

SUITE = "bookworm"
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "iproute2", "procps", "iputils-ping")
TREE_VERSION = 2            # bump when _prepare_tree changes: the cache key changes with it
SUBNET = "198.51.100"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
REPO_IN_CONTAINER = "/srv/repo"
DEBS_IN_CONTAINER = "/srv/debs"
CGROUP_GROUP = "clusterplex-tests"

HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
CONTAINER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 "HOME": "/root", "TERM": "dumb", "DEBIAN_FRONTEND": "noninteractive"}

HOST_TOOLS = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap",
              "dpkg-scanpackages": "dpkg-dev", "dpkg-deb": "dpkg", "nsenter": "util-linux", "ip": "iproute2"}


def default_cache_dir():
    return Path(os.environ.get("CLUSTERPLEX_NSPAWN_CACHE", "/var/cache/clusterplex-tests"))


def default_log_dir():
    return Path(os.environ.get("CLUSTERPLEX_NSPAWN_LOGS", "/tmp/clusterplex-nspawn-logs"))


class HarnessError(RuntimeError):
    """The harness could not do what was asked (the message says why)."""


class CommandFailed(HarnessError):
    """A command inside a container exited non-zero (``check=True``)."""

    def __init__(self, machine, cmd, returncode, stdout, stderr):
        self.machine, self.cmd, self.returncode, self.stdout, self.stderr = machine, cmd, returncode, stdout, stderr
        super().__init__(f"{machine}: {cmd!r} exited {returncode}\n--- stdout\n{_tail(stdout)}\n"
                         f"--- stderr\n{_tail(stderr)}")


def _tail(s, n=4000):
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    s = s or ""
    return s if len(s) <= n else "..." + s[-n:]


def _host(cmd, timeout=120, check=True, **kw):
    """Run a host command with a clean environment (no pyenv python first on PATH)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        r = subprocess.run([str(c) for c in cmd], env=HOST_ENV, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{' '.join(map(str, cmd))}: no answer within {timeout} s") from e
    except FileNotFoundError as e:
        raise HarnessError(f"{cmd[0]}: not installed ({e})") from e
    if check and r.returncode != 0:
        raise HarnessError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{_tail(r.stdout)}\n{_tail(r.stderr)}")
    return r


@contextlib.contextmanager
def _locked(path):
    """An exclusive flock on ``path`` (other test runs wait instead of building twice)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------------------------
# Host tools

_tools_ok = False


def _missing_tools():
    return sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool, path=HOST_ENV["PATH"])})


def ensure_host_tools():
    """Install systemd-container, debootstrap and dpkg-dev when missing.

    Returns None when the host can run containers, else a one-line reason (for ``pytest.fail``).
    """
    global _tools_ok
    if _tools_ok:
        return None
    if os.geteuid() != 0:
        return "systemd-nspawn containers need root (run the system tests as root)"
    missing = _missing_tools()
    if missing:
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends",
               *missing]
        updated = False
        if not any(Path("/var/lib/apt/lists").glob("*_Packages*")):
            _host(["apt-get", "update", "-q"], timeout=600, check=False)
            updated = True
        r = _host(apt, timeout=900, check=False)
        if r.returncode != 0 and not updated:
            _host(["apt-get", "update", "-q"], timeout=600, check=False)
            r = _host(apt, timeout=900, check=False)
        if r.returncode != 0:
            return (f"cannot install {' '.join(missing)} with apt-get (exit {r.returncode}): "
                    f"{_tail(r.stderr.strip(), 600)}")
        still = _missing_tools()
        if still:
            return f"installed {' '.join(missing)} but still missing: {' '.join(still)}"
    roots = _cgroup_roots()
    if not roots:
        return "no cgroup hierarchy (name=systemd or cgroup2) mounted: systemd-nspawn cannot run"
    for hier in roots:
        if not os.access(hier, os.W_OK):
            return f"cannot write to {hier}: no own cgroup per container"
    reap_stale()
    _tools_ok = True
    return None


def _require_host_tools():
    why = ensure_host_tools()
    if why:
        raise HarnessError(why)


# ---------------------------------------------------------------------------------------------
# The cached tree

def _deb822_stanzas(text):
    stanza, key = {}, None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def host_sources():
    """(uri, suite) of every enabled ``deb`` source of the host's apt, in apt's file order."""
    out = []
    etc = Path("/etc/apt")
    for f in [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list")):
        try:
            lines = f.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = re.sub(r"\s*#.*", "", line).strip()
            line = re.sub(r"\[[^\]]*\]", " ", line)            # [arch=... signed-by=...]
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                out.append((parts[1], parts[2]))
    for f in sorted((etc / "sources.list.d").glob("*.sources")):
        try:
            text = f.read_text()
        except OSError:
            continue
        for st in _deb822_stanzas(text):
            if st.get("enabled", "yes").lower() in ("no", "false", "0"):
                continue
            if "deb" not in st.get("types", "").split():
                continue
            for uri in st.get("uris", "").split():
                for suite in st.get("suites", "").split():
                    out.append((uri, suite))
    return out


def host_mirror(suite=SUITE):
    """The mirror the host's apt uses for ``suite`` ($CLUSTERPLEX_NSPAWN_MIRROR overrides)."""
    if os.environ.get("CLUSTERPLEX_NSPAWN_MIRROR"):
        return os.environ["CLUSTERPLEX_NSPAWN_MIRROR"]
    usable = [(u, s) for u, s in host_sources() if not u.startswith(("cdrom:", "mirror+file:"))]
    for uri, s in usable:
        if s == suite:
            return uri
    for uri, s in usable:
        if s.startswith(suite) and "security" not in s:
            return uri
    return DEFAULT_MIRROR


def _mounts_under(path):
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path or mp.startswith(path + "/"):
                found.append(mp)
    return found


def _remove_tree(path):
    """rm -rf that first unmounts whatever is mounted below (a failed debootstrap leaves /proc)."""
    path = Path(path)
    if not path.exists():
        return
    for mp in sorted(_mounts_under(path), key=len, reverse=True):
        _host(["umount", "-l", mp], check=False)
    if _mounts_under(path):
        raise HarnessError(f"cannot remove {path}: still mounted: {_mounts_under(path)}")
    shutil.rmtree(path)


def _tree_key():
    return hashlib.sha256(repr((SUITE, INCLUDE, TREE_VERSION)).encode()).hexdigest()[:10]


def base_tree(cache_dir=None):
    """The cached Debian 12 tree (debootstrap minbase + systemd, dbus, python3, iproute2, procps,
    ping), built once atomically (in a temporary directory, then renamed) and reused."""
    cache_dir = Path(cache_dir or default_cache_dir())
    final = cache_dir / f"{SUITE}-{_tree_key()}"
    if (final / "etc" / "clusterplex-test-tree").exists():
        return final
    _require_host_tools()
    with _locked(cache_dir / ".lock"):
        if (final / "etc" / "clusterplex-test-tree").exists():
            return final
        for stale in cache_dir.glob(".build-*"):          # we hold the lock: nobody is building
            _remove_tree(stale)
        if final.exists():                                # not ours (no marker): rebuild
            _remove_tree(final)
        tmp = cache_dir / f".build-{final.name}-{os.getpid()}"
        mirror = host_mirror()
        log = cache_dir / f"{final.name}.log"
        t0 = time.monotonic()
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", "--components=main",
               SUITE, str(tmp), mirror]
        try:
            r = _host(cmd, timeout=1800, check=False)
            log.write_text(f"$ {' '.join(cmd)}\n{r.stdout}\n{r.stderr}\nexit {r.returncode} "
                           f"after {time.monotonic() - t0:.1f} s\n")
            if r.returncode != 0:
                raise HarnessError(f"debootstrap failed (exit {r.returncode}, log {log}):\n{_tail(r.stdout)}\n"
                                   f"{_tail(r.stderr)}")
            _prepare_tree(tmp)
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        with open(log, "a") as f:
            f.write(f"tree ready after {time.monotonic() - t0:.1f} s: {final}\n")
    return final


def _prepare_tree(root):
    """Make the debootstrapped tree a good throwaway host: offline apt, unique identity per boot."""
    root = Path(root)
    # apt: no network sources (containers are offline); the harness adds a file: repository
    (root / "etc/apt/sources.list").write_text("# offline test host: testbed/nspawn.py adds "
                                               f"'deb [trusted=yes] file:{REPO_IN_CONTAINER} ./'\n")
    for f in (root / "etc/apt/sources.list.d").glob("*"):
        f.unlink()
    for f in (root / "var/lib/apt/lists").glob("*"):
        if f.is_file() and f.name != "lock":
            f.unlink()
    for f in (root / "var/cache/apt/archives").glob("*.deb"):
        f.unlink()
    for f in (root / "var/cache/apt").glob("*.bin"):
        f.unlink()
    (root / "etc/apt/apt.conf.d/90clusterplex-test").write_text(
        'Acquire::Languages "none";\nAPT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        'Dpkg::Use-Pty "false";\nAPT::Periodic::Enable "0";\n')
    # identity: an empty machine-id (nspawn's --uuid gives each boot its own), no static hostname
    # (nspawn's --hostname stays), first-boot prompts masked (they would wait on the console)
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/resolv.conf").unlink(missing_ok=True)         # debootstrap copied the host's
    (root / "etc/resolv.conf").write_text("# offline test host: no DNS\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    system = root / "etc/systemd/system"
    for unit in ("systemd-firstboot.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "apt-daily.service", "apt-daily-upgrade.service", "dpkg-db-backup.timer", "e2scrub_all.timer",
                 "e2scrub_reap.service", "fstrim.timer", "systemd-networkd-wait-online.service"):
        link = system / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # systemd-networkd configures a bridged container's address at boot (a .network file that
    # the harness binds in); with --private-network it only sees lo
    for target, unit in (("multi-user.target.wants", "systemd-networkd.service"),
                         ("sockets.target.wants", "systemd-networkd.socket")):
        (system / target).mkdir(exist_ok=True)
        link = system / target / unit
        link.unlink(missing_ok=True)
        link.symlink_to(f"/lib/systemd/system/{unit}")
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    for d in (DEBS_IN_CONTAINER, REPO_IN_CONTAINER):
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / "etc/clusterplex-test-tree").write_text(f"suite={SUITE}\ninclude={','.join(INCLUDE)}\n"
                                                    f"version={TREE_VERSION}\nbuilt={time.time():.0f}\n")


# ---------------------------------------------------------------------------------------------
# Local apt repository

_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([^\]]+)\]\)")


def _deb_field(deb, field):
    return _host(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


def _apt_host_opts(tree, pool):
    return ["-o", f"Dir::State::status={Path(tree) / 'var/lib/dpkg/status'}",
            "-o", f"Dir::Cache::archives={pool}",
            "-o", "Debug::NoLocking=1",
            "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
            "-o", "APT::Install-Recommends=false", "-o", "APT::Install-Suggests=false",
            "-o", "APT::Get::AllowUnauthenticated=false", "-q"]


def _resolve(args, tree, pool, local_names):
    """What apt would install into the tree for ``args``: [(package, version, arch)], without
    the local .debs themselves."""
    r = _host(["apt-get", *_apt_host_opts(tree, pool), "-s", "install", "-y", *args], timeout=300, check=False)
    if r.returncode != 0:
        raise HarnessError(f"apt-get cannot resolve {' '.join(args)} for the tree:\n{_tail(r.stdout)}\n"
                           f"{_tail(r.stderr)}")
    out = []
    for line in r.stdout.splitlines():
        m = _INST.match(line)
        if m:
            name = m.group(1).split(":")[0]
            if name not in local_names:
                out.append((name, m.group(2), m.group(3)))
    return out


def _pool_name(name, version, arch):
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def local_repo(packages, tree, repo_dir, debs=(), cache_dir=None):
    """A flat apt repository in ``repo_dir`` for offline installs into containers of ``tree``.

    It holds the .debs that installing ``packages`` (Debian package names) and the local
    ``debs`` (paths, e.g. our own packages) into ``tree`` needs, resolved against the tree's
    dpkg status, plus ``debs`` themselves, and a ``Packages`` index. Downloads happen on the
    host, through the host's apt lists, into ``<cache>/debs`` (a second run needs no network).
    """
    _require_host_tools()
    cache_dir = Path(cache_dir or default_cache_dir())
    pool = cache_dir / "debs"
    (pool / "partial").mkdir(parents=True, exist_ok=True)
    repo_dir = Path(repo_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    debs = [Path(d).resolve() for d in debs]
    for d in debs:
        if not d.is_file():
            raise HarnessError(f"{d}: no such .deb")
    local_names = {_deb_field(d, "Package") for d in debs}
    args = [*packages, *map(str, debs)]
    needed = []
    if args:
        with _locked(cache_dir / ".lock-debs"):
            for attempt in (1, 2):
                try:
                    needed = _resolve(args, tree, pool, local_names)
                    if all((pool / _pool_name(*n)).is_file() for n in needed):
                        break
                    r = _host(["apt-get", *_apt_host_opts(tree, pool), "install", "--download-only", "-y",
                               *args], timeout=1800, check=False)
                    if r.returncode == 0 and all((pool / _pool_name(*n)).is_file() for n in needed):
                        break
                    problem = (f"cannot download {' '.join(args)} (exit {r.returncode}):\n{_tail(r.stdout)}\n"
                               f"{_tail(r.stderr)}")
                except HarnessError as e:
                    problem = str(e)
                if attempt == 2:
                    raise HarnessError(problem)
                _host(["apt-get", "update", "-q"], timeout=600, check=False)     # no or stale host lists
    for n in needed:
        src, dst = pool / _pool_name(*n), repo_dir / _pool_name(*n)
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    for d in debs:
        shutil.copy2(d, repo_dir / d.name)
    r = _host(["dpkg-scanpackages", "--multiversion", "."], cwd=repo_dir, timeout=300)
    (repo_dir / "Packages").write_text(r.stdout)
    os.chmod(repo_dir, 0o755)
    return repo_dir


# ---------------------------------------------------------------------------------------------
# cgroups, processes, leftovers

def _cgroup_roots():
    """The writable hierarchies to give each nspawn its own cgroup in: the named systemd v1
    hierarchy and the unified (v2) one, wherever they are mounted."""
    roots = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, pfields = pre.split(), post.split()
            mp, fstype, opts = fields[4], pfields[0], pfields[-1]
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts.split(",")):
                roots.append(mp)
    return roots


def _cgroup_dirs(machine):
    return [Path(r) / CGROUP_GROUP / machine for r in _cgroup_roots()]


def _cgroup_pids(d):
    pids = set()
    for procs in Path(d).rglob("cgroup.procs"):
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:
            pass
    return pids


def _remove_cgroup(d, timeout=10):
    """Kill whatever is left in cgroup ``d`` and remove it (children first)."""
    d = Path(d)
    if not d.exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        pids = _cgroup_pids(d)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HarnessError(f"cgroup {d}: processes {sorted(pids)} survive SIGKILL")
        time.sleep(0.02)
    while True:
        subs = sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        try:
            for sub in subs + [d]:
                os.rmdir(sub)
            return
        except FileNotFoundError:
            continue
        except OSError as e:
            if time.monotonic() > deadline:
                raise HarnessError(f"cannot remove cgroup {d}: {e}") from e
            time.sleep(0.02)


def _kill_nsenter(p):
    """Kill a ``nsenter -p`` command: first what it forked inside (its process group, so that
    nsenter reaps it: a child outliving nsenter is re-parented to the *host's* init and, as an
    unreaped zombie, holds up the container's shutdown), then nsenter itself."""
    victims = set(_children(p.pid))                     # its child, even one that called setsid
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != p.pid:
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[2]) == p.pid:       # pgrp
                victims.add(int(proc.name))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _netns_names():
    r = _host(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def leftovers(pid=None):
    """Anything this test process (or ``pid``) started that is still there: nspawn processes,
    cgroups, network namespaces, mounts of a container tree. [] when all is clean."""
    tag = f"-{pid or os.getpid()}-"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"systemd-nspawn") and \
                any(a.startswith(b"--machine=") and tag.encode() in a for a in cmdline):
            found.append(f"process {proc.name}: {b' '.join(cmdline).decode(errors='replace')}")
    for root in _cgroup_roots():
        group = Path(root) / CGROUP_GROUP
        if group.is_dir():
            found += [f"cgroup {d}" for d in group.iterdir() if d.is_dir() and tag in d.name + "-"]
    found += [f"netns {n}" for n in _netns_names() if n.startswith(f"cpnb{pid or os.getpid()}x")]
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if tag in line.split()[4] + "-"]
    for d in ("/run/systemd/nspawn/propagate", "/run/systemd/nspawn/unix-export"):
        if os.path.isdir(d):
            found += [f"{d}/{n}" for n in os.listdir(d) if tag in n + "-"]
    return found


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def reap_stale():
    """Remove what test runs that died without cleaning up (SIGKILL) left: containers whose
    machine name carries a pid that is gone (killed with their cgroup), their cgroups, the
    network namespaces of their bridges. Live runs are left alone. Returns what was removed."""
    removed = []
    for root in _cgroup_roots():
        group = Path(root) / CGROUP_GROUP
        if not group.is_dir():
            continue
        for d in group.iterdir():
            m = re.fullmatch(r".*-(\d+)-\d+", d.name)
            if d.is_dir() and m and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(HarnessError):
                    _remove_cgroup(d)
                    removed.append(f"cgroup {d}")
        with contextlib.suppress(OSError):
            group.rmdir()
    propagate = Path("/run/systemd/nspawn/propagate")      # nspawn removes it when not SIGKILLed
    if propagate.is_dir():
        for d in propagate.iterdir():
            m = re.fullmatch(r".*-(\d+)-\d+", d.name)
            if m and not _pid_alive(int(m.group(1))) and not _mounts_under(d):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
    for n in _netns_names():
        m = re.fullmatch(r"cpnb(\d+)x\d+", n)
        if m and not _pid_alive(int(m.group(1))):
            _host(["ip", "netns", "del", n], check=False)
            removed.append(f"netns {n}")
    return removed


_live = {}
_live_lock = threading.Lock()
_seq = itertools.count(1)


def _register(obj):
    with _live_lock:
        _live[id(obj)] = obj


def _unregister(obj):
    with _live_lock:
        _live.pop(id(obj), None)


@atexit.register
def cleanup_all():
    """Stop every container and close every bridge this process still holds (a safety net:
    use the context managers)."""
    with _live_lock:
        objs = list(_live.values())
    for o in objs:
        if isinstance(o, Container):
            with contextlib.suppress(Exception):
                o.stop()
    for o in objs:
        if isinstance(o, Bridge):
            with contextlib.suppress(Exception):
                o.close()


# ---------------------------------------------------------------------------------------------
# Network

class Bridge:
    """A Linux bridge ``br0`` in a network namespace of its own: a LAN for containers.

    Containers join it with ``Container(..., bridge=br, address="198.51.100.N")`` (or let
    ``address()`` pick the next free one). Nothing connects it to the host's interfaces.
    """

    IFNAME = "br0"

    def __init__(self):
        _require_host_tools()
        self.ns = f"cpnb{os.getpid()}x{next(_seq)}"
        self.path = f"/run/netns/{self.ns}"
        self._next = 1
        self._used = set()
        _host(["ip", "netns", "add", self.ns])
        _register(self)
        try:
            _host(["ip", "-n", self.ns, "link", "set", "lo", "up"])
            _host(["ip", "-n", self.ns, "link", "add", self.IFNAME, "type", "bridge", "mcast_snooping", "0"])
            _host(["ip", "-n", self.ns, "link", "set", self.IFNAME, "up"])
        except BaseException:
            self.close()
            raise

    def address(self):
        """The next unused 198.51.100.x address on this bridge."""
        while f"{SUBNET}.{self._next}" in self._used:
            self._next += 1
        a = f"{SUBNET}.{self._next}"
        self._used.add(a)
        return a

    def _claim(self, address):
        if address in self._used:
            raise HarnessError(f"{address} is already used on bridge {self.ns}")
        self._used.add(address)

    def ports(self):
        """The container veths attached to the bridge (inside the bridge's namespace)."""
        r = _host(["ip", "-n", self.ns, "-o", "link", "show", "master", self.IFNAME], check=False)
        return [line.split(":")[1].strip().split("@")[0] for line in r.stdout.splitlines()]

    def close(self):
        _host(["ip", "netns", "del", self.ns], check=False)
        _unregister(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------
# Containers

_pruned = set()


def _prune_logs(log_dir, max_age=86400):
    """Console logs stay for diagnostics; those older than a day go (once per process)."""
    if log_dir in _pruned:
        return
    _pruned.add(log_dir)
    now = time.time()
    for f in log_dir.glob("*.console.log"):
        with contextlib.suppress(OSError):
            if now - f.stat().st_mtime > max_age:
                f.unlink()


def _machine_name(name):
    clean = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-") or "c"
    return f"{clean[:40]}-{os.getpid()}-{next(_seq)}"


class Container:
    """A booted Debian 12 host: ``systemd-nspawn -b --volatile=overlay`` of a cached tree.

    ``name`` becomes the hostname; the machine name (``self.machine``: name, pid, counter) is
    unique per test run. ``repo``: a ``local_repo`` directory, bind-mounted read-only at
    /srv/repo. ``binds``: (host path, container path) pairs (read-write). ``bridge``/``address``:
    a veth into ``Bridge`` with that 198.51.100.x/24 address (configured by systemd-networkd at
    boot; ``start()`` returns once it is up); without a bridge the container has only ``lo``.
    ``console``: nspawn's --console mode. ``read-only`` (default) gives the container a pty as
    /dev/console and copies it to the console log (systemd's [ OK ]/[FAILED] lines, getty); with
    ``pipe`` the container has no /dev/console and the log stays empty.
    """

    def __init__(self, name, tree, repo=None, binds=(), bridge=None, address=None, log_dir=None,
                 boot_timeout=60, console="read-only"):
        if address and not bridge:
            raise ValueError("address= needs bridge=")
        self.name = name
        self.hostname = re.sub(r"[^A-Za-z0-9-]", "-", name)[:63]
        self.machine = _machine_name(name)
        self.tree = Path(tree)
        self.repo = Path(repo) if repo else None
        self.binds = [(str(h), str(c)) for h, c in binds]
        self.bridge = bridge
        if bridge is not None:
            if address:
                bridge._claim(address)
            else:
                address = bridge.address()
        self.address = address
        self.boot_timeout = boot_timeout
        self.console_mode = console
        self.log_dir = Path(log_dir or default_log_dir())
        self.console_log = self.log_dir / f"{self.machine}.console.log"
        self.uuid = uuid.uuid4().hex
        self.proc = None
        self.leader = None
        self.boot_state = None
        self.boot_seconds = None
        self._cgroups = []
        self._netfile = None
        self._console = None

    # -- lifecycle -----------------------------------------------------------------------------

    def _argv(self):
        argv = ["systemd-nspawn", "-D", str(self.tree), "--volatile=overlay", "-b", f"--machine={self.machine}",
                f"--hostname={self.hostname}", f"--uuid={self.uuid}", "--register=no", "--keep-unit",
                f"--console={self.console_mode}", "--link-journal=no", "--resolv-conf=off", "--timezone=off"]
        if self.repo:
            argv.append(f"--bind-ro={self.repo.resolve()}:{REPO_IN_CONTAINER}")
        for host, cont in self.binds:
            argv.append(f"--bind={host}:{cont}")
        if self.bridge is None:
            argv.append("--private-network")
        else:
            self._netfile = self.log_dir / f"{self.machine}.network"
            self._netfile.write_text(f"[Match]\nName=host0\n\n[Link]\nRequiredForOnline=yes\n\n[Network]\n"
                                     f"Address={self.address}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n")
            argv += [f"--network-bridge={Bridge.IFNAME}",
                     f"--bind-ro={self._netfile}:/etc/systemd/network/10-clusterplex-test.network"]
            argv = ["nsenter", f"--net={self.bridge.path}", "--", *argv]
        return argv

    def start(self):
        """Boot; return when systemd says ``running`` or ``degraded`` (raise with the console's
        tail when it does not within ``boot_timeout`` s)."""
        if self.proc is not None:
            raise HarnessError(f"{self.machine}: already started")
        _require_host_tools()
        if not (self.tree / "etc/clusterplex-test-tree").exists():
            raise HarnessError(f"{self.tree}: not a tree made by base_tree()")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _prune_logs(self.log_dir)
        t0 = time.monotonic()
        _register(self)
        try:
            argv = self._argv()
            self._cgroups = _cgroup_dirs(self.machine)
            procs = []
            for d in self._cgroups:
                d.mkdir(parents=True, exist_ok=True)
                procs.append(str(d / "cgroup.procs"))
            # the shell puts itself (then exec: nspawn) into the container's own cgroups
            wrapper = ["/bin/sh", "-c", 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; '
                                        'shift; n=$((n-1)); done; exec "$@"', "nspawn-wrapper", str(len(procs)),
                       *procs, *argv]
            self._console = open(self.console_log, "wb")
            self._console.write(f"$ {' '.join(argv)}\n".encode())
            self._console.flush()
            self.proc = subprocess.Popen(wrapper, stdin=subprocess.DEVNULL, stdout=self._console,
                                         stderr=subprocess.STDOUT, env=HOST_ENV, start_new_session=True)
            self._wait_boot(t0 + self.boot_timeout)
            if self.bridge is not None:
                self._wait_address(t0 + self.boot_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                sys.stderr.write(self.diagnostics())
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def _boot_failed(self, why):
        return HarnessError(f"{self.machine}: {why}\n--- console ({self.console_log})\n{self.console(60)}")

    def _wait_boot(self, deadline):
        while self.leader is None:
            if self.proc.poll() is not None:
                raise self._boot_failed(f"systemd-nspawn exited {self.proc.returncode} during boot")
            for child in _children(self.proc.pid):
                if _comm(child) == "systemd":
                    self.leader = child
            if self.leader is None:
                if time.monotonic() > deadline:
                    raise self._boot_failed("no systemd in the container")
                time.sleep(0.01)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._boot_failed(f"systemd did not finish booting (state {self.boot_state})")
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left)
            except HarnessError:
                r = None
            if r is not None:
                self.boot_state = r.stdout.strip() or r.stderr.strip()
                if self.boot_state in ("running", "degraded"):
                    return
                if self.boot_state in ("stopping", "maintenance"):
                    raise self._boot_failed(f"systemd is {self.boot_state}")
            if self.proc.poll() is not None:
                raise self._boot_failed(f"systemd-nspawn exited {self.proc.returncode} during boot")
            time.sleep(0.05)      # PID 1 not yet listening on its private socket

    def _wait_address(self, deadline):
        """Block (systemd-networkd-wait-online) until host0 has its address."""
        left = max(1, int(deadline - time.monotonic()))
        r = self.run(["/lib/systemd/systemd-networkd-wait-online", "--interface=host0:routable",
                      f"--timeout={left}"], check=False, timeout=left + 5)
        if r.returncode != 0:
            addrs = self.run(["ip", "-o", "addr"], check=False).stdout
            raise self._boot_failed(f"host0 did not get {self.address}: {r.stderr.strip()}\n{addrs}")

    def stop(self, timeout=30):
        """Power off (``systemctl poweroff`` inside), wait for nspawn to exit (SIGTERM, then
        SIGKILL of everything in its cgroup as a last resort), remove its cgroups."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                asked = False
                if self.leader:
                    with contextlib.suppress(Exception):
                        asked = self.run(["systemctl", "poweroff", "--no-block"], check=False,
                                         timeout=10).returncode == 0
                try:
                    self.proc.wait(timeout if asked else 0.01)
                except subprocess.TimeoutExpired:
                    self._note("harness: SIGTERM to nspawn" + (f" (no power-off within {timeout} s)" if asked else ""))
                    self.proc.terminate()          # nspawn asks the container's systemd to halt
                    try:
                        self.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self._note("harness: SIGKILL to everything in the container's cgroup")
                        for d in self._cgroups:
                            for pid in _cgroup_pids(d):
                                with contextlib.suppress(ProcessLookupError):
                                    os.kill(pid, signal.SIGKILL)
                        self.proc.kill()
                        self.proc.wait(10)
        finally:
            errors = []
            for d in self._cgroups:
                try:
                    _remove_cgroup(d)
                except HarnessError as e:
                    errors.append(str(e))
            self._cgroups = []
            for parent in {Path(r) / CGROUP_GROUP for r in _cgroup_roots()}:
                with contextlib.suppress(OSError):
                    parent.rmdir()                 # only when no other run uses it
            if self._netfile:
                self._netfile.unlink(missing_ok=True)
            if self._console:
                self._console.close()
                self._console = None
            self.leader = None
            _unregister(self)
            if errors:
                raise HarnessError("; ".join(errors))

    def _note(self, msg):
        if self._console:
            self._console.write(f"\n{msg}\n".encode())
            self._console.flush()

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.leader:
            with contextlib.suppress(Exception):
                sys.stderr.write(self.diagnostics())
        self.stop()

    # -- inside ----------------------------------------------------------------------------------

    def run(self, cmd, check=True, timeout=120, input=None, text=True, env=None):
        """Run ``cmd`` (argv list, or a string for ``sh -c``) inside as root; returns a
        CompletedProcess (stdout/stderr captured; str unless ``text=False``)."""
        if not self.leader:
            raise HarnessError(f"{self.machine}: not running")
        if isinstance(cmd, str):
            cmd = ["/bin/sh", "-c", cmd]
        cmd = [str(c) for c in cmd]
        argv = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "--", *cmd]
        if text and isinstance(input, str):
            input = input.encode()
        p = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**CONTAINER_ENV, **(env or {})},
                             start_new_session=True)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_nsenter(p)
            out, err = p.communicate()
            raise HarnessError(f"{self.machine}: {cmd!r} still running after {timeout} s\n"
                               f"--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}") from None
        except BaseException:
            _kill_nsenter(p)
            raise
        if text:
            out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        r = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        if check and r.returncode != 0:
            raise CommandFailed(self.machine, cmd, r.returncode, out, err)
        return r

    def systemctl(self, *args, check=True, timeout=120):
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def is_active(self, unit):
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def write_file(self, path, data, mode=0o644, owner=None):
        """Write ``data`` (str or bytes) to ``path`` inside (parents created), chmod ``mode``,
        chown ``owner`` ("user" or "user:group") if given."""
        if isinstance(data, str):
            data = data.encode()
        script = 'umask 022; mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        args = [path, format(mode, "o")]
        if owner:
            script += ' && chown "$3" "$1"'
            args.append(owner)
        self.run(["/bin/sh", "-c", script, "write_file", *args], input=data, text=False)

    def read_file(self, path, binary=False):
        out = self.run(["cat", "--", path], text=False).stdout
        return out if binary else out.decode("utf-8", "replace")

    def install_debs(self, paths, timeout=600):
        """Copy .debs into /srv/debs and ``apt-get install`` them offline: their dependencies
        come from the local repo (``repo=``) at /srv/repo."""
        paths = [Path(p) for p in paths]
        inside = []
        for p in paths:
            dst = f"{DEBS_IN_CONTAINER}/{p.name}"
            self.write_file(dst, p.read_bytes())
            inside.append(dst)
        if self.repo:
            self.write_file("/etc/apt/sources.list.d/clusterplex-test.list",
                            f"deb [trusted=yes] file:{REPO_IN_CONTAINER} ./\n")
            self.run(["apt-get", "update", "-q"], timeout=timeout)
        return self.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *inside], timeout=timeout)

    def journal(self, unit=None, lines=None):
        """``journalctl -u UNIT --no-pager`` (the whole boot's journal without a unit)."""
        cmd = ["journalctl", "--no-pager", "-b"]
        if unit:
            cmd += ["-u", unit]
        if lines:
            cmd += ["-n", str(lines)]
        return self.run(cmd, check=False).stdout

    def console(self, lines=None):
        """The console log (what systemd printed while booting and stopping)."""
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:] if lines else kept) + "\n"

    def diagnostics(self):
        """Console tail, failed units and the journal's warnings: why something went wrong."""
        parts = [f"=== {self.machine} ({self.name}, {self.address or 'no network'}) console: {self.console_log}",
                 self.console(40)]
        if self.leader:
            with contextlib.suppress(Exception):
                parts += ["--- systemctl --failed", self.systemctl("--failed", "--no-pager", check=False,
                                                                   timeout=10).stdout]
            with contextlib.suppress(Exception):
                parts += ["--- journal (warnings)", self.run(["journalctl", "-b", "--no-pager", "-p", "warning",
                                                             "-n", "60"], check=False, timeout=10).stdout]
        return "\n".join(parts) + "\n"

    def __repr__(self):
        return f"<Container {self.machine} leader={self.leader} {self.address or 'private'}>"
