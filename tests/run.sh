#!/bin/bash
# The test command (README): set up, then run the whole suite twice, on Debian 12's
# packaged libraries and on current PyPI releases, then the unit and integration tests a third
# time on Debian 13's packaged libraries (testbed/trixie.py). Extra arguments go to pytest (and
# then only the first two runs happen: `.venv-debian/bin/python -m testbed.trixie ARGS` for the third).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh --pypi
status=0
for env in debian pypi; do
    echo "=== tests on .venv-$env: $(.venv-$env/bin/python -c 'import aiohttp, zeroconf, yaml, psutil; print("aiohttp", aiohttp.__version__, "zeroconf", zeroconf.__version__, "PyYAML", yaml.__version__, "psutil", psutil.__version__)')"
    # The package tests install Debian's own libraries inside containers: once is enough.
    select=()
    [ "$env" = pypi ] && select=(-m "not packaging")
    .venv-$env/bin/python -m pytest -p no:cacheprovider "${select[@]}" "$@" || status=$?
done
if [ $# -eq 0 ]; then
    .venv-debian/bin/python -m testbed.trixie || status=$?
fi
exit $status
