"""The tests on Debian 13 (trixie)'s own packaged libraries: python3-aiohttp 3.11, python3-zeroconf
0.147, python3-psutil 7, PyYAML 6.0.2 and Python 3.13, as a Debian 13 host has them.

``python -m testbed.trixie [pytest args]`` debootstraps a trixie tree once (cached beside the
Debian 12 container trees, built atomically under the same lock), then runs pytest in it with
``systemd-nspawn`` (no boot, ``--volatile=overlay`` so the cached tree stays as built, the host's
network: the tests talk over loopback only) on this checkout, bound read-only at /src. By default it
runs the unit and integration tests; the system tests need network namespaces and booted
containers, and run on the host's two library sets (tests/run.sh).

Left out here, on purpose: the checks of Debian 12's own ffmpeg 5.1 (the option names the worker
rewrite emits, the exit code of a missing input; trixie's ffmpeg is 7.1 and says other things),
and the Ansible role's lint (ansible-lint is a host tool, not a library of ours).
"""

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from . import nspawn

SUITE = "trixie"
PACKAGES = ("python3", "python3-aiohttp", "python3-zeroconf", "python3-yaml", "python3-psutil",
            "python3-prometheus-client", "python3-sdnotify", "python3-pytest", "python3-pytest-timeout",
            "ffmpeg", "iproute2", "procps")
TREE_VERSION = 1            # bump when _prepare changes
SRC = "/src"
DEFAULT_ARGS = ("tests/unit", "tests/integration", "tests/test_fakes.py",
                "--ignore=tests/unit/test_ansible_lint.py",
                "--deselect=tests/test_fakes.py::test_missing_input_is_a_readable_error",
                "-k", "not test_debian_ffmpeg")
REPO = Path(__file__).resolve().parents[1]


def _key():
    import hashlib
    return hashlib.sha256(repr((SUITE, PACKAGES, TREE_VERSION)).encode()).hexdigest()[:10]


def _prepare(root):
    # the checkout at /src is the installed package (a .pth, as `pip install -e` would do)
    (root / "usr/lib/python3/dist-packages/clusterplex-src.pth").write_text(SRC + "\n")
    (root / "etc/clusterplex-test-tree").write_text(f"suite={SUITE}\ninclude={','.join(PACKAGES)}\n")


def tree(cache_dir=None):
    """The cached trixie tree, built once (in a temporary directory, then renamed)."""
    cache_dir = Path(cache_dir or nspawn.default_cache_dir())
    final = cache_dir / f"{SUITE}-{_key()}"
    if (final / "etc" / "clusterplex-test-tree").exists():
        return final
    why = nspawn.ensure_host_tools()
    if why:
        raise nspawn.HarnessError(why)
    with nspawn._locked(cache_dir / ".lock"):
        if (final / "etc" / "clusterplex-test-tree").exists():
            return final
        if final.exists():
            nspawn._remove_tree(final)
        tmp = cache_dir / f".build-{final.name}-{os.getpid()}"
        log = cache_dir / f"{final.name}.log"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--components=main",
               SUITE, str(tmp), nspawn.host_mirror(SUITE)]
        t0 = time.monotonic()
        try:
            r = nspawn._host(cmd, timeout=1800, check=False)
            log.write_text(f"$ {' '.join(cmd)}\n{r.stdout}\n{r.stderr}\nexit {r.returncode} "
                           f"after {time.monotonic() - t0:.1f} s\n")
            if r.returncode != 0:
                raise nspawn.HarnessError(f"debootstrap {SUITE} failed (exit {r.returncode}, log {log}):\n"
                                          f"{nspawn._tail(r.stdout)}\n{nspawn._tail(r.stderr)}")
            _prepare(tmp)
            os.rename(tmp, final)
        except BaseException:
            nspawn._remove_tree(tmp)
            raise
    return final


def versions(root):
    code = ("import sys, aiohttp, zeroconf, yaml, psutil; print('Python', sys.version.split()[0], 'aiohttp', "
            "aiohttp.__version__, 'zeroconf', zeroconf.__version__, 'PyYAML', yaml.__version__, 'psutil', "
            "psutil.__version__)")
    return subprocess.run(["chroot", str(root), "python3", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv):
    try:
        root = tree()
    except nspawn.HarnessError as e:
        print(f"trixie: cannot build the Debian 13 tree: {e}", file=sys.stderr)
        return 1
    print(f"=== tests on Debian 13 (trixie): {versions(root)}", flush=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)     # as on the host (nspawn's default is 1024)
    cmd = ["systemd-nspawn", "--quiet", "--register=no", f"--rlimit=RLIMIT_NOFILE={soft}:{hard}", "--keep-unit", "--volatile=overlay", "--console=pipe",
           "--link-journal=no", "--resolv-conf=off", "--timezone=off", "--as-pid2", "-D", str(root),
           f"--bind-ro={REPO}:{SRC}", f"--chdir={SRC}", "--setenv=PYTHONDONTWRITEBYTECODE=1",
           "python3", "-m", "pytest", "-p", "no:cacheprovider", *(argv or DEFAULT_ARGS)]
    return subprocess.run(cmd, env=nspawn.HOST_ENV).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
