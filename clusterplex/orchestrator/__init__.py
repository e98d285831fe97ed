"""clusterplex-orchestrator: takes jobs from shims and places them on workers.

The entry point is imported lazily, so the wing's pure modules load without its I/O libraries.
"""


def main(argv=None):
    from .server import main as run
    return run(argv)
