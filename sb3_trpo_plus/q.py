"""
Sampling distributions q for the importance-sampled surrogate.

The surrogate's actions are drawn from q(.|s); the estimator weights them by pi_theta / q.
``q="policy"`` (q = pi_old) is the single-path scheme of the paper. The other names are the
choices the vine scheme offers; they are validated here, at construction, against the action
space and the sampling scheme.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Q_NAMES = ("policy", "uniform", "scaled", "mixture")


def validate_q(q: str | Callable[..., Any], q_kwargs: dict[str, Any] | None, sampling: str) -> None:
    """
    Check the ``q`` and ``q_kwargs`` arguments of :class:`~sb3_trpo_plus.TRPOPlus`.

    :raises ValueError: naming the argument and what is allowed
    """
    if not (callable(q) or q in Q_NAMES):
        raise ValueError(f"q must be one of {Q_NAMES} or a callable, got {q!r}")
    if q != "policy" and sampling == "single_path":
        raise ValueError(
            f"q={q!r} needs sampling='vine': in single-path mode the states come from pi_old's own "
            "trajectories, so only q='policy' gives an unbiased surrogate"
        )
    if q == "policy" and q_kwargs:
        raise ValueError(f"q_kwargs must be empty for q='policy', got {q_kwargs!r}")
