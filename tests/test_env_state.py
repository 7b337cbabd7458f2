"""Saving and restoring environment state: bit-identical continuation after a restore."""

from __future__ import annotations

import pickle
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor

from sb3_trpo_plus.env_state import (
    BranchableEnv,
    UnbranchableEnvError,
    check_branchable,
    register_replay_env,
    register_state_adapter,
)

ENV_IDS = [
    "CartPole-v1",
    "Pendulum-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "LunarLander-v3",
    "BipedalWalker-v3",
    "Hopper-v5",
    "HalfCheetah-v5",
]


def _make(env_id: str, monitor: bool) -> BranchableEnv:
    env: gym.Env = gym.make(env_id)
    if monitor:
        env = Monitor(env)
    return BranchableEnv(env)


def _run(env: gym.Env, actions: list[Any]) -> list[tuple[Any, ...]]:
    """Step through ``actions``, resetting after an episode ends; record everything observable."""
    trace = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        trace.append((np.asarray(obs).copy(), float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            obs, _ = env.reset()
            trace.append((np.asarray(obs).copy(), "reset"))
    return trace


def _assert_same(first: list[tuple[Any, ...]], second: list[tuple[Any, ...]]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a[0], b[0])
        assert a[1:] == b[1:]


@pytest.mark.parametrize("monitor", [False, True])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_restore_replays_bit_identically(env_id: str, monitor: bool) -> None:
    env = _make(env_id, monitor)
    env.reset(seed=123)
    env.action_space.seed(7)
    _run(env, [env.action_space.sample() for _ in range(15)])
    state = env.get_state()
    actions = [env.action_space.sample() for _ in range(100)]
    reference = _run(env, actions)

    env.set_state(state)  # the same instance
    _assert_same(reference, _run(env, actions))

    other = _make(env_id, monitor)  # another instance built the same way, never reset
    other.set_state(pickle.loads(pickle.dumps(state)))
    _assert_same(reference, _run(other, actions))


def test_time_limit_truncates_at_the_same_step_after_restore() -> None:
    env = BranchableEnv(gym.make("Pendulum-v1", max_episode_steps=30))
    env.reset(seed=0)
    for _ in range(20):
        env.step(np.zeros(1, dtype=np.float32))
    state = env.get_state()
    copy_env = BranchableEnv(gym.make("Pendulum-v1", max_episode_steps=30))
    copy_env.set_state(state)
    for step in range(10):
        *_, truncated, _ = copy_env.step(np.zeros(1, dtype=np.float32))
        assert truncated == (step == 9)


def test_replay_counts_replayed_steps() -> None:
    env = BranchableEnv(gym.make("LunarLander-v3"))
    env.reset(seed=1)
    for _ in range(12):
        env.step(0)
    other = BranchableEnv(gym.make("LunarLander-v3"))
    other.set_state(env.get_state())
    assert other.replayed_steps == 12


class HiddenStateEnv(gym.Env):
    """An environment whose state lives in an object no adapter knows."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.counter = [0]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.counter = [0]
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.counter[0] += int(action) + int(self.np_random.integers(3))
        return np.array([self.counter[0]], dtype=np.float32), 1.0, False, False, {}


class ProtocolEnv(HiddenStateEnv):
    def get_state(self) -> int:
        return self.counter[0]

    def set_state(self, state: int) -> None:
        self.counter = [state]


def test_unbranchable_env_is_named_with_a_fix() -> None:
    with pytest.raises(UnbranchableEnvError, match=r"HiddenStateEnv.*get_state\(\) and set_state"):
        check_branchable(HiddenStateEnv())
    with pytest.raises(UnbranchableEnvError):
        BranchableEnv(HiddenStateEnv())


def _check_continuation(make: Any) -> None:
    env = BranchableEnv(make())
    env.reset(seed=5)
    for action in (1, 0, 1):
        env.step(action)
    state = env.get_state()
    reference = _run(env, [1, 0, 0, 1])
    other = BranchableEnv(make())
    other.set_state(state)
    _assert_same(reference, _run(other, [1, 0, 0, 1]))


def test_get_state_protocol_is_used() -> None:
    _check_continuation(ProtocolEnv)


def test_registered_adapter_and_replay() -> None:
    class CounterAdapter:
        def save(self, env: gym.Env) -> Any:
            return list(env.counter)  # type: ignore[attr-defined]

        def restore(self, env: gym.Env, state: Any) -> None:
            env.counter = list(state)  # type: ignore[attr-defined]

    class AdaptedEnv(HiddenStateEnv):
        pass

    class ReplayedEnv(HiddenStateEnv):
        pass

    register_state_adapter(AdaptedEnv, CounterAdapter())
    register_replay_env(ReplayedEnv)
    _check_continuation(AdaptedEnv)
    _check_continuation(ReplayedEnv)
