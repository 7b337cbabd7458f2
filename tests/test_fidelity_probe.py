"""
Vine's run-time fidelity probe (issue 27): a branch copy restored to a trunk state must reproduce
the trunk's next step, and a replayed episode every observation the trunk saw; otherwise
BranchFidelityError (or a warning) before the branches' Q-values reach a step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.envs.classic_control import CartPoleEnv
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecFrameStack, VecNormalize, VecTransposeImage

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.env_state import BranchableEnv, BranchFidelityError, register_replay_env
from sb3_trpo_plus.noisy_envs import register_noisy_envs
from sb3_trpo_plus.settings import VineSettings
from sb3_trpo_plus.vine.probe import FidelityProbe
from sb3_trpo_plus.vine.trunk import branch_env_factory, make_trunk_branchable

gym.register_envs(ale_py)
register_noisy_envs()

SMALL_VINE = {"n_states": 2, "n_actions": 2, "horizon": 4, "fidelity_probe": 1}


class NoisyCP(CartPoleEnv):
    """The issue's example: dynamics drawn from NumPy's global generator, registered as a replay env."""

    def step(self, action: Any) -> Any:
        self.force_mag = 10.0 + 5.0 * np.random.randn()
        return super().step(action)


register_replay_env(NoisyCP)


class ForgetfulCounter(gym.Env):
    """A walk whose get_state() omits its step counter, which the observation and the reward show."""

    observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.position, self.count = 0.0, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.position, self.count], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.position, self.count = 0.0, 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.count += 1
        self.position += float(action) - 0.5
        return self._obs(), 0.1 * self.count, self.count >= 30, False, {}

    def get_state(self) -> float:
        return self.position  # the counter is missing

    def set_state(self, state: float) -> None:
        self.position = state


def _noisy_cp() -> VecEnv:
    return make_vec_env(lambda: gym.wrappers.TimeLimit(NoisyCP(), 500), n_envs=1)


def test_the_issue_example_is_caught_before_the_first_step() -> None:
    model = TRPOPlus("MlpPolicy", _noisy_cp(), n_steps=64, sampling="vine", seed=0, vine_kwargs={"horizon": 4})
    with pytest.raises(BranchFidelityError) as caught:
        model.learn(128)
    message = str(caught.value)
    assert "NoisyCP" in message and "iteration 1" in message and "np.random" in message
    assert "replay" in message  # the replayed episode left the trunk's trajectory: the step is named
    assert model._n_updates == 0  # raised before any policy step


def test_a_get_state_that_omits_a_counter_is_caught() -> None:
    env = make_vec_env(ForgetfulCounter, n_envs=1)
    model = TRPOPlus("MlpPolicy", env, n_steps=32, sampling="vine", seed=0, vine_kwargs=SMALL_VINE)
    with pytest.raises(BranchFidelityError, match=r"ForgetfulCounter.*observation\[1\]"):
        model.learn(64)
    assert model._n_updates == 0


def test_warn_logs_the_difference_and_training_goes_on() -> None:
    kwargs = {"horizon": 4, "fidelity_probe_action": "warn"}
    model = TRPOPlus("MlpPolicy", _noisy_cp(), n_steps=64, sampling="vine", seed=0, vine_kwargs=kwargs)
    with pytest.warns(UserWarning, match="fidelity probe.*NoisyCP"):
        model.learn(128)
    assert model._n_updates == 2
    assert model._vine is not None
    stats = model._vine.stats
    assert stats["branch_probe_count"] == 1.0  # the first iteration (default rate: every 10th)
    assert stats["branch_probe_max_diff"] > 0.0


def test_default_probe_runs_at_the_first_iteration_and_logs() -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", n_steps=64, sampling="vine", seed=0, vine_kwargs={"horizon": 4})
    recorded: dict[str, Any] = {}

    class Capture(KVWriter):
        def write(self, key_values: dict[str, Any], key_excluded: Any, step: int = 0) -> None:
            recorded.update(key_values)

    model.set_logger(Logger(None, [Capture()]))
    model.learn(64 * 3)
    assert model._vine is not None and model._vine.probe.count == 1
    assert recorded["rollout/branch_probe_count"] == 1.0 and recorded["rollout/branch_probe_max_diff"] == 0.0


def _probe_every_step(env: VecEnv, steps: int) -> FidelityProbe:
    """Probe every trunk step of a random walk (environments in turn): a terminal step included."""
    make_trunk_branchable(env)
    probe = FidelityProbe(1, "raise", env, branch_env_factory(env, None), seed=0)
    env.seed(0)
    env.action_space.seed(0)
    env.reset()
    ends = 0
    for step in range(steps):
        probe.planned = (step, step % env.num_envs)
        probe.before_step(step)
        _, _, dones, _ = env.step(np.array([env.action_space.sample() for _ in range(env.num_envs)]))
        ends += int(dones[step % env.num_envs])
        probe.check()
    assert probe.count == steps
    probe.close()
    env.close()
    return probe


def _atari() -> VecEnv:
    return VecTransposeImage(VecFrameStack(make_vec_env("BreakoutNoFrameskip-v4", 2, seed=0, wrapper_class=AtariWrapper), 4))


SHIPPED: dict[str, tuple[Callable[[], VecEnv], int]] = {
    "CartPole": (lambda: make_vec_env("CartPole-v1", 2, seed=0), 80),
    "Acrobot": (lambda: make_vec_env("Acrobot-v1", 2, seed=0), 40),
    "Pendulum+VecNormalize": (lambda: VecNormalize(make_vec_env("Pendulum-v1", 2, seed=0)), 40),
    "CartPole+VecFrameStack": (lambda: VecFrameStack(make_vec_env("CartPole-v1", 2, seed=0), 3), 60),
    "Hopper (MuJoCo)": (lambda: make_vec_env("Hopper-v5", 2, seed=0), 80),
    "LunarLander (Box2D replay)": (lambda: make_vec_env("LunarLander-v3", 1, seed=0), 120),
    "Breakout+AtariWrapper+VecFrameStack+VecTransposeImage": (_atari, 30),
    "NoisyCartPole": (lambda: make_vec_env("NoisyCartPole-v1", 2, seed=0), 60),
    "NoisyAcrobot": (lambda: make_vec_env("NoisyAcrobot-v1", 2, seed=0), 30),
    "NoisyPendulum": (lambda: make_vec_env("NoisyPendulum-v1", 2, seed=0), 30),
    "NoisyHopper": (lambda: make_vec_env("NoisyHopper-v5", 2, seed=0), 60),
    "CartPole in a SubprocVecEnv": (
        lambda: make_vec_env("CartPole-v1", 1, seed=0, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv),
        30,
    ),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_adapter_passes_the_probe(name: str) -> None:
    make, steps = SHIPPED[name]
    probe = _probe_every_step(make(), steps)
    assert probe.max_diff == 0.0 and probe.mismatches == 0


def test_a_replayed_episode_is_compared_observation_by_observation() -> None:
    env = make_vec_env("LunarLander-v3", 1, seed=0)
    make_trunk_branchable(env)
    probe = FidelityProbe(1, "raise", env, branch_env_factory(env, None), seed=0)
    env.reset()
    for step in range(12):
        if step == 10:
            probe.planned = (step, 0)
            probe.before_step(step)
        env.step(np.array([step % 4]))
    record = env.envs[0].probe_record()  # type: ignore[attr-defined]
    assert record is not None and record.observations is not None and len(record.observations) == 11
    record.observations[4] = record.observations[4] + 1e-3  # as if the trunk had seen another observation there
    difference, problem = probe._run(record)
    assert difference == pytest.approx(1e-3, rel=1e-3) and "step 4" in problem


@pytest.mark.parametrize(
    ("key", "value"),
    [("fidelity_probe", -1), ("fidelity_probe", 1.5), ("fidelity_probe", True), ("fidelity_probe_action", "ignore")],
)
def test_bad_probe_settings_are_refused_by_name(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"vine_kwargs\\['{key}'\\]"):
        VineSettings.from_kwargs({key: value})


def test_probe_off_arms_nothing() -> None:
    model = TRPOPlus(
        "MlpPolicy", _noisy_cp(), n_steps=64, sampling="vine", seed=0, vine_kwargs={"horizon": 4, "fidelity_probe": 0}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(128)  # the global generator goes unnoticed: the probe is off
    assert not [warning for warning in caught if "fidelity probe" in str(warning.message)]
    assert model._vine is not None and model._vine.probe.count == 0 and "branch_probe_count" not in model._vine.stats
