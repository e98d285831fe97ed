"""A fake ``plexmediaserver`` Debian package for the package and Ansible tests.

It owns Plex's transcoder path, like the real one; its transcoder says its version, calls
PMS back once through ``-progressurl`` and can hold (to be killed). ``DEPENDENCIES``: what
the containers' offline apt repository must carry for python3-clusterplex.
"""

import subprocess
import textwrap

TRANSCODER = "/usr/lib/plexmediaserver/Plex Transcoder"
DEPENDENCIES = ["python3-aiohttp", "python3-zeroconf", "python3-sdnotify", "python3-yaml", "python3-psutil",
                "python3-prometheus-client", "adduser"]

# Plex's transcoder as the fake Plex package ships it: says its version, calls PMS back
# once through -progressurl (so tests see the relay path), can hold (to be killed), exits.
FAKE_TRANSCODER = textwrap.dedent("""\
    #!/usr/bin/python3
    # fake Plex Transcoder VERSION
    import sys, time, urllib.request
    args = sys.argv[1:]
    print("fake Plex Transcoder VERSION", " ".join(args), file=sys.stderr, flush=True)
    if "-progressurl" in args:
        url = args[args.index("-progressurl") + 1] + "?progress=100.0&size=1&remaining=0"
        urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=10).read()
    if "-x_test_hold" in args:
        time.sleep(float(args[args.index("-x_test_hold") + 1]))
    sys.exit(0)
""")


def build_fake_plex(out, version):
    root = out / f"plex-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(textwrap.dedent(f"""\
        Package: plexmediaserver
        Version: {version}
        Architecture: all
        Maintainer: Tests <tests@clusterplex.invalid>
        Depends: python3
        Description: fake Plex Media Server for ClusterPlex tests
        """))
    (root / "DEBIAN" / "postinst").write_text("#!/bin/sh\nset -e\n"
                                               "getent passwd plex >/dev/null || useradd --system --home-dir "
                                               "/var/lib/plexmediaserver --shell /usr/sbin/nologin plex\n")
    (root / "DEBIAN" / "postinst").chmod(0o755)
    t = root / "usr/lib/plexmediaserver/Plex Transcoder"
    t.parent.mkdir(parents=True)
    t.write_text(FAKE_TRANSCODER.replace("VERSION", version))
    t.chmod(0o755)
    deb = out / f"plexmediaserver_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb
