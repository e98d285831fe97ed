#!/bin/bash
# Benchmarks (README): set up, then measure.
#   bash bench/run.sh [transcode|scheduler|discovery|soak|all] [options]   (soak: --minutes 30; not in all)
# Default: all. Options go to the chosen benchmark (e.g. --runs 50, --rounds 3).
# ENV=pypi uses current PyPI releases instead of Debian's libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
env=${ENV:-debian}
if [ "$env" = pypi ]; then bash tests/setup.sh --pypi; else bash tests/setup.sh; fi
py=.venv-$env/bin/python
what=${1:-all}
case "$what" in
    transcode|scheduler|discovery) shift; exec $py bench/bench_$what.py "$@" ;;
    soak) shift; exec $py bench/soak.py "$@" ;;
    all) for b in transcode scheduler discovery; do $py bench/bench_$b.py; echo; done ;;
    *) exec $py bench/bench_transcode.py "$@" ;;
esac
