"""What a worker answers to `clusterplex doctor`'s probe: can it do what jobs need here?

Reads a media sample (after ``path_map``), writes, reads back and deletes a file
in ``transcode_root``, reaches the relay (or Plex), and reports the transcoder,
codecs, uid and clock. Every filesystem check runs off the event loop with a
bound, so a hung network mount gives an answer, not a hang. The checks here
are also what the doctor runs on its own host (``clusterplex.cli.doctor``).
"""

import asyncio
import json
import os
import pwd
import stat
import time

from ..core import protocol
from . import rewrite

PROBE_FILE_PREFIX = ".clusterplex-doctor-"
LOCAL_CHECK_TIMEOUT = 5.0     # a hung network mount must not hang the probe


def nearest_existing(path, exists):
    """The deepest ancestor of ``path`` that ``exists(p)`` (for "mounted?" hints)."""
    p = os.path.dirname(os.path.normpath(path))
    while p not in ("/", "") and not exists(p):
        p = os.path.dirname(p)
    return p or "/"


def uid_of(user):
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def rw_test(root):
    """Write, read back and delete a file in ``root``: "" or what went wrong (for people)."""
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            return "is not a directory"
    except FileNotFoundError:
        parent = nearest_existing(root, os.path.isdir)
        return f"does not exist (the nearest existing directory is {parent}: shared directory not mounted?)"
    except PermissionError:
        return f"uid {os.geteuid()} may not reach it (permission denied on the way)"
    except OSError as e:
        return e.strerror or str(e)
    name = os.path.join(root, f"{PROBE_FILE_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
    data = os.urandom(64)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        return f"cannot write a file as uid {os.geteuid()}: {e.strerror}"
    try:
        with open(name, "rb") as f:
            back = f.read()
        if back != data:
            return "a file written there read back different"
    except OSError as e:
        return f"cannot read back a file written there: {e.strerror}"
    finally:
        try:
            os.unlink(name)
        except OSError as e:
            return f"cannot delete a file written there: {e.strerror}"
    return ""


def rw_test_as(root, user):
    """``rw_test`` as ``user`` (a child that drops to its uid when we are root); (problem, checked-as)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return f"user {user} does not exist here", user
    if pw.pw_uid == os.geteuid() or os.geteuid() != 0:
        return rw_test(root), f"uid {os.geteuid()}"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:        # child: become the user, test, report, leave without cleanup handlers
        try:
            os.close(r)
            os.setgroups(os.getgrouplist(user, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            msg = rw_test(root)
        except BaseException as e:
            msg = f"cannot check as {user}: {e}"
        os.write(w, msg.encode("utf-8", "replace")[:4000])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode("utf-8", "replace")
    os.waitpid(pid, 0)
    return msg, f"user {user} (uid {pw.pw_uid})"


def sample_test(path):
    """"" if ``path`` (a file or directory) is readable here, else what is wrong (for people)."""
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        return ""
    except FileNotFoundError:
        parent = nearest_existing(path, os.path.exists)
        return f"not found (the nearest existing directory is {parent}: share not mounted, or mounted elsewhere?)"
    except PermissionError:
        return f"exists but uid {os.geteuid()} may not read it"
    except OSError as e:
        return e.strerror or str(e)


async def _bounded(fn, *args, what):
    """Run a filesystem check off the loop, bounded: a hung network mount gives an answer, not a hang."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(None, fn, *args), LOCAL_CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        return f"{what} did not finish within {LOCAL_CHECK_TIMEOUT:g} s (hung network mount?)"


async def ping(url, kind, fingerprint, timeout):
    """Reach the relay (``kind`` relay: its ping, same cluster) or Plex (``kind`` plex). -> dict for the probe."""
    import aiohttp
    out = {"url": url, "kind": kind, "ok": False, "problem": "", "status": None}
    target = url.rstrip("/") + (protocol.RELAY_PING if kind == "relay" else "/identity")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(target, allow_redirects=False) as resp:
                out["status"] = resp.status
                body = await resp.content.read(4096)
    except asyncio.TimeoutError:
        out["problem"] = f"no answer within {timeout:g} s (port blocked by a firewall?)"
        return out
    except aiohttp.ClientError as e:
        out["problem"] = str(e) or type(e).__name__
        return out
    if kind == "plex":
        out["ok"] = resp.status < 500
        if not out["ok"]:
            out["problem"] = f"HTTP {resp.status}"
        return out
    if resp.status != 200:
        out["problem"] = f"HTTP {resp.status}: {body.decode('utf-8', 'replace').strip()[:200]}"
        return out
    try:
        info = json.loads(body)
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("service") != "clusterplex-relay":
        out["problem"] = "something answers there, but not clusterplex-relay"
    elif info.get("cluster") != fingerprint:
        out["problem"] = f"that relay belongs to another cluster ({info.get('cluster')}, this worker is {fingerprint})"
    else:
        out["ok"] = True
    return out


async def probe_here(probe, facts):
    """What a worker answers to a probe (``probe`` checked by protocol.check_probe).

    ``facts``: name, version, state, reason, transcoder, transcoder_problem, transcode_root, path_map
    (list of {"from", "to"}), codecs (dict as in check_codecs), fingerprint.
    """
    path_map = facts.get("path_map") or []
    root = facts["transcode_root"]
    result = {"name": facts["name"], "version": facts["version"], "state": facts["state"],
              "reason": facts["reason"], "uid": os.geteuid(), "plex_user": probe["plex_user"],
              "plex_uid": uid_of(probe["plex_user"]),
              "transcoder": {"path": facts["transcoder"] or "", "ok": not facts["transcoder_problem"],
                             "problem": facts["transcoder_problem"]},
              "codecs": facts["codecs"]}
    pending = {"rw": _bounded(rw_test, root, what="writing a file in transcode_root")}
    if probe["sample"]:
        mapped = rewrite.map_path(probe["sample"], path_map)
        pending["sample"] = _bounded(sample_test, mapped, what="reading the sample")
    if probe["relay_url"]:
        pending["relay"] = ping(probe["relay_url"], probe["relay_kind"], facts["fingerprint"],
                                max(0.5, probe["timeout"] - 1))
    done = dict(zip(pending, await asyncio.gather(*pending.values())))
    mapped_dir = rewrite.map_path(probe["transcode_dir"], path_map) if probe["transcode_dir"] else ""
    result["transcode"] = {"root": root, "ok": not done["rw"], "problem": done["rw"],
                           "plex_dir": probe["transcode_dir"], "mapped": mapped_dir}
    if "sample" in done:
        result["sample"] = {"path": probe["sample"], "mapped": mapped, "ok": not done["sample"],
                            "problem": done["sample"]}
    if "relay" in done:
        result["relay"] = done["relay"]
    result["clock"] = time.time()
    return result


