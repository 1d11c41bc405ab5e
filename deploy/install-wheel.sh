#!/bin/sh
# Install the gateway's wheel into a virtual environment, creating it with python3 when it does not
# exist yet: first its runtime dependencies, exactly as deploy/requirements.lock pins them (every
# file checked against the lock's hashes), then the wheel itself, without resolving anything more.
# deploy/Dockerfile builds its image with this script and tests/test_package.py runs it on a fresh
# virtual environment, so CI installs exactly what the image ships.
#
#   deploy/install-wheel.sh VENV WHEEL
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 VENV WHEEL" >&2
    exit 2
fi
venv=$1
wheel=$2
lock=$(dirname "$0")/requirements.lock

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --require-hashes --only-binary :all: --requirement "$lock"
"$venv/bin/python" -m pip install --no-deps "$wheel"
