"""
Checks of TRPOPlus's constructor arguments that sb3-contrib's TRPO also takes (and of the
choices among TRPOPlus's own modes), run before any environment is built or any training time
is spent. The vine settings, q and the surrogate's settings are checked when :mod:`sb3_trpo_plus.settings` builds them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from sb3_trpo_plus.settings import FisherMode, Sampling

FISHER_MODES = tuple(mode.value for mode in FisherMode)
SAMPLING_SCHEMES = tuple(scheme.value for scheme in Sampling)


class InvalidArgumentError(ValueError, AssertionError):
    """
    A bad constructor argument. A ``ValueError``, and an ``AssertionError`` too: sb3-contrib's TRPO
    rejects some of the same arguments with ``assert``, so code (and tests) written for TRPO that
    catch ``AssertionError`` keep working with TRPOPlus.
    """


def check(condition: Any, message: str) -> None:
    """Raise :class:`InvalidArgumentError` with ``message`` unless ``condition``."""
    if not condition:
        raise InvalidArgumentError(message)


def validate_arguments(arguments: Mapping[str, Any]) -> None:
    """Reject bad arguments (``arguments``: TRPOPlus's constructor arguments by name)."""
    lr = arguments["learning_rate"]
    check(callable(lr) or (isinstance(lr, (int, float)) and lr > 0), f"learning_rate must be > 0 or a schedule, got {lr!r}")
    for name in (
        "n_steps",
        "batch_size",
        "cg_max_steps",
        "line_search_max_iter",
        "sub_sampling_factor",
        "stats_window_size",
    ):
        value = arguments[name]
        check(isinstance(value, (int, np.integer)) and value >= 1, f"{name} must be an integer >= 1, got {value!r}")
    n_critic = arguments["n_critic_updates"]
    check(
        isinstance(n_critic, (int, np.integer)) and n_critic >= 0,
        f"n_critic_updates must be an integer >= 0, got {n_critic!r}",
    )
    check(
        isinstance(arguments["sde_sample_freq"], (int, np.integer)),
        f"sde_sample_freq must be an integer, got {arguments['sde_sample_freq']!r}",
    )
    for name in ("gamma", "gae_lambda"):
        check(0.0 <= arguments[name] <= 1.0, f"{name} must be in [0, 1], got {arguments[name]!r}")
    target_kl = arguments["target_kl"]
    check(math.isfinite(target_kl) and target_kl > 0, f"target_kl must be a finite number > 0, got {target_kl!r}")
    damping = arguments["cg_damping"]
    check(math.isfinite(damping) and damping >= 0, f"cg_damping must be a finite number >= 0, got {damping!r}")
    shrink = arguments["line_search_shrinking_factor"]
    check(0.0 < shrink < 1.0, f"line_search_shrinking_factor must be in (0, 1), got {shrink!r}")
    fast_paths = arguments["fast_paths"]
    check(isinstance(fast_paths, bool), f"fast_paths must be True or False, got {fast_paths!r}")
    check(arguments["fisher"] in FISHER_MODES, f"fisher must be one of {FISHER_MODES}, got {arguments['fisher']!r}")
    subsample = arguments["fvp_subsample"]
    check(0.0 < subsample <= 1.0, f"fvp_subsample must be in (0, 1], got {subsample!r}")
    check(
        arguments["sampling"] in SAMPLING_SCHEMES,
        f"sampling must be one of {SAMPLING_SCHEMES}, got {arguments['sampling']!r}",
    )
    check(
        arguments["sampling"] == "vine" or not arguments["vine_kwargs"],
        f"vine_kwargs needs sampling='vine', got {arguments['vine_kwargs']!r}",
    )


def check_batch_size(n_envs: int, n_steps: int, batch_size: int, normalize_advantage: bool) -> None:
    """
    Refuse a batch of one sample with advantage normalisation (its advantages would be NaN), and
    warn, as sb3-contrib's TRPO does, when ``batch_size`` does not divide the batch.
    """
    buffer_size = n_envs * n_steps
    check(
        not normalize_advantage or buffer_size > 1,
        f"n_steps * n_envs must be greater than 1 when normalize_advantage=True (got n_steps={n_steps}, n_envs={n_envs})",
    )
    if buffer_size % batch_size > 0:
        warnings.warn(
            f"You have specified a mini-batch size of {batch_size}, but because the rollout buffer "
            f"is of size n_steps * n_envs = {buffer_size}, after every {buffer_size // batch_size} "
            f"untruncated mini-batches there will be a truncated mini-batch of size "
            f"{buffer_size % batch_size}. We recommend a batch_size that is a factor of n_steps * n_envs "
            f"(n_steps={n_steps}, n_envs={n_envs}).",
            stacklevel=3,  # the caller of TRPOPlus(...)
        )
