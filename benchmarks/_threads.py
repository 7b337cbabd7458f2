"""
Thread limits for the benchmarks, applied on import, before NumPy is loaded.

NumPy's OpenBLAS reads its thread count once, when it is loaded, so scripts import this module
first. ``--blas-threads N`` on a script's command line sets OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS and MKL_NUM_THREADS (default 1, matching ``torch.set_num_threads(1)``);
``--blas-threads default`` leaves the libraries' own choice. Subprocesses inherit the setting.
"""

from __future__ import annotations

import os
import sys


def blas_threads_from_argv(argv: list[str], default: str = "1") -> str:
    """The value of ``--blas-threads`` in ``argv`` (``default`` when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--blas-threads="):
            return arg.split("=", 1)[1]
    return default


BLAS_THREADS = blas_threads_from_argv(sys.argv)
if BLAS_THREADS != "default":
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = BLAS_THREADS
