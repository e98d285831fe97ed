"""clusterplex-worker: runs Plex's transcoder for the orchestrator.

The entry point is imported lazily, so the wing's pure modules load without its I/O libraries.
"""


def main(argv=None):
    from .server import main as run
    return run(argv)
