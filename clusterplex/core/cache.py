"""The discovered orchestrator, cached on disk by the relay for the shim and the CLI.

The shim runs on every play and must not browse mDNS itself; the relay (a
daemon on the same host) browses and keeps this file current. Standard
library only.
"""

import json
import os

DEFAULT_PATH = "/run/clusterplex/orchestrator.json"


def write(path, data):
    """Atomically write ``data`` (JSON); returns an error string or None."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
        return None
    except OSError as e:
        return f"cannot write {path}: {e.strerror}"


def read(path):
    """The cached orchestrator (a dict with ``url``), or None."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("url"), str) and data["url"].startswith("http://"):
        return data
    return None


def remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass
