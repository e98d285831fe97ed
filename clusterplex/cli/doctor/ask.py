"""Asking the orchestrator: a real handshake with the cluster secret (as a shim), then, on the Plex host,
the probe that it runs on every connected worker."""

import asyncio
import time

from ...core import cache, messages, protocol
from .checks import FAIL, OK, finding


class Unreachable(Exception):
    """The orchestrator could not be asked: ``check`` finding attached."""

    def __init__(self, f):
        super().__init__(f["message"])
        self.finding = f


async def ask_orchestrator(url, secret, probe, timeout):
    """Handshake with the cluster secret, send the probe (unless None); (finding, probe_results msg or None)."""
    import aiohttp
    from ...common import link
    async with aiohttp.ClientSession() as http:
        try:
            ws, _info = await link.connect(http, url + protocol.SHIM_PATH, secret, protocol.ROLE_SHIM,
                                           protocol.ROLE_ORCHESTRATOR, None, timeout)
        except protocol.AuthError as e:
            raise Unreachable(finding(
                "orchestrator", FAIL, f"the orchestrator at {url} does not accept this host's cluster secret ({e}).",
                "use the same secret on both: on the orchestrator host `clusterplex token`, here "
                "`clusterplex join TOKEN` (or copy secret_file)")) from None
        except aiohttp.WSServerHandshakeError as e:
            raise Unreachable(finding(
                "orchestrator", FAIL, f"{url} answers HTTP {e.status}, but it is not a ClusterPlex orchestrator.",
                "set `orchestrator` in pms.yaml to the orchestrator's address (port 3500 by default)")) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise Unreachable(finding(
                "orchestrator", FAIL, f"cannot reach the orchestrator at {url}: "
                                      f"{e or 'no answer within ' + format(timeout, 'g') + ' s'}.",
                "start it (systemctl status clusterplex-orchestrator on its host) and check `orchestrator` in "
                "pms.yaml and the firewall")) from None
        ok = finding("orchestrator", OK, f"the orchestrator at {url} answers and accepts this host's cluster secret.")
        if probe is None:
            await ws.close()
            return ok, None
        try:
            await ws.send_str(protocol.encode(messages.probe(probe)))
            deadline = time.monotonic() + probe["timeout"] + timeout
            while True:
                msg = await asyncio.wait_for(ws.receive(), max(0.1, deadline - time.monotonic()))
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise Unreachable(finding("orchestrator", FAIL, f"the orchestrator at {url} closed the "
                                                                    f"connection instead of answering the probe.",
                                              "update clusterplex-orchestrator to this version"))
                reply = protocol.decode(msg.data)
                if reply["type"] == messages.PROBE_RESULTS:
                    return ok, reply
        except asyncio.TimeoutError:
            raise Unreachable(finding("orchestrator", FAIL, f"the orchestrator at {url} accepts this host's secret "
                                                            f"but did not answer the probe.",
                                      "update clusterplex-orchestrator to this version")) from None
        except protocol.ProtocolError as e:
            raise Unreachable(finding("orchestrator", FAIL, f"the orchestrator at {url} sent a bad answer: {e}.",
                                      "update clusterplex-orchestrator to this version")) from None
        finally:
            await ws.close()


def orchestrator_url(opts, cfg):
    """(URL, "") from --orchestrator, pms.yaml or, for ``auto``, the relay's discovery cache; else (None, why)."""
    if opts.orchestrator:
        return opts.orchestrator.rstrip("/"), ""
    if cfg.orchestrator == "auto":
        found = cache.read(cfg.discovery.cache_file)
        if not found:
            return None, (f"orchestrator is auto and the relay has not found one ({cfg.discovery.cache_file} "
                          f"missing)")
        return found["url"], ""
    return cfg.orchestrator, ""

