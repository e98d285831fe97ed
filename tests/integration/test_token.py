"""Join tokens and the `clusterplex token` / `clusterplex join` commands (tmp paths only, never /etc)."""

import base64
import hashlib
import os
import pwd
import stat
import subprocess

import pytest

from clusterplex.core import config, protocol
from clusterplex.common import token as jt
from testbed import cluster as cl

SECRET = cl.SECRET.encode()


def clusterplex(*args, env=None, timeout=30, **kw):
    return subprocess.run(cl.command("clusterplex") + list(args), capture_output=True, text=True,
                          stdin=kw.pop("stdin", subprocess.DEVNULL), env=env, timeout=timeout, **kw)


def write(path, secret=SECRET):
    path.write_bytes(secret + b"\n")
    path.chmod(0o600)
    return path


# --- the token format -------------------------------------------------------------------------

def test_round_trip_and_format():
    for secret in (SECRET, jt.generate_secret(), b"x" * config.MIN_SECRET_LEN,
                   "é-ü: a secret with spaces, ~?>/ and more".encode()):
        tok = jt.make_token(secret)
        check = tok.rsplit("-", 1)[1]
        assert tok.startswith("cpx1-") and len(check) == 8 and set(check) <= set("0123456789abcdef")
        assert "=" not in tok and all(c.isascii() and (c.isalnum() or c in "-_") for c in tok)
        assert jt.parse_token(tok) == secret
        assert jt.parse_token(f"  {tok[:20]}\n  {tok[20:]}\n") == secret   # wrapped when pasted


def test_generated_secrets_are_48_alphanumerics_and_differ():
    a, b = jt.generate_secret(), jt.generate_secret()
    assert len(a) == 48 and a.isalnum() and a.isascii() and a != b


@pytest.mark.parametrize("where", range(5, 70, 3))
def test_one_character_changed_is_caught(where):
    tok = jt.make_token(SECRET)
    for repl in "A9_-x":
        bad = tok[:where] + repl + tok[where + 1:]
        if bad == tok:
            continue
        with pytest.raises(jt.TokenError, match="token mistyped or truncated"):
            jt.parse_token(bad)


def test_every_truncation_and_extension_is_caught():
    tok = jt.make_token(jt.generate_secret())
    for n in range(5, len(tok)):
        with pytest.raises(jt.TokenError, match="token mistyped or truncated"):
            jt.parse_token(tok[:n])
    for n in range(5, len(tok) - 9):       # a character dropped inside
        with pytest.raises(jt.TokenError, match="token mistyped or truncated"):
            jt.parse_token(tok[:n] + tok[n + 1:])
    with pytest.raises(jt.TokenError, match="token mistyped or truncated"):
        jt.parse_token(tok + "0")


@pytest.mark.parametrize("bad", ["cpx2-" + jt.make_token(SECRET)[5:], jt.make_token(SECRET)[4:],
                                 "CPX1-" + jt.make_token(SECRET)[5:], "hello", cl.SECRET])
def test_wrong_prefix_is_not_a_token(bad):
    with pytest.raises(jt.TokenError, match="not a ClusterPlex join token: it must start with cpx1-"):
        jt.parse_token(bad)


def test_empty_and_bad_base64():
    with pytest.raises(jt.TokenError, match="empty"):
        jt.parse_token("  \n")
    tok = jt.make_token(SECRET)
    body = tok[5:-9]
    with pytest.raises(jt.TokenError, match="mistyped or truncated.*base64"):
        jt.parse_token(f"cpx1-{body[:10]}!{body[11:]}-{tok[-8:]}")


def test_short_secret_is_refused_on_both_sides():
    short = b"k" * (config.MIN_SECRET_LEN - 1)
    with pytest.raises(jt.TokenError, match=f"31 characters; at least {config.MIN_SECRET_LEN}"):
        jt.make_token(short)
    forged = "cpx1-{}-{}".format(base64.urlsafe_b64encode(short).rstrip(b"=").decode(),
                                 hashlib.sha256(b"cpx1|" + short).hexdigest()[:8])
    with pytest.raises(jt.TokenError, match="unusable secret: the secret is 31 characters"):
        jt.parse_token(forged)


def test_secrets_that_would_not_load_back_are_refused():
    for bad in (b" " + SECRET, SECRET + b"\n", SECRET[:20] + b"\n" + SECRET[20:], b"\xff" * 40):
        with pytest.raises(jt.TokenError):
            jt.make_token(bad)


# --- writing the secret file -------------------------------------------------------------------

