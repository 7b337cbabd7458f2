"""
Branches simulate the trunk's MDP (issue 9): every wrapper of the trunk, gymnasium's and the
VecEnv's, the user's own included; one bootstrapping rule for both backends; worker errors that
name the environment and the original exception.
"""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecFrameStack,
    VecNormalize,
    VecTransposeImage,
)

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.env_state import BranchableEnv, BranchWorkerError, ChainMismatchError, UnbranchableEnvError
from sb3_trpo_plus.vine.pools.subproc import SubprocBranchPool
from sb3_trpo_plus.vine.runner import bootstraps
from sb3_trpo_plus.vine.sampler import VineSampler

gym.register_envs(ale_py)

VINE = {"n_states": 6, "n_actions": 2, "horizon": 8}


class PayThousand(gym.RewardWrapper):
    """The user's reward wrapper of the issue: 1000 a step on the trunk."""

    def reward(self, reward: Any) -> float:
        return 1000.0 + float(reward)


class AppendStep(gym.ObservationWrapper):
    """A user observation wrapper that changes the observation space (and keeps state: a step counter)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        low, high = env.observation_space.low, env.observation_space.high  # type: ignore[attr-defined]
        self.observation_space = gym.spaces.Box(np.append(low, 0.0), np.append(high, np.inf), dtype=np.float32)
        self.count = 0

    def reset(self, **kwargs: Any) -> Any:
        self.count = 0
        return super().reset(**kwargs)

    def step(self, action: Any) -> Any:
        self.count += 1
        return super().step(action)

    def observation(self, observation: Any) -> np.ndarray:
        return np.append(observation, self.count).astype(np.float32)


def user_wrappers(env: gym.Env) -> gym.Env:
    return AppendStep(PayThousand(env))


def branchable_user_wrappers(env: gym.Env) -> gym.Env:
    return BranchableEnv(user_wrappers(env))


def _model(env: Any, policy: str = "MlpPolicy", **vine: Any) -> TRPOPlus:
    return TRPOPlus(
        policy, env, seed=0, n_steps=32, batch_size=32, n_critic_updates=1, sampling="vine", vine_kwargs={**VINE, **vine}
    )


def _collect(model: TRPOPlus) -> None:
    model._setup_learn(10**9, None)
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]


def _sampler(model: TRPOPlus) -> VineSampler:
    assert model._vine is not None
    return model._vine


# ----------------------------------------------------------------------------- the trunk's own MDP


@pytest.mark.parametrize("trunk", ["dummy", "subproc"])
def test_branches_keep_the_users_wrappers_behind_a_monitor_file(trunk: str, tmp_path: Path) -> None:
    """The issue's case: a Monitor writing a file (rl_zoo3) made branches rebuild gym.make(spec), losing the wrapper."""
    if trunk == "dummy":
        env = make_vec_env("CartPole-v1", n_envs=2, seed=0, monitor_dir=str(tmp_path), wrapper_class=user_wrappers)
    else:
        env = make_vec_env(
            "CartPole-v1",
            n_envs=2,
            seed=0,
            monitor_dir=str(tmp_path),
            wrapper_class=branchable_user_wrappers,
            vec_env_cls=SubprocVecEnv,
        )
    try:
        model = _model(env)
        _collect(model)
        q_values = model._vine_batch.q_values
        # every branch step pays at least 999 (CartPole pays 1, then 1000 on top); mean Q was -12 before
        assert float(q_values.min()) >= 999.0
        # branches write nothing to the trunk's monitor files: only the trunk's episodes are there
        rows = 0
        for path in tmp_path.glob("*.monitor.csv"):
            with path.open() as handle:
                rows += sum(1 for _ in csv.reader(handle)) - 2  # a comment line and the header
        assert rows == sum(len(returns) for returns in env.get_attr("episode_returns")) > 0
    finally:
        _sampler(model).close()
        env.close()


def test_branch_copies_built_without_the_users_wrapper_are_refused() -> None:
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0, wrapper_class=PayThousand)
    with pytest.raises(ChainMismatchError, match=r"lack the trunk's wrapper .*PayThousand"):
        _model(env, make_branch_env=lambda: gym.make("CartPole-v1"))
    with pytest.raises(ChainMismatchError, match=r"have the wrapper .*AppendStep"):
        _model(env, make_branch_env=lambda: AppendStep(PayThousand(gym.make("CartPole-v1"))))
    model = _model(env, make_branch_env=lambda: PayThousand(gym.make("CartPole-v1")))  # the same chain: accepted
    _sampler(model).close()


