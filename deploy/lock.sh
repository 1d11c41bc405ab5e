#!/bin/sh
# Write deploy/requirements.lock: the gateway's runtime dependencies (pyproject.toml's, no extras),
# resolved for the image's platform (Linux, CPython 3.11) and pinned with the hashes of every file
# of each pinned release. uv (in the dev extra) keeps the pins already in the lock unless
# pyproject.toml needs others; --upgrade moves them to the newest releases allowed. Run it from
# anywhere, after changing the dependencies; tests/test_package.py fails while the lock is stale.
#
#   deploy/lock.sh [--upgrade] [OUTPUT]
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
upgrade=
if [ "${1:-}" = "--upgrade" ]; then
    upgrade=--upgrade
    shift
fi
output=${1:-$root/deploy/requirements.lock}
uv=${UV:-uv}
if ! command -v "$uv" >/dev/null 2>&1 && [ -x "$root/.venv/bin/uv" ]; then
    uv=$root/.venv/bin/uv
fi

cd "$root"
"$uv" pip compile pyproject.toml $upgrade \
    --quiet \
    --generate-hashes \
    --python-version 3.11 \
    --python-platform linux \
    --no-emit-package s3-upload-gateway \
    --custom-compile-command "deploy/lock.sh" \
    --output-file "$output"
