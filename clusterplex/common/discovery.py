"""mDNS: workers and the orchestrator announce themselves; others browse.

- Workers announce ``_cplex-worker._tcp.local.`` with a versioned TXT
  record (``encode_worker_txt``); the orchestrator browses it and feeds the
  worker registry (matching cluster fingerprint only).
- The orchestrator announces ``_clusterplex._tcp.local.``; the relay browses
  it and keeps a cache file that the shim (``orchestrator: auto``) and the
  CLI read, so nothing browses mDNS on the play path.

python-zeroconf is bound to ``discovery.interfaces`` (addresses); an empty
list means every interface, which is for production only (tests always
name interfaces inside network namespaces they created).
"""

import asyncio
import logging
import os
import socket

logger = logging.getLogger(__name__)

# DNS-SD service names are at most 15 characters (RFC 6335, enforced by
# python-zeroconf), so "_clusterplex-worker" cannot be used.
WORKER_TYPE = "_cplex-worker._tcp.local."
ORCHESTRATOR_TYPE = "_clusterplex._tcp.local."
TXT_SCHEMA = "1"
MAX_TXT_ITEM = 255          # one TXT string: length byte + 255
MAX_TXT_TOTAL = 1300        # keep the whole record well inside one packet
RESOLVE_TIMEOUT_MS = 3000


# --- TXT records (pure) ------------------------------------------------------------

def encode_txt(fields):
    """``{key: value}`` -> zeroconf properties; values are truncated to fit DNS limits."""
    out = {}
    total = 0
    for key, value in fields.items():
        value = "" if value is None else str(value)
        room = MAX_TXT_ITEM - len(key.encode()) - 1
        raw = value.encode("utf-8")[:max(0, room)].decode("utf-8", "ignore")
        total += 1 + len(key.encode()) + 1 + len(raw.encode())
        if total > MAX_TXT_TOTAL:
            logger.warning("TXT record full: dropping %s", key)
            continue
        out[key] = raw
    return out


def decode_txt(properties):
    out = {}
    for k, v in (properties or {}).items():
        try:
            key = k.decode("utf-8") if isinstance(k, bytes) else str(k)
            out[key] = v.decode("utf-8") if isinstance(v, bytes) else ("" if v is None else str(v))
        except UnicodeDecodeError:
            continue
    return out


def worker_txt(status, fingerprint, hw_summary=None):
    """The worker's TXT fields (schema 1): who it is, what it can do, its state; never the secret."""
    fields = {
        "v": TXT_SCHEMA,
        "id": status.get("id", ""),
        "name": status.get("name", ""),
        "proto": status.get("proto", ""),
        "state": status.get("state", ""),
        "max_jobs": status.get("max_jobs", ""),
        "fp": fingerprint or "",
    }
    fields.update(hw_summary or {})
    return encode_txt(fields)


def orchestrator_txt(fingerprint, version):
    return encode_txt({"v": TXT_SCHEMA, "fp": fingerprint, "version": version, "path": "/api/v1"})


def service_label(name):
    """A DNS-safe instance label from a free-form name."""
    label = "".join(c if c.isalnum() or c in "-_ " else "-" for c in name).strip() or "clusterplex"
    return label[:63]


def instance(name, type_=WORKER_TYPE):
    """``worker1._cplex-worker._tcp.local.`` -> ``worker1``."""
    return name[:-len(type_) - 1] if name.endswith("." + type_) else name


def local_addresses(interfaces, listen_host):
    """Addresses to announce: the listen address if specific, else the configured interfaces,
    else every non-loopback IPv4 address of the host."""
    if listen_host not in ("", "0.0.0.0", "::"):
        return [listen_host]
    if interfaces:
        return list(interfaces)
    import psutil
    addrs = []
    for entries in psutil.net_if_addrs().values():
        for a in entries:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                addrs.append(a.address)
    return addrs


# --- zeroconf (I/O) --------------------------------------------------------------------

