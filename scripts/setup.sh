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
