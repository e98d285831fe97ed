#!/bin/bash
# The demo command (README): set up, then run a one-machine cluster and a real transcode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
exec .venv-debian/bin/python -m tests.demo "$@"
