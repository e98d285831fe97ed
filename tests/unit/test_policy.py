from types import SimpleNamespace

import pytest

from clusterplex.core import args, config, policy
from testbed.fixtures import load_argv as fixture


def test_env_filter_keeps_plex_variables_and_drops_dangerous_ones():
    env = {"X_PLEX_TOKEN": "t", "PLEX_MEDIA_SERVER_INFO_MODEL": "x86_64", "LC_ALL": "C", "TZ": "UTC",
           "LD_PRELOAD": "/evil.so", "LD_LIBRARY_PATH": "/x", "PYTHONPATH": "/p", "PYTHONSTARTUP": "/p",
           "PATH": "/bin", "HOME": "/root", "SSH_AUTH_SOCK": "/s", "CLUSTERPLEX_CONFIG": "/c",
           "NOTIFY_SOCKET": "/run/n", "RANDOM_THING": "1"}
    assert policy.filter_env(env) == {"X_PLEX_TOKEN": "t", "PLEX_MEDIA_SERVER_INFO_MODEL": "x86_64", "LC_ALL": "C",
                                      "TZ": "UTC"}


# What steers a loader (or where the transcoder loads and writes) never comes from the wire: Plex's
# host sets these for its own machine; a worker sets its own (codecs dir, EAE folder, `env`).
LOADER_VARS = ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LIBVA_DRIVERS_PATH", "LIBVA_DRIVER_NAME",
               "LIBVA_MESSAGING_LEVEL", "FFMPEG_EXTERNAL_LIBS", "EAE_ROOT", "TMPDIR", "PYTHONPATH", "PYTHONHOME",
               "GCONV_PATH", "LOCPATH", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "FONTCONFIG_FILE", "OCL_ICD_FILENAMES",
               "VDPAU_DRIVER_PATH", "MESA_LOADER_DRIVER_OVERRIDE", "__GLX_VENDOR_LIBRARY_NAME", "GST_PLUGIN_PATH",
               "FFREPORT", "PLEX_MEDIA_SERVER_HOME", "PLEX_MEDIA_SERVER_APPLICATION_SUPPORT_DIR"]


@pytest.mark.parametrize("name", LOADER_VARS)
def test_loader_variables_never_travel_whatever_the_config_allows(name):
    assert policy.filter_env({name: "/tmp/x"}) == {}
    assert policy.filter_env({name: "/tmp/x"}, [name, "*", name[:3] + "*"]) == {}


def test_env_extra_allow_never_overrides_the_deny_list():
    env = {"MY_VAR": "1", "MY_OTHER": "2", "LD_PRELOAD": "x", "PYTHONHOME": "y", "PATH": "/bin"}
    assert policy.filter_env(env, ["MY_*", "LD_PRELOAD", "PYTHON*", "PATH"]) == {"MY_VAR": "1", "MY_OTHER": "2"}
    assert policy.filter_env(env, ["MY_VAR"]) == {"MY_VAR": "1"}


def test_detection_and_credits_stay_local():
    assert "detection" in policy.must_run_local(fixture("F5"), "/transcode/Transcode/Sessions/x")
    assert "credits" in policy.must_run_local(["-i", "a"], "/tmp/PlexCreditsDetection-12/x")
    for name in ("F1", "F2", "F3", "F4", "F6"):
        assert policy.must_run_local(fixture(name), "/transcode/Transcode/Sessions/plex-transcode-x") is None


def test_configured_rules_all_conditions_must_match():
    rules = [SimpleNamespace(cwd_contains="", argv_contains="eac3_eae", output_contains=""),
             {"cwd_contains": "Sessions", "argv_contains": "", "output_contains": "Plex Versions"}]
    assert policy.must_run_local(fixture("F4"), "/elsewhere", rules) == "local_rules[0] matched"
    assert policy.must_run_local(fixture("F1"), "/t/Sessions/x", rules) is None
    assert policy.must_run_local(["-i", "a", "/m/Plex Versions/x.mp4"], "/t/Sessions/x", rules[1:]) == \
        "local_rules[0] matched"
    empty = [SimpleNamespace(cwd_contains="", argv_contains="", output_contains="")]
    assert policy.must_run_local(fixture("F1"), "/x", empty) is None


def test_a_parsed_argv_is_read_like_the_list():
    rules = [{"argv_contains": "eac3_eae"}]
    for name in ("F1", "F4", "F5"):
        for cwd in ("/transcode/Transcode/Sessions/x", "/tmp/PlexCreditsDetection-1/x"):
            assert policy.must_run_local(args.parse(fixture(name)), cwd, rules) == \
                policy.must_run_local(fixture(name), cwd, rules)


@pytest.mark.parametrize("out", [["-f", "image2", "img-%06d.jpg"], ["-f", "image2pipe", "-"], ["chapter-1.jpeg"],
                                 ["/t/Cache/x.png"], ["-f", "image2", "index-sd.bif"]])
def test_thumbnail_jobs_stay_local_unless_configured_off(out):
    argv = ["-codec:v", "h264", "-skip_frame:v", "nokey", "-i", "/m/x.mkv", "-vf", "fps=fps=0.5"] + out
    assert policy.must_run_local(argv, "/t/Sessions/x").startswith("local_thumbnails")
    assert policy.must_run_local(argv, "/t/Sessions/x", thumbnails=False) is None


def test_local_thumbnails_is_on_by_default_in_the_pms_config():
    assert config.parse("pms", b"{}", "/etc/clusterplex/pms.yaml").local_thumbnails is True
    assert config.parse("pms", b"local_thumbnails: false\n", "/etc/clusterplex/pms.yaml").local_thumbnails is False
