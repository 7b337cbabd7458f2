"""The in-process branch pool, ``vine_kwargs['branch_vec_env']="dummy"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from sb3_trpo_plus.branch_pool import gather_steps, register_branch_pool
from sb3_trpo_plus.env_state import BranchableEnv, wrapper_chain


class InProcessBranchPool:
    """
    K dedicated copies of the environment in this process, stepped one after the other (see
    :class:`~sb3_trpo_plus.branch_pool.BranchPool`).

    :param make_env: builds one copy (wrapped in :class:`~sb3_trpo_plus.env_state.BranchableEnv` if it is not)
    :param size: K, the number of copies
    :param n_workers: unused (the copies run in this process)
    """

    takes_workers: ClassVar[bool] = False

    def __init__(self, make_env: Callable[[], gym.Env], size: int, n_workers: int | None = None) -> None:
        self.size = size
        self.envs: list[gym.Env] = [BranchableEnv.around(make_env()) for _ in range(size)]

    def chain(self) -> list[tuple[str, ...]]:
        """:func:`~sb3_trpo_plus.env_state.wrapper_chain` of copy 0."""
        return wrapper_chain(self.envs[0])

    def restore(self, state: Any, seeds: np.ndarray | None) -> None:
        """Put every copy into ``state``; with ``seeds``, give copy k a fresh random generator (no common random numbers)."""
        for index, env in enumerate(self.envs):
            env.set_state(state)  # type: ignore[attr-defined]
            if seeds is not None:
                env.unwrapped.np_random = np.random.default_rng(int(seeds[index]))

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
        """
        Step the active copies only.

        :return: next observations (None for inactive copies), rewards, terminated and truncated flags
        """
        results = {int(k): self.envs[k].step(actions[k])[:4] for k in np.flatnonzero(active)}
        return gather_steps(self.size, results)

    def replayed_steps(self) -> int:
        """Simulator steps spent replaying snapshots (replay-based environments), summed over copies."""
        return int(sum(getattr(env, "replayed_steps", 0) for env in self.envs))

    def close(self) -> None:
        """Close the copies."""
        for env in self.envs:
            env.close()
        self.envs = []


register_branch_pool("dummy", InProcessBranchPool)
