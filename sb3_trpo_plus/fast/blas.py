"""
The BLAS thread limiter of the NumPy fast paths: they multiply small matrices, for which a
multi-threaded BLAS only adds synchronisation.
"""

from __future__ import annotations

import functools
from typing import Any

from threadpoolctl import ThreadpoolController


@functools.cache
def _controller() -> ThreadpoolController:
    """The process's thread-pool controller, built once, on first use."""
    return ThreadpoolController()


def single_blas_thread() -> Any:
    """
    A context in which NumPy's BLAS uses one thread. The fast paths multiply small matrices, for
    which a multi-threaded BLAS only adds synchronisation: on a loaded multi-core machine it
    made them tens of times slower. The controller is built once (inspecting the loaded
    libraries takes a fraction of a millisecond; entering the limit, microseconds).
    """
    return _controller().limit(limits=1, user_api="blas")
