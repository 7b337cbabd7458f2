"""
Everything that knows SB3's action distributions and action spaces.

:func:`enumerate_actions` lists every action of a small finite space (the vine's "branch every
action" mode and its exact-sum estimator).
"""

from __future__ import annotations

import math

import numpy as np
import torch as th
from gymnasium import spaces

MAX_ENUMERATED_ACTIONS = 64


def enumerate_actions(action_space: spaces.Space, max_actions: int = MAX_ENUMERATED_ACTIONS) -> th.Tensor:
    """
    Every action of a small finite action space, for branching every action with the exact-sum
    surrogate (:func:`~sb3_trpo_plus.surrogate.exact_sum_surrogate`).

    The actions are in the format SB3's ``Distribution.log_prob`` takes: shape (M,) long indices
    for Discrete, (M, n) long vectors for MultiDiscrete, (M, n) float 0/1 vectors for
    MultiBinary, with indices from 0 as SB3 policies act (a Discrete space's ``start`` is not
    applied). Products are in row-major order (the last component varies fastest). The count is
    checked before anything is allocated.

    :param action_space: a Discrete, one-dimensional MultiDiscrete or MultiBinary space
    :param max_actions: the largest number of actions accepted
    :return: the M actions of the space
    :raises ValueError: for another kind of space, or a space with more than ``max_actions`` actions
    """
    if isinstance(action_space, spaces.Discrete):
        sizes = [int(action_space.n)]
    elif isinstance(action_space, spaces.MultiDiscrete) and action_space.nvec.ndim == 1:
        sizes = [int(n) for n in action_space.nvec]
    elif isinstance(action_space, spaces.MultiBinary) and len(action_space.shape) == 1:
        sizes = [2] * int(action_space.shape[0])
    else:
        raise ValueError(
            f"enumerating actions needs a Discrete, one-dimensional MultiDiscrete or MultiBinary space, got {action_space}"
        )
    count = math.prod(sizes)
    if count > max_actions:
        raise ValueError(f"enumerating actions needs at most {max_actions} actions, the space {action_space} has {count}")
    if isinstance(action_space, spaces.Discrete):
        return th.arange(count, dtype=th.long)
    grids = th.meshgrid(*[th.arange(size, dtype=th.long) for size in sizes], indexing="ij")
    actions = th.stack([grid.reshape(-1) for grid in grids], dim=-1)
    return actions.float() if isinstance(action_space, spaces.MultiBinary) else actions


def action_shape(action_space: spaces.Space) -> tuple[int, ...]:
    """The shape of one action in the format SB3's ``Distribution.log_prob`` takes."""
    if isinstance(action_space, spaces.Discrete):
        return ()
    if isinstance(action_space, spaces.MultiDiscrete):
        return (len(action_space.nvec.ravel()),)
    return (int(np.prod(action_space.shape or ())),)
