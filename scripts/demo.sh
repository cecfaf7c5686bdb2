#!/usr/bin/env bash
# Set up a fresh machine and profile the bundled leaking app under ~30 s of real traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[demo,analysis]'
exec .venv/bin/leakyspanner demo "$@"