class Locked(gym.Wrapper):
    """A wrapper holding something that cannot be copied."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lock = threading.Lock()


def test_a_wrapper_that_cannot_be_copied_is_named() -> None:
    with pytest.raises(UnbranchableEnvError, match=r"Locked cannot be copied.*make_branch_env"):
        _model(make_vec_env("CartPole-v1", n_envs=1, wrapper_class=Locked))
    env = make_vec_env("CartPole-v1", n_envs=1, vec_env_cls=SubprocVecEnv, wrapper_class=lambda e: BranchableEnv(Locked(e)))
    try:  # in a SubprocVecEnv the copy is taken in the worker: its error comes back with the env, not as EOFError
        with pytest.raises(BranchWorkerError, match=r"CartPole.*Locked cannot be copied") as raised:
            _model(env)
        assert isinstance(raised.value.__cause__, UnbranchableEnvError)
    finally:
        env.close()


# ----------------------------------------------------------------------------- the first branch step


def _atari(env_id: str) -> Callable[[str], VecEnv]:
    def make(monitor_dir: str) -> VecEnv:
        env = make_vec_env(env_id, n_envs=2, seed=0, monitor_dir=monitor_dir, wrapper_class=AtariWrapper)
        return VecTransposeImage(VecFrameStack(env, 4))

    return make


def _plain(env_id: str, wrapper: Any = None, **kwargs: Any) -> Callable[[str], VecEnv]:
    def make(monitor_dir: str) -> VecEnv:
        return make_vec_env(env_id, n_envs=2, seed=0, monitor_dir=monitor_dir, wrapper_class=wrapper, **kwargs)

    return make


def _normalized(monitor_dir: str) -> VecEnv:
    return VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0, monitor_dir=monitor_dir), gamma=0.9)


def _stacked(monitor_dir: str) -> VecEnv:
    return VecFrameStack(make_vec_env("Acrobot-v1", n_envs=2, seed=0, monitor_dir=monitor_dir, wrapper_class=user_wrappers), 3)


FAMILIES: dict[str, tuple[Callable[[str], VecEnv], str]] = {
    "CartPole+user wrappers": (_plain("CartPole-v1", user_wrappers), "MlpPolicy"),
    "Pendulum+VecNormalize": (_normalized, "MlpPolicy"),
    "Acrobot+user wrappers+VecFrameStack": (_stacked, "MlpPolicy"),
    "MountainCar": (_plain("MountainCar-v0"), "MlpPolicy"),
    "LunarLander (replay)": (_plain("LunarLander-v3", user_wrappers), "MlpPolicy"),
    "BipedalWalker (replay)": (_plain("BipedalWalker-v3"), "MlpPolicy"),
    "Hopper": (_plain("Hopper-v5", PayThousand), "MlpPolicy"),
    "Breakout+AtariWrapper+VecFrameStack+VecTransposeImage": (_atari("BreakoutNoFrameskip-v4"), "CnnPolicy"),
    "Pong+AtariWrapper+VecFrameStack+VecTransposeImage": (_atari("PongNoFrameskip-v4"), "CnnPolicy"),
    "CartPole+user wrappers in a SubprocVecEnv": (
        _plain("CartPole-v1", branchable_user_wrappers, vec_env_cls=SubprocVecEnv),
        "MlpPolicy",
    ),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return all(np.array_equal(a[key], b[key]) for key in a)
    return np.array_equal(a, b)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_first_branch_step_is_the_trunks_next_step(family: str, tmp_path: Path) -> None:
    """
    From a snapshot of trunk environment i, a branch copy given the trunk's next action returns the
    trunk's next observation (through every VecEnv wrapper) and reward, bit for bit.
    """
    make, policy = FAMILIES[family]
    env = make(str(tmp_path))
    model = _model(env, policy)
    sampler = _sampler(model)
    try:
        env.action_space.seed(1)
        env.reset()
        for step in range(12):
            if isinstance(env, VecNormalize) and step == 11:
                env.training = False  # branches normalise with frozen statistics: freeze the trunk's compared step
            states = [sampler.snapshot(index) for index in range(env.num_envs)] if step >= 9 else None
            actions = np.stack([env.action_space.sample() for _ in range(env.num_envs)])
            observations, rewards, dones, infos = env.step(actions)
            if states is None:
                continue
            for index, state in enumerate(states):
                sampler.runner.restore(state)
                size = sampler.pool.size
                branch_obs, branch_rewards, terminated, truncated = sampler.runner.step(
                    np.stack([actions[index]] * size), np.ones(size, dtype=bool)
                )
                expected = infos[index]["terminal_observation"] if dones[index] else _row(observations, index)
                for k in range(size):
                    assert _same(branch_obs[k], expected), f"{family}: observation differs (env {index}, step {step})"
                    # VecEnvs keep rewards as float32
                    assert np.float32(branch_rewards[k]) == rewards[index], (
                        f"{family}: reward differs (env {index}, step {step})"
                    )
                    assert bool(terminated[k] or truncated[k]) == bool(dones[index])
    finally:
        sampler.close()
        env.close()


def _row(observations: Any, index: int) -> Any:
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


# ----------------------------------------------------------------------------- bootstrapping


class Countdown(gym.Env):
    """Rewards ``reward`` (0 by default) a step; the observation is the time; terminates at ``end`` (None: never)."""

    observation_space = gym.spaces.Box(0.0, 100.0, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, end: int | None = 5, reward: float = 0.0) -> None:
        self.end = end
        self.reward = reward
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.t], dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.array([self.t], dtype=np.float32), self.reward, self.end is not None and self.t >= self.end, False, {}

    def get_state(self) -> int:
        return self.t

    def set_state(self, state: int) -> None:
        self.t = state


def _countdown_model(end: int | None, limit: int, backend: str, horizon: int = 10) -> TRPOPlus:
    env = DummyVecEnv([lambda: gym.wrappers.TimeLimit(Countdown(end), max_episode_steps=limit)])
    model = _model(env, branch_vec_env=backend, horizon=horizon, n_states=16)
    with th.no_grad():  # V = 100 everywhere
        model.policy.value_net.weight.zero_()
        model.policy.value_net.bias.fill_(100.0)
    return model


def _q_by_time(model: TRPOPlus) -> tuple[np.ndarray, np.ndarray]:
    _collect(model)
    batch = model._vine_batch
    times = batch.observations[:, 0].cpu().numpy()
    q_values = batch.q_values.double().cpu().numpy()
    _sampler(model).close()
    return times, q_values


def test_bootstrapping_rule() -> None:
    terminated = np.array([True, True, False, False, False])
    truncated = np.array([True, False, True, False, False])
    cut = np.array([False, False, False, True, False])
    assert bootstraps(terminated, truncated, cut).tolist() == [False, False, True, True, False]


def test_truncated_and_cut_branches_bootstrap_v_of_the_state_they_stop_in() -> None:
    gamma = 0.99
    # never terminates, truncated at t = 5, branches cut at H = 3: gamma^min(5 - t, 3) V with V = 100
    times, q_values = _q_by_time(_countdown_model(end=None, limit=5, backend="dummy", horizon=3))
    assert np.allclose(q_values, gamma ** np.minimum(5 - times, 3) * 100.0, rtol=1e-6, atol=0), (times, q_values)


def test_terminal_states_are_never_bootstrapped_and_both_backends_agree() -> None:
    """
    Termination and truncation on the same step (t = 5): Q = 0 (all rewards 0), not gamma^L V =
    gamma^L 100, in-process and in subprocesses alike; branches cut at H = 3 before it: gamma^3 V.
    """
    results = [_q_by_time(_countdown_model(end=5, limit=5, backend=backend, horizon=3)) for backend in ("dummy", "subproc")]
    (times, dummy), (subproc_times, subproc) = results
    assert np.array_equal(times, subproc_times) and np.array_equal(dummy, subproc)
    assert set(times.tolist()) & {0.0, 1.0} and set(times.tolist()) & {2.0, 3.0, 4.0}  # both kinds of branch
    expected = np.where(times >= 2, 0.0, 0.99**3 * 100.0)
    assert np.allclose(dummy, expected, rtol=1e-6, atol=0), (times, dummy)


# ----------------------------------------------------------------------------- worker errors


class Exploding(Countdown):
    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.t >= 2:
            raise RuntimeError(f"boom at t={self.t}")
        return super().step(action)


def test_branch_worker_errors_name_the_env_and_the_original_exception() -> None:
    pool = SubprocBranchPool(lambda: Exploding(None), 1)
    try:
        pool.restore(pool_state(), None)
        with pytest.raises(
            BranchWorkerError, match=r"branch worker 0: step on .*Exploding raised RuntimeError\('boom at t=3'\)"
        ) as raised:
            pool.step(np.array([1]), np.ones(1, dtype=bool))
        assert isinstance(raised.value.__cause__, RuntimeError)
        assert "in step" in str(raised.value)  # the worker's traceback
    finally:
        pool.close()


def pool_state() -> Any:
    env = BranchableEnv(Exploding(None))
    env.reset(seed=0)
    env.unwrapped.t = 3  # type: ignore[attr-defined]
    return env.get_state()


class Dying(Countdown):
    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        os._exit(3)


def test_a_branch_worker_that_dies_is_named() -> None:
    pool = SubprocBranchPool(lambda: Dying(None), 1)
    try:
        assert pool.chain()[-1][0].endswith("Dying")
        with pytest.raises(BranchWorkerError, match=r"branch worker 0 \(.*Dying\) died without a message \(exit code 3\)"):
            pool.step(np.array([1]), np.ones(1, dtype=bool))
    finally:
        pool.close()
