"""clusterplex: the operator's command (status, workers, jobs, drain, codecs, token, join, doctor).

The entry point is imported lazily, so the wing's pure modules load without its I/O libraries.
"""


def main(argv=None):
    from .commands import main as run
    return run(argv)