def test_write_secret_is_atomic_0600_and_reports_change(tmp_path):
    path = tmp_path / "secret"
    old_umask = os.umask(0)
    try:
        assert jt.write_secret(path, SECRET) is True
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == SECRET + b"\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.load_secret(str(path)) == SECRET
    inode = path.stat().st_ino
    assert jt.write_secret(path, SECRET) is False
    assert path.stat().st_ino == inode                 # unchanged: not rewritten
    path.chmod(0o644)
    assert jt.write_secret(path, SECRET) is False      # same content, permissions repaired
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new = jt.generate_secret()
    with open(path, "rb") as held:                     # a reader keeps the old file: rename, not rewrite
        assert jt.write_secret(path, new) is True
        assert held.read() == SECRET + b"\n"
    assert path.read_bytes() == new + b"\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]             # no temp left behind


def test_write_secret_refuses_symlinks_and_non_files(tmp_path):
    target = write(tmp_path / "target")
    link = tmp_path / "secret"
    link.symlink_to(target)
    with pytest.raises(jt.SecretFileError, match="symbolic link"):
        jt.write_secret(link, jt.generate_secret())
    assert target.read_bytes() == SECRET + b"\n" and link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(jt.SecretFileError, match="symbolic link"):
        jt.write_secret(dangling, SECRET)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "dir").mkdir()
    with pytest.raises(jt.SecretFileError, match="not a regular file"):
        jt.write_secret(tmp_path / "dir", SECRET)
    with pytest.raises(jt.SecretFileError, match="does not exist"):
        jt.write_secret(tmp_path / "missing" / "secret", SECRET)


def test_write_secret_owner(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = tmp_path / "secret"
    jt.write_secret(path, SECRET, owner="nobody")
    nobody = pwd.getpwnam("nobody")
    assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    jt.write_secret(path, jt.generate_secret())        # an existing file keeps its owner
    assert path.stat().st_uid == nobody.pw_uid
    with pytest.raises(jt.SecretFileError, match="no user"):
        jt.write_secret(tmp_path / "other", SECRET, owner="no-such-user-here")


# --- the commands, as real processes ------------------------------------------------------------

def test_token_then_join_writes_the_same_secret(tmp_path):
    orch = write(tmp_path / "orchestrator-secret")
    r = clusterplex("token", "--secret-file", str(orch))
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip()
    assert r.stdout == tok + "\n" and jt.parse_token(tok) == SECRET
    assert "clusterplex join <token>" in r.stderr and "secret" in r.stderr and cl.SECRET not in r.stderr
    assert clusterplex("token", "--quiet", "--secret-file", str(orch)).stderr == ""

    worker = tmp_path / "worker-secret"
    r = clusterplex("join", tok, "--secret-file", str(worker), "--no-reload")
    assert r.returncode == 0, r.stderr
    fp = protocol.secret_fingerprint(SECRET)
    assert f"joined cluster {fp}" in r.stdout
    assert cl.SECRET not in r.stdout + r.stderr and tok not in r.stdout + r.stderr
    assert worker.read_bytes() == orch.read_bytes()
    assert stat.S_IMODE(worker.stat().st_mode) == 0o600
    r = clusterplex("join", tok, "--secret-file", str(worker), "--no-reload")
    assert r.returncode == 0 and f"already joined to cluster {fp}" in r.stdout

    r = clusterplex("join", "-", "--secret-file", str(tmp_path / "from-stdin"), "--no-reload",
                    stdin=None, input=tok + "\n")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "from-stdin").read_bytes() == orch.read_bytes()


def test_join_refuses_bad_tokens_with_exit_2_and_unwritable_paths_with_exit_1(tmp_path):
    tok = jt.make_token(SECRET)
    worker = tmp_path / "secret"
    for bad, message in ((tok[:-3], "token mistyped or truncated"),
                         (tok[:30] + ("B" if tok[30] != "B" else "C") + tok[31:], "token mistyped or truncated"),
                         ("cpx9" + tok[4:], "not a ClusterPlex join token")):
        r = clusterplex("join", bad, "--secret-file", str(worker), "--no-reload")
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert cl.SECRET not in r.stdout + r.stderr
    assert not worker.exists()
    r = clusterplex("join", tok, "--secret-file", str(tmp_path / "missing" / "secret"), "--no-reload")
    assert r.returncode == 1 and "does not exist" in r.stderr
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    r = clusterplex("join", tok, "--secret-file", str(tmp_path / "link"), "--no-reload")
    assert r.returncode == 1 and "symbolic link" in r.stderr and not (tmp_path / "elsewhere").exists()


def test_token_errors(tmp_path):
    r = clusterplex("token", "--secret-file", str(tmp_path / "absent"))
    assert r.returncode == 1 and "no cluster secret here" in r.stderr and "clusterplex-orchestrator installed" \
        in r.stderr and r.stdout == ""
    short = write(tmp_path / "short", b"x" * 10)
    r = clusterplex("token", "--secret-file", str(short))
    assert r.returncode == 1 and "at least 32" in r.stderr and r.stdout == ""
    if os.geteuid() == 0:
        secret = write(tmp_path / "secret")
        r = clusterplex("token", "--secret-file", str(secret), user="nobody", group="nogroup",
                        extra_groups=[], cwd="/")
        assert r.returncode == 1 and "permission denied" in r.stderr and "run as root" in r.stderr, r.stderr


