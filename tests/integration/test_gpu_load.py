"""GPU load through the real daemons: a worker whose PATH has a stand-in ``nvidia-smi`` (answering
the load query with a recorded output, tests/data/hardware) reports the GPU in its load messages,
and the orchestrator shows it in /api/v1/workers and /metrics. This machine has no GPU: without the stand-in
the list is empty."""

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from clusterplex.common import link
from clusterplex.core import protocol
from clusterplex.worker.hardware import load
from testbed import cluster as cl

RECORDED = Path(__file__).resolve().parent.parent / "data" / "hardware" / "tools" / "nvidia-smi-load-rtx4070.csv"


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpuload")
    fakebin = root / "bin"
    fakebin.mkdir()
    smi = fakebin / "nvidia-smi"
    smi.write_text(f"#!{sys.executable}\nimport sys\n"
                   f"if sys.argv[1:] != {load.NVIDIA_LOAD_QUERY[1:]!r}:\n"
                   "    print('unknown query'); sys.exit(2)\n"
                   f"sys.stdout.write(open({str(RECORDED)!r}).read())\n")
    smi.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{fakebin}:{old}"
    try:
        with cl.Cluster(root, workers=1) as c:
            yield c
    finally:
        os.environ["PATH"] = old


async def _loads(url, n):
    async with aiohttp.ClientSession() as s:
        ws, _ = await link.connect(s, url, cl.SECRET.encode(), protocol.ROLE_ORCHESTRATOR, protocol.ROLE_WORKER,
                                   heartbeat=None, timeout=10)
        got = []
        while len(got) < n:
            m = await asyncio.wait_for(ws.receive(), 10)
            assert m.type == aiohttp.WSMsgType.TEXT, m
            d = json.loads(m.data)
            if d["type"] == "load":
                got.append(d)
        await ws.close()
        return got


def test_worker_load_message_carries_the_gpus_and_the_orchestrator_shows_and_exports_them(c):
    w = c.workers[0]
    loads = asyncio.run(_loads(f"{w.url}{protocol.CONTROL_PATH}", 2))
    expected = {"id": "nvidia0", "vendor": "nvidia", "util": 41.0, "encoder": 63.0, "decoder": 22.0,
                "sessions": 3, "session_limit": 8}
    assert loads[-1]["gpus"] == [expected]
    # the orchestrator got the same messages over its own link, at least one of them before our second
    (view,) = c.api("/api/v1/workers")
    assert view["gpus"] == [expected]
    with urllib.request.urlopen(c.orchestrator.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    n = view["name"]
    for line in (f'clusterplex_worker_gpu_utilization{{gpu="nvidia0",worker_name="{n}"}} 41.0',
                 f'clusterplex_worker_gpu_encoder_utilization{{gpu="nvidia0",worker_name="{n}"}} 63.0',
                 f'clusterplex_worker_gpu_sessions{{gpu="nvidia0",worker_name="{n}"}} 3.0',
                 f'clusterplex_worker_gpu_session_limit{{gpu="nvidia0",worker_name="{n}"}} 8.0'):
        assert line in text, line
