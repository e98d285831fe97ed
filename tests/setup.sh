#!/bin/bash
# Install what the demo, the tests and the benchmarks need on Debian 12 (as root),
# then build two virtual environments:
#   .venv-debian  Debian 12's packaged libraries (python3-aiohttp 3.8, python3-zeroconf 0.47, ...),
#                 the project installed without dependencies; pytest from PyPI.
#   .venv-pypi    current PyPI releases of everything (only with --pypi).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ffmpeg iproute2 python3 python3-venv python3-pip python3-aiohttp python3-zeroconf python3-sdnotify
              python3-yaml python3-psutil python3-prometheus-client
              # packaging tests: build, lint, and boot Debian 12 containers
              debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian
              systemd-container debootstrap dpkg-dev
              # Ansible role tests; the web page test runs in a real headless browser
              ansible ansible-lint chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp() { sha256sum pyproject.toml | cut -c1-16; }

if [ ! -f .venv-debian/.stamp ] || [ "$(cat .venv-debian/.stamp)" != "$(stamp)" ]; then
    echo "setup: building .venv-debian (Debian's libraries)"
    rm -rf .venv-debian
    /usr/bin/python3 -m venv --system-site-packages .venv-debian
    .venv-debian/bin/pip install -q --disable-pip-version-check --no-deps -e .
    .venv-debian/bin/pip install -q --disable-pip-version-check "pytest>=7" "pytest-timeout>=2"
    stamp > .venv-debian/.stamp
fi

if [ "${1:-}" = "--pypi" ] && { [ ! -f .venv-pypi/.stamp ] || [ "$(cat .venv-pypi/.stamp)" != "$(stamp)" ]; }; then
    echo "setup: building .venv-pypi (current PyPI releases)"
    rm -rf .venv-pypi
    /usr/bin/python3 -m venv .venv-pypi
    .venv-pypi/bin/pip install -q --disable-pip-version-check -e '.[test]'
    stamp > .venv-pypi/.stamp
fi
