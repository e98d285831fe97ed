#!/bin/bash
# Build the Debian packages from a clean copy of the tracked tree; print the .changes path.
#   bash debian/build.sh OUTDIR [VERSION]
# VERSION (optional) overrides the changelog's, for upgrade tests.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
version=${2:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/clusterplex"
(cd "$top" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$work/clusterplex"
cd "$work/clusterplex"
if [ -n "$version" ]; then
    sed -i "1s/([^)]*)/($version)/" debian/changelog
fi
# A clean PATH: pybuild must use Debian's python3, not another one first on PATH.
env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b >"$out/build.log" 2>&1 || {
    tail -40 "$out/build.log" >&2; exit 1; }
mv "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo "$out/"
ls "$out"/*.changes
