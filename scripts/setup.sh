#!/usr/bin/env bash
# Installs everything sb3-trpo-plus needs into the current Python environment.
# A CPU build of PyTorch is installed first when none is present, so that the plain
# "torch" requirement does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[zoo,bench,test]"

# --- RL Zoo: PostgreSQL server programs for tests/test_zoo_postgres.py (owned by the zoo integration) ---
# The tests start a throw-away server (initdb + pg_ctl, loopback only). Debian/Ubuntu keep these
# programs in /usr/lib/postgresql/<version>/bin; install them when none is found.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    else
        echo "setup.sh: PostgreSQL server programs (initdb, pg_ctl) not found; install postgresql for the zoo tests" >&2
    fi
fi
# --- end RL Zoo ---
