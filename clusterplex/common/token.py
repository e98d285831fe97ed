"""Join tokens: the cluster secret in a form a person can copy, paste or type safely.

Format::

    cpx1-<base64url(secret), no padding>-<checksum>

where ``checksum`` is the first 4 bytes (8 lowercase hex digits) of
``sha256(b"cpx1|" + secret)``. A changed, dropped or added character is
caught by the checksum ("token mistyped or truncated") instead of silently
joining a worker to no cluster. Whitespace inside a pasted token (a line
wrapped by a terminal or a mail client) is ignored.

The token *is* the secret: whoever has it can join the cluster. Only the
fingerprint (``protocol.secret_fingerprint``) may be shown.

Also here: generating a secret and writing the secret file atomically
(temp file in the same directory, fsync, rename; mode 0600; owner ``plex``).
Standard library only.
"""

import base64
import binascii
import hashlib
import os
import pwd
import re
import secrets
import stat
import string

from ..core.config import MIN_SECRET_LEN

PREFIX = "cpx1"
SECRET_ALPHABET = string.ascii_letters + string.digits
SECRET_LEN = 48
MAX_SECRET_BYTES = 4000        # config.load_secret reads at most 4096 bytes
DEFAULT_OWNER = "plex"

_BODY = re.compile(r"[A-Za-z0-9_-]+")
_CHECK = re.compile(r"[0-9a-fA-F]{8}")


class TokenError(ValueError):
    """Not a valid join token; str() says what is wrong (never the secret)."""


class SecretFileError(Exception):
    """The secret file could not be written; str() names the file and the reason."""


def _checksum(secret):
    return hashlib.sha256(PREFIX.encode() + b"|" + secret).hexdigest()[:8]


def check_secret(secret):
    """Raise TokenError unless ``secret`` (bytes) is what ``config.load_secret`` would return."""
    if not isinstance(secret, bytes):
        raise TypeError("the secret must be bytes")
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError("the secret is not UTF-8 text") from None
    if len(text) < MIN_SECRET_LEN:
        raise TokenError(f"the secret is {len(text)} characters; at least {MIN_SECRET_LEN} are required")
    if len(secret) > MAX_SECRET_BYTES:
        raise TokenError(f"the secret is {len(secret)} bytes; at most {MAX_SECRET_BYTES} are allowed")
    if text.splitlines() != [text] or text != text.strip():
        raise TokenError("the secret must be one line without leading or trailing spaces")


def make_token(secret):
    """The join token for ``secret`` (bytes, as read by ``config.load_secret``)."""
    check_secret(secret)
    body = base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")
    return f"{PREFIX}-{body}-{_checksum(secret)}"


def parse_token(text):
    """The secret (bytes) carried by join token ``text``; TokenError says what is wrong."""
    if not isinstance(text, str):
        raise TokenError("a join token is text")
    token = "".join(text.split())
    if not token:
        raise TokenError("empty join token")
    if not token.startswith(PREFIX + "-"):
        raise TokenError(f"not a ClusterPlex join token: it must start with {PREFIX}- "
                         f"(get one with `clusterplex token` on the orchestrator host)")
    rest = token[len(PREFIX) + 1:]
    body, sep, check = rest.rpartition("-")
    if not sep or not body or not _CHECK.fullmatch(check):
        raise TokenError("token mistyped or truncated: it must end with -<8 hex digits>")
    if not _BODY.fullmatch(body) or len(body) % 4 == 1:
        raise TokenError("token mistyped or truncated: the part between the dashes is not valid base64url")
    try:
        secret = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("token mistyped or truncated: the part between the dashes is not valid base64url") \
            from None
    # A canonical encoding only: a changed last character must not decode to the same bytes unnoticed.
    if base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii") != body or \
            _checksum(secret) != check.lower():
        raise TokenError("token mistyped or truncated (checksum mismatch): copy it again from "
                         "`clusterplex token` on the orchestrator host")
    try:
        check_secret(secret)
    except TokenError as e:
        raise TokenError(f"token carries an unusable secret: {e}") from None
    return secret


def generate_secret(length=SECRET_LEN):
    """A new cluster secret: ``length`` characters from A-Za-z0-9 (as bytes)."""
    return "".join(secrets.choice(SECRET_ALPHABET) for _ in range(length)).encode("ascii")


def _owner_ids(path, owner, existing):
    """(uid, gid) to give the file, or None to leave it to whoever writes it."""
    if owner is not None:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise SecretFileError(f"cannot write {path}: no user {owner!r}") from None
        return pw.pw_uid, pw.pw_gid
    if existing is not None:                  # keep the owner someone chose (a drop-in with User=)
        return existing.st_uid, existing.st_gid
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(DEFAULT_OWNER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def write_secret(path, secret, owner=None):
    """Write ``secret`` (bytes, one line) to ``path`` atomically, mode 0600.

    ``owner`` is a user name (group: its primary group). By default an
    existing file keeps its owner; a new one belongs to ``plex`` when that user
    exists and we are root, else to us. Refuses to write through a symlink or
    over anything but a regular file. Returns True if the content changed.
    Raises TokenError for an unusable secret, SecretFileError otherwise.
    """
    check_secret(secret)
    path = os.fspath(path)
    data = secret + b"\n"
    directory = os.path.dirname(os.path.abspath(path))
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    except OSError as e:
        raise SecretFileError(f"cannot write {path}: {e.strerror}") from None
    if existing is not None:
        if stat.S_ISLNK(existing.st_mode):
            raise SecretFileError(f"refusing to write {path}: it is a symbolic link "
                                  f"(to {os.readlink(path)}); remove it or pass the real path")
        if not stat.S_ISREG(existing.st_mode):
            raise SecretFileError(f"refusing to write {path}: not a regular file")
    if not os.path.isdir(directory):
        raise SecretFileError(f"cannot write {path}: directory {directory} does not exist")
    ids = _owner_ids(path, owner, existing)

    old = None
    if existing is not None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                old = f.read(MAX_SECRET_BYTES + 2)
        except OSError:
            old = None
    changed = old != data
    if not changed and stat.S_IMODE(existing.st_mode) == 0o600 and \
            (ids is None or (existing.st_uid, existing.st_gid) == ids):
        return False

    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        reason = e.strerror + (" (run as root)" if isinstance(e, PermissionError) else "")
        raise SecretFileError(f"cannot write {path}: {reason}") from None
    try:
        try:
            if ids is not None:
                os.fchown(fd, *ids)
            os.fchmod(fd, 0o600)           # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)           # replaces a symlink swapped in meanwhile, never writes through it
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise SecretFileError(f"cannot write {path}: {e.strerror}") from None
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass                           # the rename happened; durability of the directory is best effort
    return changed
