"""The container harness itself (testbed/nspawn.py): booted Debian 12 hosts with real systemd,
offline package installs from a local repository, a private LAN, nothing left behind.

Needs root, systemd-container, debootstrap and dpkg-dev (installed on demand); the first run
debootstraps the cached tree (~40 s here) and downloads a few .debs; later runs are offline.
"""

import os
import subprocess
import textwrap
import time

import pytest

from testbed import nspawn

pytestmark = [pytest.mark.system, pytest.mark.packaging, pytest.mark.timeout(300)]   # the first run debootstraps


@pytest.fixture(scope="module")
def tree():
    why = nspawn.ensure_host_tools()
    if why:
        pytest.fail(why)        # never a silent skip: CI runs as root with apt
    try:
        return nspawn.base_tree()
    except nspawn.HarnessError as e:
        pytest.fail(f"cannot build the container tree: {e}")


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert nspawn.leftovers() == []


def build_hello_deb(out):
    """A tiny package: a simple service that needs python3-yaml (not in the tree, so it
    has to come from the local repository) and is enabled and started by its postinst."""
    root = out / "cp-hello"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(textwrap.dedent("""\
        Package: cp-hello
        Version: 1.0
        Architecture: all
        Maintainer: Tests <tests@clusterplex.invalid>
        Depends: python3, python3-yaml
        Description: harness test package
        """))
    (root / "DEBIAN" / "postinst").write_text(textwrap.dedent("""\
        #!/bin/sh
        set -e
        if [ "$1" = configure ]; then
            systemctl daemon-reload
            systemctl enable --now cp-hello.service
        fi
        """))
    (root / "DEBIAN" / "postinst").chmod(0o755)
    unit = root / "lib/systemd/system/cp-hello.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(textwrap.dedent("""\
        [Unit]
        Description=harness test service

        [Service]
        ExecStartPre=/usr/bin/python3 -c 'import yaml; print("hello from yaml", yaml.__version__)'
        ExecStart=/bin/sleep infinity

        [Install]
        WantedBy=multi-user.target
        """))
    deb = out / "cp-hello_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_boot_run_and_files(tree):
    t0 = time.monotonic()
    with nspawn.Container("cpboot", tree) as c:
        boot = time.monotonic() - t0
        assert c.boot_state in ("running", "degraded")
        assert c.systemctl("is-system-running", check=False).stdout.strip() in ("running", "degraded")
        assert boot < 20, f"boot took {boot:.1f} s"
        # its own hostname, machine id, pid namespace; no network but lo
        assert c.run(["hostname"]).stdout.strip() == "cpboot"
        assert c.run(["cat", "/etc/machine-id"]).stdout.strip() == c.uuid
        assert c.run(["sh", "-c", "echo $$"]).stdout.strip() != str(os.getpid())
        assert c.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
        links = c.run(["ip", "-o", "link"]).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        assert c.run(["apt-get", "indextargets"]).stdout.strip() == ""         # no apt sources
        # commands: exit codes, stderr, stdin, timeouts
        r = c.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
        with pytest.raises(nspawn.CommandFailed) as e:
            c.run(["false"])
        assert e.value.returncode == 1 and c.machine in str(e.value)
        assert c.run(["cat"], input="piped").stdout == "piped"
        with pytest.raises(nspawn.HarnessError, match="still running"):
            c.run(["sleep", "30"], timeout=0.5)
        # files
        c.write_file("/srv/test/a.txt", "héllo\n")
        assert c.read_file("/srv/test/a.txt") == "héllo\n"
        c.write_file("/srv/test/secret", b"\x00\x01bin", mode=0o600, owner="nobody")
        assert c.read_file("/srv/test/secret", binary=True) == b"\x00\x01bin"
        assert c.run(["stat", "-c", "%a %U", "/srv/test/secret"]).stdout.split() == ["600", "nobody"]
        # the tree stays untouched (the container writes to a tmpfs overlay)
        assert not (tree / "srv/test").exists()
        # journal and console
        assert "Started" in c.journal("systemd-journald") + c.journal()
    assert "Reached target multi-user.target" in c.console()
    assert c.proc.returncode == 0, c.console(20)


def test_install_a_deb_offline_from_the_local_repo(tree, tmp_path):
    deb = build_hello_deb(tmp_path)
    repo = nspawn.local_repo([], tree, tmp_path / "repo", debs=[deb])
    names = sorted(p.name for p in repo.glob("*.deb"))
    assert any(n.startswith("python3-yaml_") for n in names), names
    assert "Package: cp-hello" in (repo / "Packages").read_text()
    with nspawn.Container("cpdeb", tree, repo=repo) as c:
        assert c.run(["dpkg-query", "-W", "python3-yaml"], check=False).returncode != 0
        r = c.install_debs([deb])
        assert "cp-hello" in r.stdout
        assert c.is_active("cp-hello.service") == "active"
        assert c.systemctl("is-enabled", "cp-hello.service").stdout.strip() == "enabled"
        assert "hello from yaml 6.0" in c.journal("cp-hello.service")
        # offline: the only apt source is the local repository
        sources = c.run(["apt-get", "indextargets", "--format", "$(URI)"]).stdout
        assert sources.strip() and all(u.startswith("file:/srv/repo") for u in sources.split()), sources
        c.systemctl("stop", "cp-hello.service")
        assert c.is_active("cp-hello.service") == "inactive"


def test_two_containers_on_a_bridge(tree):
    with nspawn.Bridge() as br, \
            nspawn.Container("cpa", tree, bridge=br, address="198.51.100.11") as a, \
            nspawn.Container("cpb", tree, bridge=br) as b:
        assert b.address == "198.51.100.1"
        assert len(br.ports()) == 2
        assert "198.51.100.11/24" in a.run(["ip", "-o", "-4", "addr", "show", "dev", "host0"]).stdout
        assert b.run(["ping", "-c", "1", "-W", "5", a.address]).returncode == 0
        # a TCP service on a (a transient unit), a client on b
        server = ("import socket\n"
                  "s = socket.create_server(('198.51.100.11', 7000))\n"
                  "c, peer = s.accept()\n"
                  "c.sendall(socket.gethostname().encode() + b' ' + peer[0].encode() + b' ' + c.recv(100))\n")
        a.run(["systemd-run", "--unit=tcp-echo", "--service-type=exec", "python3", "-c", server])
        client = ("import socket, time\n"
                  "for _ in range(200):\n"
                  "    try:\n"
                  "        c = socket.create_connection(('198.51.100.11', 7000), 2); break\n"
                  "    except OSError:\n"
                  "        time.sleep(0.05)\n"
                  "c.sendall(b'ping')\n"
                  "print(c.recv(100).decode())\n")
        assert b.run(["python3", "-c", client], timeout=30).stdout.split() == ["cpa", b.address, "ping"]
        # the host's own network knows nothing of this LAN
        host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        assert "198.51.100." not in host
        ns_of = {c.machine: os.readlink(f"/proc/{c.leader}/ns/net") for c in (a, b)}
        assert len(set(ns_of.values()) | {os.readlink("/proc/self/ns/net")}) == 3


def test_everything_is_removed_even_when_the_test_fails(tree):
    machines = []
    with pytest.raises(ZeroDivisionError):
        with nspawn.Bridge() as br, nspawn.Container("cpfail", tree, bridge=br) as c:
            machines.append(c.machine)
            leader, ns = c.leader, br.ns
            c.run(["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 &"])   # a stray process inside
            1 / 0
    assert nspawn.leftovers() == []
    assert not os.path.exists(f"/proc/{leader}")
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if machines[0] in line]
    assert not [p for r in nspawn._cgroup_roots() for p in
                [os.path.join(r, nspawn.CGROUP_GROUP, machines[0])] if os.path.exists(p)]
    # a boot that fails cleans up too, and says why
    with pytest.raises(nspawn.HarnessError, match="not a tree made by base_tree"):
        nspawn.Container("cpbad", tree / "etc").start()
