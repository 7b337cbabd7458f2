"""
A callback for ``trpo-plus-zoo train`` runs (tests/test_zoo_vine.py): every vine branch's Q-value
is recomputed directly and compared with what the sampler returned.

The recomputation shares nothing with the sampler but the snapshot format and
``BranchableEnv.set_state`` (itself checked bit for bit in tests/test_env_state.py): it builds a
fresh environment the way rl_zoo3 does (``gym.make``, a ``Monitor``, the zoo's env wrapper),
restores the rollout-set state, stacks and transposes frames itself, steps the actions the branch
took, sums the discounted rewards and adds gamma^L V(s_L) when the branch was truncated or cut
at the horizon, never after a termination.
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import obs_as_tensor

from sb3_trpo_plus.env_state import BranchableEnv


class RecomputeBranchQ(BaseCallback):
    """
    :param report: JSON file receiving the number of branches checked and the largest difference
    :param atari: the zoo's Atari set-up (AtariWrapper inside, VecFrameStack and VecTransposeImage outside)
    :param max_states: rollout-set states checked (the first ones)
    """

    def __init__(self, report: str, atari: bool = False, max_states: int = 4) -> None:
        super().__init__()
        self.report = report
        self.atari = atari
        self.max_states = max_states
        self.checked = 0
        self.max_difference = 0.0
        self.states = 0
        self.bootstrapped = 0
        self.ended = 0

    def _on_training_start(self) -> None:
        sampler = self.model._vine  # type: ignore[attr-defined]
        runner, pool = sampler.runner, sampler.pool
        self.env_id = self.model.get_env().get_attr("spec", indices=[0])[0].id  # type: ignore[union-attr]
        self.gamma, self.horizon = runner.gamma, runner.horizon
        pool_step, runner_run = pool.step, runner.run
        steps: list[tuple[np.ndarray, np.ndarray]] = []

        def step(actions: np.ndarray, active: np.ndarray) -> Any:
            steps.append((np.array(actions, copy=True), np.array(active, copy=True)))
            return pool_step(actions, active)

        def run(state: Any, first_actions: np.ndarray, noise: Any = None, record_states: bool = False) -> Any:
            steps.clear()
            result = runner_run(state, first_actions, noise, record_states)
            if self.states < self.max_states:
                self.states += 1
                self._compare(state, list(steps), result.q_values)
            return result

        pool.step, runner.run = step, run

    def _fresh_env(self) -> gym.Env:
        env: gym.Env = Monitor(gym.make(self.env_id))
        if self.atari:
            env = AtariWrapper(env)
        return BranchableEnv(env)

    def _policy_obs(self, obs: np.ndarray, stack: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if stack is None:
            return obs, None
        stack = np.concatenate([stack[..., obs.shape[-1] :], obs], axis=-1)  # VecFrameStack, channels last
        return np.transpose(stack, (2, 0, 1)), stack  # VecTransposeImage

    def _compare(self, state: Any, steps: list[tuple[np.ndarray, np.ndarray]], q_values: np.ndarray) -> None:
        env = self._fresh_env()
        for branch, q_value in enumerate(q_values):
            env.set_state(state.env)
            stack = state.vec[0] if self.atari else None
            total, discount, length, obs = 0.0, 1.0, 0, None
            terminated = truncated = False
            for actions, active in steps:
                if not active[branch]:
                    break
                raw, reward, terminated, truncated, _ = env.step(actions[branch])
                obs, stack = self._policy_obs(np.asarray(raw), stack)
                total += discount * float(reward)
                discount *= self.gamma
                length += 1
                if terminated or truncated:
                    break
            if not terminated and (truncated or length == self.horizon):
                with th.no_grad():
                    value = self.model.policy.predict_values(obs_as_tensor(obs[None], self.model.device))  # type: ignore[index]
                total += discount * float(value.item())
                self.bootstrapped += 1
            else:
                self.ended += 1
            difference = abs(total - float(q_value))
            self.max_difference = max(self.max_difference, difference)
            self.checked += 1
            assert difference <= 1e-4 * max(1.0, abs(total)), (
                f"branch {branch}: Q {float(q_value)} from the sampler, {total} recomputed (length {length})"
            )
        env.close()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        with open(self.report, "w") as handle:
            report = {
                "checked": self.checked,
                "states": self.states,
                "bootstrapped": self.bootstrapped,
                "ended": self.ended,
                "max_difference": self.max_difference,
            }
            json.dump(report, handle)
