"""
Typed settings of the vine scheme, validated once when they are built (the pattern of
:class:`~sb3_trpo_plus.zoo.experiment.HeartbeatSettings`).

Users keep passing a plain ``vine_kwargs`` dict to :class:`~sb3_trpo_plus.TRPOPlus` (and it is
what is saved with a model); the algorithm turns it into a :class:`VineSettings` once and hands
that object to the vine sampler.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

from sb3_trpo_plus.distributions import enumerate_actions


@dataclass(frozen=True)
class VineSettings:
    """
    Settings of the vine scheme (Schulman et al. 2015, section 5.2), one field per
    ``vine_kwargs`` key.

    :param n_states: N, the size of the rollout set: an integer >= 1, or a fraction in (0, 1]
        of the trunk's states
    :param n_actions: K, the number of actions (branches) per rollout-set state, >= 2
    :param horizon: H, the maximum length of a branch, >= 1
    :param all_actions: branch every action of a small finite action space (exact-sum
        estimator) instead of K actions from q
    :param common_random_numbers: the K branches of a state share the environment's and the
        policy's noise
    :param state_selection: "uniform" (N distinct trunk states) or "geometric" (N draws from
        the trunk's discounted state distribution)
    :param branch_vec_env: "dummy" (branches in-process) or "subproc" (one process per branch)
    :param make_branch_env: builds one branch environment (None: copies of trunk environment 0)
    :raises ValueError: naming the ``vine_kwargs`` entry and what is allowed
    """

    n_states: int | float = 32
    n_actions: int = 4
    horizon: int = 50
    all_actions: bool = False
    common_random_numbers: bool = True
    state_selection: str = "uniform"
    branch_vec_env: str = "dummy"
    make_branch_env: Callable[[], gym.Env] | None = None

    def __post_init__(self) -> None:
        n_states = self.n_states
        if isinstance(n_states, bool) or not (
            (isinstance(n_states, (int, np.integer)) and n_states >= 1)
            or (isinstance(n_states, float) and 0.0 < n_states <= 1.0)
        ):
            raise ValueError(f"vine_kwargs['n_states'] must be an integer >= 1 or a fraction in (0, 1], got {n_states!r}")
        for key, low in (("n_actions", 2), ("horizon", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"vine_kwargs['{key}'] must be an integer >= {low}, got {value!r}")
        for key in ("all_actions", "common_random_numbers"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"vine_kwargs['{key}'] must be True or False, got {getattr(self, key)!r}")
        if self.state_selection not in ("uniform", "geometric"):
            raise ValueError(f"vine_kwargs['state_selection'] must be 'uniform' or 'geometric', got {self.state_selection!r}")
        if self.branch_vec_env not in ("dummy", "subproc"):
            raise ValueError(f"vine_kwargs['branch_vec_env'] must be 'dummy' or 'subproc', got {self.branch_vec_env!r}")
        if self.make_branch_env is not None and not callable(self.make_branch_env):
            raise ValueError("vine_kwargs['make_branch_env'] must be None or a callable returning a gymnasium.Env")

    @classmethod
    def from_kwargs(cls, vine_kwargs: dict[str, Any] | None) -> VineSettings:
        """
        The settings of a ``vine_kwargs`` dict (missing keys take their defaults).

        :raises ValueError: for an unknown key or a bad value, naming the ``vine_kwargs`` entry
        """
        allowed = sorted(field.name for field in dataclasses.fields(cls))
        unknown = set(vine_kwargs or {}) - set(allowed)
        if unknown:
            raise ValueError(f"vine_kwargs has unknown keys {sorted(unknown)}; allowed: {allowed}")
        return cls(**(vine_kwargs or {}))

    def check_action_space(self, action_space: spaces.Space) -> None:
        """
        The checks that need the environment's action space (``all_actions`` needs a small finite one).

        :raises ValueError: naming ``vine_kwargs['all_actions']``
        """
        if self.all_actions:
            self.branch_actions(action_space)

    def branch_actions(self, action_space: spaces.Space) -> th.Tensor | None:
        """
        With ``all_actions``, every action of the space (see
        :func:`~sb3_trpo_plus.distributions.enumerate_actions`: counted and checked before
        anything is allocated, in the format SB3's ``Distribution.log_prob`` takes); None otherwise.

        :raises ValueError: naming ``vine_kwargs['all_actions']``, when the space is not finite or
            has more than :data:`~sb3_trpo_plus.distributions.MAX_ENUMERATED_ACTIONS` actions
        """
        if not self.all_actions:
            return None
        try:
            return enumerate_actions(action_space)
        except ValueError as error:
            raise ValueError(f"vine_kwargs['all_actions']=True: {error}") from None

    def rollout_set_size(self, trunk_size: int) -> int:
        """N, the size of the rollout set, for a trunk of ``trunk_size`` states."""
        if isinstance(self.n_states, float):
            return max(1, math.ceil(self.n_states * trunk_size))
        return min(int(self.n_states), trunk_size)
