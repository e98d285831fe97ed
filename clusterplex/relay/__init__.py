"""clusterplex-relay: forwards the transcoders' callbacks to Plex on the Plex host.

The entry point is imported lazily, so the wing's pure modules load without its I/O libraries.
"""


def main(argv=None):
    from .server import main as run
    return run(argv)
