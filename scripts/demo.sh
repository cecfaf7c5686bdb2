#!/usr/bin/env bash
# Set up a fresh machine and profile the bundled leaking app under ~30 s of real traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
setup_venv demo,analysis
exec .venv/bin/leakyspanner demo "$@"
