"""Helpers of the RL Zoo tests: run ``trpo-plus-zoo`` as a subprocess with a small, quiet budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
#: ``python -m sb3_trpo_plus.zoo`` runs in the process it is started as (its pid is the worker's)
ZOO = [sys.executable, "-m", "sb3_trpo_plus.zoo"]
#: tiny trials: 1024-step budget, one evaluation of 2 episodes, one thread
TINY_OPTIMIZE = [
    "--env",
    "CartPole-v1",
    "-optimize",
    "--n-evaluations",
    "1",
    "--eval-episodes",
    "2",
    "--no-optim-plots",
    "--num-threads",
    "1",
    "--verbose",
    "0",
]


def zoo_env(**extra: str) -> dict[str, str]:
    """Environment of the subprocesses: one BLAS/torch thread, non-interactive plots."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MPLBACKEND": "module://zoo_plot_backend",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH", "")])),
        }
    )
    env.update(extra)
    return env


def run_zoo(args: list[str], cwd: Path, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sb3_trpo_plus.zoo <args>``; fail with its output if it does not exit with 0."""
    result = subprocess.run(
        [*ZOO, *args], cwd=cwd, env=zoo_env(**extra_env), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)} exited with {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result
