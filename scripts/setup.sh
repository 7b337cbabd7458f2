#!/usr/bin/env bash
# Installs sb3-trpo-plus (editable, with its extras zoo, bench and test) into the Python
# environment that runs it: make and activate a virtualenv first (see the README).
# A CPU build of PyTorch is installed first when none is present, so that the plain "torch"
# requirement does not pull a multi-GB CUDA build. When this checkout and everything it declares
# are already installed, it does nothing (scripts/installed.py checks, in a fraction of a second).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="zoo,bench,test"
if "$PYTHON" scripts/installed.py ${EXTRAS//,/ } >/dev/null 2>&1; then
    exit 0
fi
"$PYTHON" scripts/installed.py ${EXTRAS//,/ } || true
echo "setup: installing into $("$PYTHON" -c 'import sys; print(sys.prefix)') (a few minutes on a fresh machine)"
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install "torch==2.13.0"
fi
"$PYTHON" -m pip install -e ".[$EXTRAS]"
