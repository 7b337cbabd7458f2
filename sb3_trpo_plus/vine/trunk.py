"""
The trunk's side of vine: the rollout set chosen online from the trunk's states
(:class:`TrunkStates`), what a rollout-set state holds (:class:`BranchState`, :class:`GsdeNoise`),
snapshots of the trunk's environments, and how branch copies of them are built.
"""

from __future__ import annotations

import copy
import functools
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sb3_trpo_plus.env_state import (
    BranchableEnv,
    UnbranchableEnvError,
    branch_copy,
    check_branchable,
    check_same_chain,
    raise_failure,
    wrapper_chain,
)
from sb3_trpo_plus.vine.wrappers import VecWrappers, base_vec_env


class TrunkStates:
    """
    The rollout set, chosen online from the trunk's states so that only the chosen states are
    snapshotted.

    - ``geometric=False`` ("uniform"): N *distinct* trunk states, a uniformly random subset
      (reservoir sampling with uniform keys): every trunk state is in the set with probability
      N / T, T the number of trunk states.
    - ``geometric=True`` ("geometric"): N independent draws *with replacement*, each of which picks
      the trunk state with time t since the start of its episode with probability
      gamma^t / sum over the trunk's states of gamma^t': the discounted state distribution of the
      trunk's episodes, sampled exactly. Each draw is a single-item weighted reservoir (keep the
      new state with probability w / W, W the total weight offered so far), which is exact.
      Drawing without replacement would not be: it flattens the weights (early states are
      under-represented, late ones over-represented). A state drawn more than once appears once
      per draw in the rollout set (one snapshot, shared), and each occurrence gets its own K
      branches: the set is a sample of the distribution, duplicates included.
    """

    def __init__(self, size: int, gamma: float, geometric: bool, n_envs: int, rng: np.random.Generator) -> None:
        self.size = size
        self.gamma = gamma
        self.geometric = geometric
        self.rng = rng
        self.episode_time = np.zeros(n_envs, dtype=np.int64)
        self.heap: list[tuple[float, int, Any, Any]] = []
        self.slots: list[tuple[int, Any, Any] | None] = []
        self.total_weight = 0.0
        self.counter = 0
        self.reset()

    def reset(self) -> None:
        """Start a new rollout set (episode times carry over: the trunk continues its episodes)."""
        self.heap = []
        self.slots = [None] * self.size
        self.total_weight = 0.0

    def offer(self, env_index: int, obs: Any, take_snapshot: Callable[[], Any]) -> None:
        """Consider the state of trunk environment ``env_index``; snapshot it only if it is kept."""
        self.counter += 1
        if self.geometric:
            self._offer_weighted(float(self.gamma ** float(self.episode_time[env_index])), obs, take_snapshot)
            return
        key = self.rng.random()
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (key, self.counter, copy.deepcopy(obs), take_snapshot()))
        elif key > self.heap[0][0]:
            heapq.heapreplace(self.heap, (key, self.counter, copy.deepcopy(obs), take_snapshot()))

    def _offer_weighted(self, weight: float, obs: Any, take_snapshot: Callable[[], Any]) -> None:
        if len(self.slots) != self.size:  # the size was changed without a reset
            self.slots = [None] * self.size
        if weight <= 0.0:
            return
        self.total_weight += weight
        keep = np.flatnonzero(self.rng.random(self.size) * self.total_weight < weight)
        if len(keep):
            item = (self.counter, copy.deepcopy(obs), take_snapshot())
            for slot in keep:
                self.slots[slot] = item

    def states(self) -> tuple[list[Any], list[Any]]:
        """Observations and snapshots of the rollout set, in trunk order (geometric: with repeats)."""
        if self.geometric:
            chosen = sorted((item for item in self.slots if item is not None), key=lambda item: item[0])
            return [item[1] for item in chosen], [item[2] for item in chosen]
        items = sorted(self.heap, key=lambda item: item[1])
        return [item[2] for item in items], [item[3] for item in items]


