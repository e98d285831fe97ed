"""A cluster whose hosts are network namespaces on one bridge (see netns.py):
the orchestrator host runs the fake PMS, the relay, the orchestrator and the
shims; each worker has a host of its own. Everything is found over mDNS."""

import json

from testbed import cluster as cl
from testbed import netns


class NetCluster(cl.Cluster):
    """The orchestrator host (fake PMS, relay, orchestrator, shims) and worker hosts, each its own namespace."""

    def __init__(self, root, lan, workers=2, **kw):
        self.lan = lan
        self.orch_host = lan.add_host("orch")
        self.worker_hosts = [lan.add_host(f"w{i}") for i in range(workers)]
        super().__init__(root, workers=workers, **kw)

    def wrap(self, role, cmd):
        host = self.worker_hosts[int(role[6:])] if role.startswith("worker") else self.orch_host
        return host.exec(cmd)

    def worker_config(self, i, **over):
        h = self.worker_hosts[i]
        return super().worker_config(i, listen=f"{h.addr}:3501", discovery={"enabled": True, "interfaces": [h.addr]},
                                     **over)

    def orchestrator_config(self, listen=None):     # always the host's own address, port 3500
        return cl.write_yaml(self.root / "orchestrator.yaml", {
            "listen": f"{self.orch_host.addr}:3500", "secret_file": str(self.secret_file),
            "strategy": self.strategy, "discovery": {"enabled": True, "interfaces": [self.orch_host.addr]},
            "heartbeat_interval": 1.0, "log_level": "debug"})

    def pms_config(self, name, mode="both", **over):
        cfg = {"relay": {"listen": f"{self.orch_host.addr}:32499", "advertise": f"http://{self.orch_host.addr}:32499"},
               "orchestrator": "auto",
               "discovery": {"enabled": True, "interfaces": [self.orch_host.addr],
                             "cache_file": str(self.root / "orchestrator.json")}}
        cfg.update(over)
        path = super().pms_config(name, mode=mode)
        data = json.loads(path.read_text())
        data.update(cfg)
        return cl.write_yaml(path, data)

    def api(self, path):
        return netns.run_in(self.orch_host.ns, super().api, path)

    def pms_requests(self):
        return netns.run_in(self.orch_host.ns, super().pms_requests)

    def start(self):
        super().start()
        try:   # the relay finds the orchestrator over mDNS for the shims (orchestrator: auto)
            self.relay.wait_status(r"orchestrator http://", 10)
        except BaseException:
            self.stop()
            raise
        return self


class DirectCluster(NetCluster):
    """The relay off: PMS (fake) listens on the Plex host's LAN address and every pms.yaml points the
    workers straight at it. ``allowed_networks``: what Plex must let in without a token (its
    "allowed without auth" setting), or None to leave the fake PMS's default."""

    def __init__(self, root, lan, allowed_networks=None, **kw):
        self.allowed_networks = allowed_networks
        super().__init__(root, lan, **kw)

    def wrap(self, role, cmd):
        if role == "pms":
            cmd = [f"{self.orch_host.addr}:0" if a == "127.0.0.1:0" else a for a in cmd]
            if self.allowed_networks is not None:
                cmd += ["--allowed-networks", self.allowed_networks]
        return super().wrap(role, cmd)

    def pms_config(self, name, mode="both", **over):
        path = super().pms_config(name, mode=mode, **over)
        data = json.loads(path.read_text())
        data["relay"].update({"enabled": False, "direct_url": self.pms.url})
        return cl.write_yaml(path, data)
