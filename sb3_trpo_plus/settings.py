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

from sb3_trpo_plus.branch_pool import branch_pool_class, branch_pool_names
from sb3_trpo_plus.distributions import enumerate_actions

#: The largest finite action space ``all_actions="auto"`` branches in full (CartPole 2,
#: Acrobot 3, LunarLander 4, MultiBinary(4) 16); larger spaces get K actions from q.
AUTO_ALL_ACTIONS_MAX = 16

#: The paper's procedure (section 5.2), for reproducing its results: the trust region, the
#: Fisher matrix and the objective on the rollout set alone, the vine estimator alone, the critic
#: fitted on trunk returns only, and the sizes given explicitly (the paper's N, K, H).
PAPER_VINE_KWARGS: dict[str, Any] = {
    "trust_region_states": "rollout_set",
    "estimator": "vine",
    "critic_targets": "trunk",
    "refit_critic_first": False,
}


@dataclass(frozen=True)
class VineSettings:
    """
    Settings of the vine scheme (Schulman et al. 2015, section 5.2), one field per
    ``vine_kwargs`` key.

    :param n_states: N, the size of the rollout set: an integer >= 1, a fraction in (0, 1] of the
        trunk's states, or "auto": as many states as keep the branches within ``branch_share``
        of the iteration's environment steps (N = share / (1 - share) * T / (K * H), at least 2)
    :param n_actions: K, the number of actions (branches) per rollout-set state, >= 2 (when the
        actions are sampled from q)
    :param horizon: H, the maximum length of a branch, >= 1 (a branch cut at H is completed with
        gamma^H V(s_H))
    :param all_actions: branch every action of a finite action space (exact-sum estimator) instead
        of K actions from q; "auto": every action when the space has at most
        :data:`AUTO_ALL_ACTIONS_MAX` of them and q is the default "policy"
    :param branch_share: with ``n_states="auto"``, the largest share of an iteration's
        environment steps that branches may take, in (0, 1)
    :param common_random_numbers: the K branches of a state share the environment's and the
        policy's noise
    :param state_selection: "uniform" (N distinct trunk states) or "geometric" (N draws from
        the trunk's discounted state distribution)
    :param branch_vec_env: the branch pool: "dummy" (branches in-process), "subproc" (branches in
        worker processes) or any name registered with
        :func:`~sb3_trpo_plus.branch_pool.register_branch_pool`
    :param n_branch_workers: with "subproc" (a pool that takes workers), the number of worker
        processes the K branch environments are spread over (None: one per branch)
    :param make_branch_env: builds one branch environment (None: copies of trunk environment 0)
    :param trust_region_states: the states of the KL constraint, the Fisher matrix and the line
        search's KL: "trunk" (every trunk state, as single path) or "rollout_set" (the paper's)
    :param estimator: the policy-gradient estimate the step follows: "combined" (the trunk's
        single-path estimator and the rollout set's vine estimator, weighted by the inverse of
        their measured variances) or "vine" (the rollout set's alone, the paper's)
    :param critic_targets: what the value function is regressed on: "trunk_and_branches" (the
        trunk's returns and the branches' Monte Carlo returns of every state they visit) or
        "trunk" (the paper's)
    :param refit_critic_first: fit the critic before the policy step and complete the branches'
        Q-values with the refitted critic (False: the critic of the previous iteration)
    :raises ValueError: naming the ``vine_kwargs`` entry and what is allowed
    """

    n_states: int | float | str = "auto"
    n_actions: int = 4
    horizon: int = 10
    all_actions: bool | str = "auto"
    branch_share: float = 0.2
    common_random_numbers: bool = True
    state_selection: str = "uniform"
    branch_vec_env: str = "dummy"
    n_branch_workers: int | None = None
    make_branch_env: Callable[[], gym.Env] | None = None
    trust_region_states: str = "trunk"
    estimator: str = "combined"
    critic_targets: str = "trunk_and_branches"
    refit_critic_first: bool = True

    def __post_init__(self) -> None:
        n_states = self.n_states
        if isinstance(n_states, bool) or not (
            (isinstance(n_states, (int, np.integer)) and n_states >= 1)
            or (isinstance(n_states, float) and 0.0 < n_states <= 1.0)
            or n_states == "auto"
        ):
            raise ValueError(
                f"vine_kwargs['n_states'] must be an integer >= 1, a fraction in (0, 1] or 'auto', got {n_states!r}"
            )
        for key, low in (("n_actions", 2), ("horizon", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"vine_kwargs['{key}'] must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.all_actions, bool) or self.all_actions == "auto"):
            raise ValueError(f"vine_kwargs['all_actions'] must be True, False or 'auto', got {self.all_actions!r}")
        share = self.branch_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share < 1.0:
            raise ValueError(f"vine_kwargs['branch_share'] must be a number in (0, 1), got {share!r}")
        for key in ("common_random_numbers", "refit_critic_first"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"vine_kwargs['{key}'] must be True or False, got {getattr(self, key)!r}")
        for key, allowed in (
            ("state_selection", ("uniform", "geometric")),
            ("branch_vec_env", tuple(branch_pool_names())),
            ("trust_region_states", ("trunk", "rollout_set")),
            ("estimator", ("combined", "vine")),
            ("critic_targets", ("trunk_and_branches", "trunk")),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"vine_kwargs['{key}'] must be one of {list(allowed)}, got {getattr(self, key)!r}")
        workers = self.n_branch_workers
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
            raise ValueError(f"vine_kwargs['n_branch_workers'] must be None or an integer >= 1, got {workers!r}")
        if workers is not None and not branch_pool_class(self.branch_vec_env).takes_workers:
            with_workers = [name for name in branch_pool_names() if branch_pool_class(name).takes_workers]
            raise ValueError(
                f"vine_kwargs['n_branch_workers'] needs a vine_kwargs['branch_vec_env'] with worker processes "
                f"(one of {with_workers}), got {self.branch_vec_env!r}"
            )
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

    def resolved(self, action_space: spaces.Space, q_is_policy: bool = True) -> VineSettings:
        """
        These settings with ``all_actions="auto"`` decided for ``action_space`` (every action of a
        finite space of at most :data:`AUTO_ALL_ACTIONS_MAX` actions, when q is pi_old), after the
        checks that need the space.

        :raises ValueError: naming ``vine_kwargs['all_actions']``
        """
        if self.all_actions == "auto":
            try:
                count = len(enumerate_actions(action_space, AUTO_ALL_ACTIONS_MAX))
            except ValueError:
                count = 0
            return dataclasses.replace(self, all_actions=q_is_policy and count > 0)
        self.branch_actions(action_space)
        return self

    def check_action_space(self, action_space: spaces.Space) -> None:
        """
        The checks that need the environment's action space (``all_actions`` needs a small finite one).

        :raises ValueError: naming ``vine_kwargs['all_actions']``
        """
        self.resolved(action_space)

    def branch_actions(self, action_space: spaces.Space) -> th.Tensor | None:
        """
        With ``all_actions``, every action of the space (see
        :func:`~sb3_trpo_plus.distributions.enumerate_actions`: counted and checked before
        anything is allocated, in the format SB3's ``Distribution.log_prob`` takes); None otherwise.

        :raises ValueError: naming ``vine_kwargs['all_actions']``, when the space is not finite or
            has more than :data:`~sb3_trpo_plus.distributions.MAX_ENUMERATED_ACTIONS` actions
        """
        if self.all_actions == "auto":
            return self.resolved(action_space).branch_actions(action_space)
        if not self.all_actions:
            return None
        try:
            return enumerate_actions(action_space)
        except ValueError as error:
            raise ValueError(f"vine_kwargs['all_actions']=True: {error}") from None

    def rollout_set_size(self, trunk_size: int, n_branches: int | None = None) -> int:
        """
        N, the size of the rollout set, for a trunk of ``trunk_size`` states and ``n_branches``
        branches per state (needed by ``n_states="auto"``; default K).
        """
        if self.n_states == "auto":
            per_state = (n_branches or self.n_actions) * self.horizon
            size = self.branch_share / (1.0 - self.branch_share) * trunk_size / per_state
            return min(trunk_size, max(2, math.floor(size)))
        if isinstance(self.n_states, float):
            return max(1, math.ceil(self.n_states * trunk_size))
        return min(int(self.n_states), trunk_size)
