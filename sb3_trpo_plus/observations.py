"""
Batches of observations, whether a single array (or tensor) or a dict of them (``Dict``
observation spaces), handled in one place: every function here treats each entry of a dict the
same way and returns the same kind of batch it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.utils import obs_as_tensor

#: An array or tensor of observations, or a dict of them.
Observations = Any


def apply(obs: Observations, function: Callable[[Any], Any]) -> Observations:
    """``function`` applied to the array (each array of a dict)."""
    if isinstance(obs, dict):
        return {key: function(value) for key, value in obs.items()}
    return function(obs)


def combine(first: Observations, second: Observations, function: Callable[[Any, Any], Any]) -> Observations:
    """``function(a, b)`` on the two batches' arrays (those of the same key for dicts)."""
    if isinstance(first, dict):
        assert isinstance(second, dict)
        return {key: function(value, second[key]) for key, value in first.items()}
    return function(first, second)


def index(obs: Observations, rows: Any) -> Observations:
    """The rows ``obs[rows]`` (an index tensor or array, a slice, an integer)."""
    return apply(obs, lambda value: value[rows])


def count(obs: Observations) -> int:
    """The number of rows."""
    if isinstance(obs, dict):
        return len(next(iter(obs.values())))
    return len(obs)


def concat(first: Observations, second: Observations) -> Observations:
    """The rows of ``first`` followed by those of ``second`` (tensors)."""
    return combine(first, second, lambda a, b: th.cat([a, b]))


def rows(batch: Observations, size: int) -> list[Observations]:
    """The first ``size`` rows of a batch, one by one."""
    return [index(batch, row) for row in range(size)]


def stack(observations: Sequence[Observations]) -> Observations:
    """One batch (NumPy arrays) of single observations."""
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


def repeat_rows(obs: Observations, times: int) -> Observations:
    """Each row (of tensors) repeated ``times`` times in place: r0, r0, ..., r1, r1, ..."""
    return apply(obs, lambda value: value.repeat_interleave(times, dim=0))


def to_tensor(obs: Observations, device: th.device) -> Observations:
    """NumPy observations as tensors on ``device`` (SB3's ``obs_as_tensor``)."""
    return obs_as_tensor(obs, device)


def channels_last(obs: Observations) -> Observations:
    """4-D observations (images) in the channels_last memory format (the same values; faster convolutions on CPU)."""
    return apply(obs, lambda value: value.contiguous(memory_format=th.channels_last) if value.dim() == 4 else value)


def same_tensors(first: Observations, second: Observations) -> bool:
    """Whether two batches hold the very same tensor objects."""
    if isinstance(first, dict) and isinstance(second, dict):
        return all(first[key] is second[key] for key in first)
    return first is second