@dataclass
class BranchState:
    """
    A rollout-set state: the snapshot of one trunk environment (every gymnasium wrapper included)
    and the state of the trunk's VecEnv wrappers for it (see :meth:`VecWrappers.snapshot`).
    """

    env: Any
    vec: tuple[Any, ...]


@dataclass
class GsdeNoise:
    """
    The state of the trunk's gSDE noise process at a rollout-set state: the exploration matrix
    in force there (SB3's ``exploration_mat`` with one trunk environment, row i of
    ``exploration_matrices`` for trunk environment i of several) and the trunk step (since the
    start of the rollout) at which it was in force, which fixes when the trunk would draw the next
    matrix (every ``sde_sample_freq`` steps).
    """

    matrix: np.ndarray
    step: int


def trunk_snapshotter(env: VecEnv) -> Callable[[int], BranchState]:
    """A function ``i -> snapshot of trunk environment i`` for a DummyVecEnv or SubprocVecEnv trunk."""
    base, wrappers = base_vec_env(env)
    vec = VecWrappers(wrappers)
    if isinstance(base, DummyVecEnv):
        return lambda index: BranchState(base.envs[index].get_state(), vec.snapshot(index))  # type: ignore[attr-defined]

    def take(index: int) -> BranchState:
        state = base.env_method("guarded_call", "get_state", indices=[index])[0]
        return BranchState(raise_failure(state, f"snapshot of trunk environment {index}"), vec.snapshot(index))

    return take


def trunk_chains(base: VecEnv) -> list[list[tuple[str, ...]]]:
    if isinstance(base, DummyVecEnv):
        return [wrapper_chain(sub_env) for sub_env in base.envs]
    chains = base.env_method("guarded_call", "wrapper_chain")
    return [raise_failure(chain, f"trunk environment {index}") for index, chain in enumerate(chains)]


def make_trunk_branchable(env: VecEnv) -> None:
    """
    Check that every trunk environment can be snapshotted and that all are built alike, and wrap
    each environment of a DummyVecEnv in :class:`BranchableEnv` (SubprocVecEnv environments must
    be wrapped by the user, e.g. ``make_vec_env(..., wrapper_class=BranchableEnv)``).

    :raises UnbranchableEnvError: for an environment that cannot be branched
    """
    base, _ = base_vec_env(env)
    if isinstance(base, DummyVecEnv):
        for index, sub_env in enumerate(base.envs):
            if not isinstance(sub_env, BranchableEnv):
                check_branchable(sub_env)
                base.envs[index] = BranchableEnv(sub_env)
    elif not base.has_attr("guarded_call"):
        raise UnbranchableEnvError(
            "sampling='vine' with a SubprocVecEnv needs environments wrapped in sb3_trpo_plus.env_state.BranchableEnv, "
            "e.g. make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv)"
        )
    chains = trunk_chains(base)
    for index, chain in enumerate(chains[1:], start=1):
        check_same_chain(chains[0], chain, where=f"trunk environment {index}'s wrappers (against environment 0's)")


def branch_env_factory(trunk: VecEnv, make_branch_env: Callable[[], gym.Env] | None) -> Callable[[], gym.Env]:
    """
    How to build one dedicated copy of the trunk's environment for branching: by default a copy of
    trunk environment 0, every wrapper included, without file side effects (see
    :func:`~sb3_trpo_plus.env_state.branch_copy`), taken in its own process for a SubprocVecEnv.
    The result is picklable with cloudpickle (subprocess branches get it).
    """
    if make_branch_env is not None:
        return functools.partial(_built_branch_env, make_branch_env)
    base, _ = base_vec_env(trunk)
    if isinstance(base, DummyVecEnv):
        template = branch_copy(base.envs[0])
    else:
        blob = raise_failure(base.env_method("guarded_call", "branch_copy_blob", indices=[0])[0], "trunk environment 0")
        template = cloudpickle.loads(blob)
    return functools.partial(copy.deepcopy, template)


def _built_branch_env(make_branch_env: Callable[[], gym.Env]) -> gym.Env:
    return BranchableEnv.around(make_branch_env())
