"""The one-machine demo: fake PMS, relay, orchestrator, two workers, and a real
ffmpeg transcode of a generated clip through the whole path.

    bash tests/demo.sh               (as root: sets up, then runs this)
"""

import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from testbed import cluster as cl
from testbed import fixtures


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output").resolve()
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    print(f"ClusterPlex demo in {out}")
    clip = out / "media" / "Demo (2026)" / "Demo.mkv"
    clip.parent.mkdir(parents=True)
    fixtures.make_clip(str(clip), seconds=10, width=640, height=360)
    print(f"  generated a 10 s 640x360 H.264/AAC clip: {clip}")
    with cl.Cluster(out / "cluster", workers=2) as c:
        print(f"  fake PMS      {c.pms.url}")
        print(f"  relay         {c.relay.url}  -> PMS, from 127.0.0.1")
        print(f"  orchestrator  {c.orchestrator.url}")
        for w in c.workers:
            print(f"  {w.name}       {w.url}  (transcoder: stand-in Plex Transcoder driving Debian's ffmpeg)")
        key, uid = "demo" + uuid.uuid4().hex[:8], str(uuid.uuid4())
        sdir = c.session_dir(key, uid)
        argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path=str(clip), session_dir=str(sdir),
                                    session_key=key, job_uuid=uid)
        print("\nPMS starts its transcoder (our shim) for a DASH play (Plex Web, libx264 720x404)...")
        t0 = time.monotonic()
        shim = c.shim(argv, sdir, mode="remote")
        _, err = shim.communicate(timeout=300)
        took = time.monotonic() - t0
        job = next(j for j in c.api("/api/v1/jobs") if j["session"] == f"{key}/{uid}")
        print(f"  shim exited with {shim.returncode} after {took:.1f} s; the job ran on {job['worker']}")
        if shim.returncode != 0:
            print(err.decode(errors="replace"), file=sys.stderr)
            return 1
        segments = sorted(p.name for p in sdir.glob("*.m4s"))
        print(f"  {len(segments)} DASH segments in {sdir}:")
        print("    " + " ".join(segments[:6]) + (" ..." if len(segments) > 6 else ""))
        calls = [r for r in c.pms_requests() if f"/session/{key}/" in r["path"]]
        kinds = {}
        for r in calls:
            name = r["path"].rsplit("/", 1)[-1]
            kinds[f"{r['method']} {name}"] = kinds.get(f"{r['method']} {name}", 0) + 1
        loopback = sum(1 for r in calls if r["remote"] == "127.0.0.1")
        token = sum(1 for r in calls if r["headers"].get("X-Plex-Token") == cl.PLEX_TOKEN)
        print(f"  PMS received {len(calls)} callbacks through the relay ({loopback} from 127.0.0.1, "
              f"{token} with the Plex token; manifests carry none, as from Plex's transcoder):")
        for k, n in sorted(kinds.items()):
            print(f"    {n:4d} x {k}")
        print("\n$ clusterplex status")
        subprocess.run(cl.command("clusterplex") + ["status", "--orchestrator", c.orchestrator.url], check=False)
        print(f"\n$ curl {c.orchestrator.url}/metrics   (ClusterPlex's names; the live page is {c.orchestrator.url}/)")
        with urllib.request.urlopen(c.orchestrator.url + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.split(" ")[0] in ("jobs_posted", "jobs_completed", "jobs_succeeded", "workers_active") \
                        or line.startswith("clusterplex_jobs_total{"):
                    print("  " + line)
    print(f"\nDone. Segments and logs stay in {out}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
