"""Atomic file writes for downloads: exclusive temp files, fsync and rename, directory fsync.
A killed worker leaves at most ``*.tmp`` files.
"""

import os
import secrets

TMP_SUFFIX = ".tmp"
CHUNK = 256 << 10                # download read size


def open_tmp(path):
    """A new file at ``path`` (which must not exist), open for binary writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "wb")


def commit(f, tmp, final):
    """Flush, fsync and close ``f``, then rename ``tmp`` to ``final``."""
    with f:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def fsync_dir(path):
    """fsync a directory (so renames in it last); errors ignored."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, data, mode):
    """Write ``data`` to ``path`` with ``mode``, through a temp file and a rename."""
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
