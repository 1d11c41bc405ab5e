#!/bin/sh
# Install the gateway's wheel, without extras, into a virtual environment, creating it with
# python3 when it does not exist yet. deploy/Dockerfile builds its image with this script and
# tests/test_package.py runs it on a fresh virtual environment, so CI tests what the image ships.
#
#   deploy/install-wheel.sh VENV WHEEL
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 VENV WHEEL" >&2
    exit 2
fi
venv=$1
wheel=$2

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install "$wheel"