def test_token_rotate_writes_a_new_secret(tmp_path):
    path = write(tmp_path / "secret")
    before = clusterplex("token", "-q", "--secret-file", str(path)).stdout.strip()
    r = clusterplex("token", "--rotate", "--no-restart", "--secret-file", str(path))
    assert r.returncode == 0, r.stderr
    after = r.stdout.strip()
    assert after != before and after.startswith("cpx1-")
    new = config.load_secret(str(path))
    assert new != SECRET and len(new) == 48 and jt.parse_token(after) == new
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "re-join" in r.stderr and protocol.secret_fingerprint(new) in r.stderr
    assert new.decode() not in r.stderr
    assert clusterplex("token", "-q", "--secret-file", str(path)).stdout.strip() == after


def test_secret_path_comes_from_the_daemon_config(tmp_path):
    path = write(tmp_path / "configured-secret")
    cfg = cl.write_yaml(tmp_path / "orchestrator.yaml", {"secret_file": str(path)})
    r = clusterplex("token", "-q", "--config", str(cfg))
    assert r.returncode == 0 and jt.parse_token(r.stdout) == SECRET
    wcfg = cl.write_yaml(tmp_path / "worker.yaml", {"secret_file": str(tmp_path / "worker-secret")})
    r = clusterplex("join", r.stdout.strip(), "--config", str(wcfg), "--no-reload")
    assert r.returncode == 0 and (tmp_path / "worker-secret").read_bytes() == SECRET + b"\n"


FAKE_SYSTEMCTL = """#!/bin/sh
echo "$@" >> "{log}"
if [ "$1" = is-active ]; then
    case " {active} " in *" $2 "*) echo active; exit 0;; esac
    echo inactive; exit 3
fi
exit 0
"""


def fake_systemctl(tmp_path, active):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "systemctl.log"
    log.touch()
    script = bindir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL.format(log=log, active=" ".join(f"{u}.service" for u in active)))
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"), log


def test_join_reloads_the_running_worker_only(tmp_path):
    env, log = fake_systemctl(tmp_path, ["clusterplex-worker"])
    r = clusterplex("join", jt.make_token(SECRET), "--secret-file", str(tmp_path / "secret"), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"joined cluster {protocol.secret_fingerprint(SECRET)}; clusterplex-worker reloaded"
    calls = log.read_text().splitlines()
    assert "try-reload-or-restart clusterplex-worker.service" in calls
    assert not any(c.startswith("try-restart") for c in calls)       # the relay is not running here


def test_rotate_restarts_the_running_daemons(tmp_path):
    env, log = fake_systemctl(tmp_path, ["clusterplex-orchestrator", "clusterplex-relay"])
    path = write(tmp_path / "secret")
    r = clusterplex("token", "--rotate", "--secret-file", str(path), env=env)
    assert r.returncode == 0, r.stderr
    calls = [c for c in log.read_text().splitlines() if not c.startswith("is-active")]
    assert calls == ["try-restart clusterplex-orchestrator.service", "try-restart clusterplex-relay.service"]
    assert "clusterplex-orchestrator restarted" in r.stderr and "clusterplex-relay restarted" in r.stderr


# --- end to end: a running worker picks the secret up ------------------------------------------

def test_a_running_worker_joins_without_a_restart(tmp_path):
    (tmp_path / "transcode").mkdir()
    secret_file = tmp_path / "etc" / "secret"
    secret_file.parent.mkdir()
    cfg = cl.write_yaml(tmp_path / "worker.yaml", {
        "name": "joiner", "listen": "127.0.0.1:0", "secret_file": str(secret_file),
        "transcoder": str(cl.STANDIN), "transcode_root": str(tmp_path / "transcode"), "max_jobs": 2,
        "state_dir": str(tmp_path / "state"), "codecs": {"enabled": False}, "discovery": {"enabled": False},
        "log_level": "debug"})
    w = cl.Daemon("joiner", cl.command("clusterplex-worker") + ["--config", str(cfg)], tmp_path).start()
    try:
        w.wait_status(r"not joined", timeout=20)
        mark = w.mark()
        r = clusterplex("join", jt.make_token(SECRET), "--secret-file", str(secret_file), "--no-reload")
        assert r.returncode == 0, r.stderr
        status = w.wait_status(r"^(?!.*not joined)", timeout=10, since=mark)
        assert status.startswith("ready"), status
        assert w.proc.poll() is None and not any(m.get("RELOADING") == "1" for m in w.messages)
    finally:
        assert w.stop() == 0
    assert cl.SECRET not in w.log()
