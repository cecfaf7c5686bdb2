#!/usr/bin/env bash
# Set up a fresh machine (venv, dev extras, Debian's chromium for the UI tests) and run the checks.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
setup_venv dev
if ! command -v chromium >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1 || ! command -v valgrind >/dev/null 2>&1 \
   || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium wrk valgrind prometheus >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium wrk valgrind prometheus >/dev/null
  fi
fi
.venv/bin/ruff check leakyspanner tests benchmarks sample_logs
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
