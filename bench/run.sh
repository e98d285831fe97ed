#!/bin/bash
# Benchmarks (README): set up, then measure the core transcode path on Debian's libraries.
# Extra arguments go to the benchmark (e.g. --runs 50). Use ENV=pypi for current PyPI releases.
set -euo pipefail
cd "$(dirname "$0")/.."
env=${ENV:-debian}
if [ "$env" = pypi ]; then bash tests/setup.sh --pypi; else bash tests/setup.sh; fi
exec .venv-$env/bin/python bench/bench_transcode_path.py "$@"
