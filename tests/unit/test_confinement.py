import pytest

from clusterplex.core import args
from clusterplex.worker import runner
from testbed.fixtures import load_argv as fixture

CWD = "/transcode/Transcode/Sessions/plex-transcode-k-u"


@pytest.mark.parametrize("name", ["F1", "F2", "F3", "F6"])
def test_streaming_jobs_write_only_into_their_session_dir(name):
    assert runner.output_problem(fixture(name), CWD, []) is None


def test_optimize_jobs_need_their_library_in_output_roots():
    problem = runner.output_problem(fixture("F4"), CWD, [])
    assert problem.startswith("refusing output /media/movies/Plex Versions/") and "output_roots" in problem
    assert runner.output_problem(fixture("F4"), CWD, ["/media/movies"]) is None
    assert runner.output_problem(fixture("F4"), CWD, ["/media/tv"]) is not None


@pytest.mark.parametrize("argv,fragment", [
    (["-i", "x", "/etc/cron.d/evil"], "refusing output /etc/cron.d/evil"),
    (["-i", "x", "../../../../etc/passwd"], "refusing output ../../../../etc/passwd"),
    (["-i", "x", "file:/root/.ssh/authorized_keys"], "refusing output /root/.ssh/authorized_keys"),
    (["-i", "x", "-vstats_file", "/etc/x", "o.ts"], "refusing output /etc/x"),
    (["-i", "x", "-segment_list", "/var/spool/x", "o.ts"], "refusing output /var/spool/x"),
    (["-i", "x", "-init_seg_name", "../../x.m4s", "dash"], "refusing output ../../x.m4s"),
    (["-i", "x", "rtmp://evil.example/live"], "only files, HTTP callbacks and pipes"),
])
def test_hostile_outputs_are_refused(argv, fragment):
    assert fragment in runner.output_problem(argv, CWD, ["/media"])


def test_callbacks_pipes_and_relative_names_are_fine():
    argv = ["-i", "x", "-manifest_name", "http://relay:32499/_cp/j/m/manifest", "-progress", "pipe:1",
            "-init_seg_name", "init-stream$RepresentationID$.m4s", "dash", "-"]
    assert runner.output_problem(argv, CWD, []) is None


@pytest.mark.parametrize("name", ["F1", "F4"])
def test_a_parsed_argv_is_checked_like_the_list(name):
    for roots in ([], ["/media/movies"]):
        assert runner.output_problem(args.parse(fixture(name)), CWD, roots) == \
            runner.output_problem(fixture(name), CWD, roots)


def test_files_named_by_options_stay_in_the_session_dir_even_with_output_roots():
    argv = ["-i", "x", "-f", "dash", "-init_seg_name", "/media/movies/init.m4s", "dash"]
    assert "stay in the session dir" in runner.output_problem(argv, CWD, ["/media/movies"])


def job(tmp_path, argv, **over):
    sdir = tmp_path / "transcode" / "Transcode" / "Sessions" / "plex-transcode-k-u"
    sdir.mkdir(parents=True, exist_ok=True)
    return {"id": "0123456789abcdef", "argv": argv, "cwd": str(sdir), "env": {}, **over}


def test_inputs_only_under_media_roots_or_the_session_dir(tmp_path):
    media, other = tmp_path / "media", tmp_path / "other"
    media.mkdir(), other.mkdir()
    (media / "a.mkv").write_bytes(b"x"), (other / "b.mkv").write_bytes(b"x")
    (media / "link.mkv").symlink_to(other / "b.mkv")          # a link out of the media share
    root = str(tmp_path / "transcode")

    def check(path, roots):
        return runner.preflight(job(tmp_path, ["-i", path, "o.ts"]), root, "w1", media_roots=roots)

    assert check(str(media / "a.mkv"), [str(media)]) is None
    assert check(str(other / "b.mkv"), [str(media)]).startswith(f"refused: -i {other / 'b.mkv'} (outside media_roots")
    assert check(str(media / "link.mkv"), [str(media)]).startswith("refused: -i")
    assert check(str(media / ".." / "other" / "b.mkv"), [str(media)]).startswith("refused: -i")
    assert check(str(other / "b.mkv"), []) is None              # no media_roots: anything but the private paths
    (tmp_path / "transcode" / "Transcode" / "Sessions" / "plex-transcode-k-u" / "temp-0.srt").write_text("1")
    assert check("temp-0.srt", [str(media)]) is None            # the session dir's own sidecar subtitles


@pytest.mark.parametrize("path", ["/etc/clusterplex/secret", "/proc/self/environ", "/var/lib/clusterplex/node.key",
                                  "/dev/zero"])
def test_without_media_roots_the_workers_private_files_are_never_read(tmp_path, path):
    problem = runner.preflight(job(tmp_path, ["-i", path, "o.ts"]), str(tmp_path / "transcode"), "w1")
    assert problem.startswith(f"refused: -i {path} (the worker's private files") and "media_roots" in problem


def test_the_secret_and_state_dir_are_private_wherever_they_are(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s")
    problem = runner.preflight(job(tmp_path, ["-i", str(secret), "o.ts"]), str(tmp_path / "transcode"), "w1",
                               private=(str(secret), str(tmp_path / "state")))
    assert problem.startswith(f"refused: -i {secret}")


def test_a_job_that_is_not_plex_shaped_is_refused_before_its_session_dir_is_looked_at(tmp_path):
    j = job(tmp_path, ["-i", "/media/x.mkv", "-af", "ladspa=file=/tmp/x.so", "o.ts"], cwd="/transcode/nope")
    problem = runner.preflight(j, "/transcode", "w1")
    assert problem == "refused: -af ladspa=file=/tmp/x.so (filter ladspa loads a library) (worker w1)"


def test_loader_variables_from_the_wire_never_reach_the_transcoder():
    env = {"X_PLEX_TOKEN": "t", "LIBVA_DRIVERS_PATH": "/tmp/evil", "LIBVA_DRIVER_NAME": "evil",
           "FFMPEG_EXTERNAL_LIBS": "/tmp/evil/", "EAE_ROOT": "/tmp/evil", "TMPDIR": "/tmp/evil", "LD_PRELOAD": "/x.so",
           "GCONV_PATH": "/tmp", "LOCPATH": "/tmp", "PYTHONPATH": "/tmp"}
    # a worker that manages neither codecs nor EAE sets nothing of its own: nothing of the wire's survives either
    out = runner.job_env({"id": "j1", "env": env}, {})
    assert out == {"PATH": runner.SAFE_PATH, "LANG": "C.UTF-8", "X_PLEX_TOKEN": "t", "CLUSTERPLEX_JOB_ID": "j1"}
    # the worker's own settings (codecs dir, EAE folder, `env`) are the only source
    out = runner.job_env({"id": "j1", "env": env}, {"FFMPEG_EXTERNAL_LIBS": "/var/lib/clusterplex/codecs/v/",
                                                    "LIBVA_DRIVER_NAME": "iHD"})
    assert out["FFMPEG_EXTERNAL_LIBS"] == "/var/lib/clusterplex/codecs/v/" and out["LIBVA_DRIVER_NAME"] == "iHD"
    assert "LIBVA_DRIVERS_PATH" not in out and "EAE_ROOT" not in out and "TMPDIR" not in out