class Mdns:
    """One AsyncZeroconf per daemon, on the configured interfaces only."""

    def __init__(self, interfaces):
        self.interfaces = list(interfaces)
        self.azc = None

    async def start(self):
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncZeroconf
        ifaces = self.interfaces or InterfaceChoice.All
        self.azc = AsyncZeroconf(interfaces=ifaces, ip_version=IPVersion.V4Only)
        logger.info("mDNS on %s", ", ".join(self.interfaces) or "all interfaces")

    async def close(self):
        if self.azc is not None:
            await self.azc.async_close()
            self.azc = None


async def open_mdns(interfaces):
    """A started ``Mdns`` on ``interfaces``, or a StartupError (exit 78) that names them."""
    from ..core.config import EX_CONFIG
    from .daemon import StartupError
    mdns = Mdns(interfaces)
    try:
        await mdns.start()
    except OSError as e:
        raise StartupError(f"cannot start mDNS on {list(interfaces) or 'all interfaces'}: {e.strerror or e} "
                           f"(check discovery.interfaces)", EX_CONFIG) from None
    return mdns


class Announcement:
    """A registered service that can be updated and withdrawn (goodbye)."""

    def __init__(self, mdns, type_, name, port, addresses, txt, unique=False):
        self.mdns = mdns
        self.unique = unique        # name unique by construction: skip RFC 6762 probing (~1 s)
        self.type = type_
        self.name = f"{service_label(name)}.{type_}"
        self.port = port
        self.addresses = addresses
        self.txt = txt
        self.info = None
        self._lock = asyncio.Lock()
        # The SRV target is a host name of our own, unique per process: hosts (or network
        # namespaces) sharing a name must not merge their address records.
        host = service_label(socket.gethostname()).replace(" ", "-").replace("_", "-")[:40]
        self.server = f"{host}-{os.urandom(3).hex()}.local."

    def _info(self):
        from zeroconf.asyncio import AsyncServiceInfo
        return AsyncServiceInfo(self.type, self.name, port=self.port, properties=self.txt,
                                server=self.server, parsed_addresses=self.addresses)

    async def register(self):
        async with self._lock:
            self.info = self._info()
            await (await self.mdns.azc.async_register_service(self.info, allow_name_change=not self.unique,
                                                              cooperating_responders=self.unique))
            self.name = self.info.name
            logger.info("announced %s on %s port %d", self.name, ", ".join(self.addresses), self.port)

    async def update(self, txt):
        async with self._lock:
            if txt == self.txt or self.info is None:
                self.txt = txt
                return
            self.txt = txt
            self.info = self._info()
            await (await self.mdns.azc.async_update_service(self.info))

    async def withdraw(self):
        async with self._lock:
            if self.info is not None and self.mdns.azc is not None:
                await (await self.mdns.azc.async_unregister_service(self.info))
                logger.info("withdrew %s (goodbye sent)", self.name)
                self.info = None


class Watch:
    """Browse one service type; ``on_up(name, host, port, txt)`` / ``on_down(name)`` on the loop."""

    def __init__(self, mdns, type_, on_up, on_down):
        self.mdns = mdns
        self.type = type_
        self.on_up = on_up
        self.on_down = on_down
        self.browser = None
        self._tasks = set()

    async def start(self):
        from zeroconf.asyncio import AsyncServiceBrowser
        self.browser = AsyncServiceBrowser(self.mdns.azc.zeroconf, self.type, handlers=[self._handler])

    def _handler(self, zeroconf, service_type, name, state_change):
        from zeroconf import ServiceStateChange
        if state_change is ServiceStateChange.Removed:
            self.on_down(name)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name):
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo
        info = AsyncServiceInfo(self.type, name)
        try:
            ok = await info.async_request(self.mdns.azc.zeroconf, RESOLVE_TIMEOUT_MS)
        except Exception as e:   # zeroconf raises its own errors for malformed peers
            logger.warning("cannot resolve %s: %s", name, e)
            return
        addrs = info.parsed_addresses(IPVersion.V4Only) if ok else []
        if not ok or not addrs or not info.port:
            logger.debug("%s did not resolve", name)
            return
        self.on_up(name, addrs[0], info.port, decode_txt(info.properties))

    async def close(self):
        for t in list(self._tasks):
            t.cancel()
        if self.browser is not None:
            await self.browser.async_cancel()
            self.browser = None
