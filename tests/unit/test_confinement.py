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
