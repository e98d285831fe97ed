"""A throwaway LAN of network namespaces for multi-host tests.

One namespace holds a bridge; each "host" is a namespace with a veth into
it and an address in 198.51.100.0/24 (TEST-NET-2). Nothing touches the
root namespace's interfaces, nothing is routed, forwarding stays off: mDNS
and all test traffic stay inside. Requires root (CI and the README's test
command run as root).
"""

import os
import subprocess

SUBNET = "198.51.100"


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def available():
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    r = subprocess.run(["ip", "netns", "add", f"cpprobe{os.getpid()}"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    ip("netns", "del", f"cpprobe{os.getpid()}", check=False)
    return None


class Host:
    def __init__(self, lan, name, index):
        self.lan = lan
        self.name = name
        self.ns = f"{lan.prefix}{name}"
        self.addr = f"{SUBNET}.{index}"
        self.veth = f"{lan.prefix}{index}"          # host end (inside self.ns after setup)
        self.peer = f"{lan.prefix}{index}b"         # bridge end (inside the bridge namespace)

    def exec(self, cmd):
        """``cmd`` prefixed to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns] + list(cmd)

    def cut(self):
        """Pull the cable: the host stays up, its packets go nowhere."""
        ip("-n", self.lan.bridge_ns, "link", "set", self.peer, "down")

    def heal(self):
        ip("-n", self.lan.bridge_ns, "link", "set", self.peer, "up")


class Lan:
    def __init__(self, tag="t"):
        self.prefix = f"cp{tag}{os.getpid() % 100000}"
        self.bridge_ns = f"{self.prefix}br"
        self.hosts = {}
        ip("netns", "add", self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def add_host(self, name):
        index = len(self.hosts) + 1
        h = Host(self, name, index)
        ip("netns", "add", h.ns)
        ip("-n", h.ns, "link", "set", "lo", "up")
        ip("link", "add", h.veth, "netns", h.ns, "type", "veth", "peer", "name", h.peer, "netns", self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "set", h.peer, "master", "br0")
        ip("-n", self.bridge_ns, "link", "set", h.peer, "up")
        ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", h.veth)
        ip("-n", h.ns, "link", "set", h.veth, "up")
        self.hosts[name] = h
        return h

    def close(self):
        for h in self.hosts.values():
            ip("netns", "del", h.ns, check=False)
        ip("netns", "del", self.bridge_ns, check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_in(ns, fn, *args, **kw):
    """Run ``fn`` in a thread that has entered namespace ``ns`` (sockets it opens live there)."""
    import ctypes
    import threading
    result = {}

    def target():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:     # CLONE_NEWNET, this thread only
                raise OSError(ctypes.get_errno(), f"setns({ns})")
        finally:
            os.close(fd)
        try:
            result["value"] = fn(*args, **kw)
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=target, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
