"""Which jobs may leave the Plex host, and which environment travels with them.

Pure functions, shared by the shim (first filter) and the worker (second
filter: it never trusts what arrives on the wire). Standard library only.
"""

from . import args as plexargs

# Plex's own variables and the few generic ones a transcoder needs.
ENV_ALLOW = frozenset(("X_PLEX_TOKEN", "XDG_DATA_HOME", "LANG", "LANGUAGE", "TZ"))
ENV_ALLOW_PREFIXES = ("PLEX_", "X_PLEX_", "LC_")
# Never forwarded, whatever a config says: these change what code runs, or where it loads or
# writes (libva's driver, Plex's codec libraries, EasyAudioEncoder's folder, temp files, the dynamic
# loader, iconv and locale data, Python). The worker sets the ones a transcode needs itself
# (its codecs dir, its EAE folder, its `env`).
LOADER_ENV = frozenset((
    "FFMPEG_EXTERNAL_LIBS", "EAE_ROOT", "TMPDIR", "LOCPATH", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR",
    "FONTCONFIG_FILE", "FONTCONFIG_PATH", "OCL_ICD_FILENAMES", "OCL_ICD_VENDORS", "VDPAU_DRIVER", "VDPAU_DRIVER_PATH",
    "CUDA_VISIBLE_DEVICES", "SSL_CERT_FILE", "SSL_CERT_DIR", "HOSTALIASES", "RESOLV_HOST_CONF", "LOCALDOMAIN",
    "FFREPORT", "AV_LOG_FORCE_COLOR"))
ENV_DENY_PREFIXES = ("LD_", "LIBVA_", "PYTHON", "PATH", "IFS", "BASH_", "PERL", "RUBY", "NODE_", "GCONV_",
                     "MALLOC_", "GLIBC_", "CLUSTERPLEX_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "MESA_", "DRI_",
                     "__GL", "GST_", "GIO_", "GTK_", "DBUS_", "NVIDIA_", "__NV", "PLEX_MEDIA_SERVER_HOME",
                     "PLEX_MEDIA_SERVER_APPLICATION_SUPPORT_DIR", "PLEX_MEDIA_SERVER_TMPDIR")
ENV_DENY = frozenset(("PATH", "SHELL", "ENV", "BASH_ENV", "HOME", "USER", "LOGNAME")) | LOADER_ENV


def env_allowed(name, extra_allow=()):
    if name in ENV_DENY or name.startswith(ENV_DENY_PREFIXES):
        return False
    if name in ENV_ALLOW or name.startswith(ENV_ALLOW_PREFIXES):
        return True
    for pat in extra_allow:
        if pat.endswith("*") and name.startswith(pat[:-1]) or name == pat:
            return True
    return False


def filter_env(env, extra_allow=()):
    """The allow-listed part of ``env`` (a mapping)."""
    return {k: v for k, v in env.items() if env_allowed(k, extra_allow)}


# Detection passes read PMS-local temp data: they must stay on the Plex host.
BUILTIN_LOCAL_RULES = (
    ({"cwd_contains": "PlexCreditsDetection"}, "credits detection runs in a PMS-local temp dir"),
    ({"output_contains": "/Transcode/Detection/"}, "audio detection pass writes to PMS-local Transcode/Detection"),
)


def _rule_matches(rule, argv, cwd, outs):
    get = rule.get if isinstance(rule, dict) else lambda k: getattr(rule, k, "")
    checks = []
    if get("cwd_contains"):
        checks.append(get("cwd_contains") in cwd)
    if get("argv_contains"):
        checks.append(any(get("argv_contains") in a for a in argv))
    if get("output_contains"):
        checks.append(any(get("output_contains") in o for o in outs))
    return bool(checks) and all(checks)


# Thumbnail and preview jobs (Plex's "generate video preview thumbnails"/BIF, chapter images): image
# outputs, short and keyframe-only, cheaper to run than to ship; pms.yaml `local_thumbnails`.
IMAGE_MUXERS = ("image2", "image2pipe")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bif")


def is_thumbnail_job(job):
    """True when an output of ``job`` (an ``args.Parsed``) is images (``-f image2``, ``img-%06d.jpg``)."""
    return any(g.muxer in IMAGE_MUXERS or (g.muxer is None and (g.value or "").lower().endswith(IMAGE_EXTENSIONS))
               for g in job.outputs)


def must_run_local(argv, cwd, rules=(), thumbnails=True):
    """Reason why this job must run on the Plex host, or None. ``argv``: a list or an ``args.Parsed``;
    ``thumbnails``: keep thumbnail/preview jobs local (pms.yaml ``local_thumbnails``)."""
    job = plexargs.parse(argv)
    argv, outs = job.argv, job.output_values
    for rule, reason in BUILTIN_LOCAL_RULES:
        if _rule_matches(rule, argv, cwd, outs):
            return reason
    if thumbnails and is_thumbnail_job(job):
        return "local_thumbnails: a thumbnail/preview job (image output) runs on the Plex host"
    for i, rule in enumerate(rules):
        if _rule_matches(rule, argv, cwd, outs):
            return f"local_rules[{i}] matched"
    return None
