#!/usr/bin/env bash
# The two entry points of the README, each doing its own set-up on a fresh machine:
#   scripts/dev.sh demo   TRPOPlus trained on CartPole-v1 at the zoo's budget, evaluated (solved or not) and saved
#   scripts/dev.sh test   lint, type-check and the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
bash scripts/setup.sh
case "${1:-}" in
    demo)
        shift
        "$PYTHON" -m sb3_trpo_plus.demo "$@"
        ;;
    test)
        shift
        "$PYTHON" -m ruff check sb3_trpo_plus tests benchmarks scripts
        "$PYTHON" -m mypy
        "$PYTHON" -m pytest -q "$@"
        ;;
    *)
        echo "usage: scripts/dev.sh demo|test [args...]" >&2
        exit 2
        ;;
esac
