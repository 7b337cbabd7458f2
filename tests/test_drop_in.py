"""
TRPOPlus is a drop-in for sb3-contrib's TRPO: from the same seed it consumes the same random
numbers and touches nothing of the user's that TRPO would not (issue 8). SB3's identity and
fake-image environments draw their states from their own observation space, so a library that
samples the user's space to probe the policy trains on other data than TRPO does.
"""

from __future__ import annotations

import random
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib import TRPO
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.actor_parameters import probe_observation


class SpaceSampledDictEnv(gym.Env):
    """Dict observations drawn from the observation space's own generator, as the identity envs do."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict(
            {"vec": gym.spaces.Box(-1.0, 1.0, (3,)), "disc": gym.spaces.Discrete(3), "bits": gym.spaces.MultiBinary(2)}
        )
        self.action_space = gym.spaces.Discrete(3)
        self.state: Any = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        if seed is not None:
            super().reset(seed=seed)
            self.observation_space.seed(seed)
        self.state = self.observation_space.sample()
        return self.state, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        reward = float(int(action) == int(self.state["disc"]))
        self.state = self.observation_space.sample()
        return self.state, reward, False, False, {}


class Recorder(VecEnvWrapper):
    """Keeps a copy of every observation the algorithm is given."""

    def __init__(self, venv: Any) -> None:
        super().__init__(venv)
        self.seen: list[Any] = []

    def _keep(self, obs: Any) -> None:
        self.seen.append({k: v.copy() for k, v in obs.items()} if isinstance(obs, dict) else obs.copy())

    def reset(self) -> Any:
        obs = self.venv.reset()
        self._keep(obs)
        return obs

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        self._keep(obs)
        return obs, rewards, dones, infos


ENVS = {
    "discrete": lambda: IdentityEnv(4),
    "multidiscrete": lambda: IdentityEnvMultiDiscrete(4),
    "multibinary": lambda: IdentityEnvMultiBinary(4),
    "box": lambda: IdentityEnvBox(ep_length=50),
    "dict": SpaceSampledDictEnv,
    "dict_sb3": lambda: SimpleMultiObsEnv(random_start=True),
    "image": lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1),
}
POLICIES = {"dict": "MultiInputPolicy", "dict_sb3": "MultiInputPolicy", "image": "CnnPolicy"}
SMALL_NETS = {
    "dict_sb3": {"features_extractor_kwargs": {"cnn_output_dim": 8}, "net_arch": [16]},
    "image": {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [16]},
}


def _space_generators(space: gym.spaces.Space) -> list[str]:
    if isinstance(space, gym.spaces.Dict):
        return [state for subspace in space.spaces.values() for state in _space_generators(subspace)]
    return [repr(space.np_random.bit_generator.state)]


def _generators(env: gym.Env) -> tuple:
    """The state of every generator a run may draw from: the env's spaces, NumPy's, torch's, Python's."""
    return (
        _space_generators(env.observation_space),
        _space_generators(env.action_space),
        repr(np.random.get_state()),
        th.get_rng_state().clone(),
        random.getstate(),
    )


def _run(cls: Any, name: str, timesteps: int) -> tuple[tuple[tuple, tuple], list[Any]]:
    env = ENVS[name]()
    env.observation_space.seed(7)  # seeded generators, whose state can be compared between runs
    venv = Recorder(DummyVecEnv([lambda: env]))
    kwargs: dict[str, Any] = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 2, "seed": 3}
    if name in SMALL_NETS:
        kwargs["policy_kwargs"] = SMALL_NETS[name]
    model = cls(POLICIES.get(name, "MlpPolicy"), venv, **kwargs)
    after_construction = _generators(env)
    model.learn(timesteps)
    return (after_construction, _generators(env)), venv.seen


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, th.Tensor):
        return th.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("name", sorted(ENVS))
def test_same_seed_same_observations_as_sb3_contrib(name: str) -> None:
    # construction leaves every generator (the user's spaces included) where TRPO leaves it ...
    reference_generators, reference = _run(TRPO, name, 128)
    generators, seen = _run(TRPOPlus, name, 128)
    for when, ours_then, theirs_then in zip(("construction", "learn"), generators, reference_generators, strict=True):
        for index, (ours, theirs) in enumerate(zip(ours_then, theirs_then, strict=True)):
            assert _same(ours, theirs), f"generator {index} differs after {when}"
    # ... learning draws as many numbers from each, and two iterations see the same observations
    assert len(seen) == len(reference) == 129
    for ours, theirs in zip(seen, reference, strict=True):
        if isinstance(ours, dict):
            assert all(np.array_equal(ours[key], theirs[key]) for key in ours)
        else:
            assert np.array_equal(ours, theirs)


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Box(1.0, 2.0, (3,)),
        gym.spaces.Box(-np.inf, -1.0, (2,)),
        gym.spaces.Box(0, 255, (1, 8, 8), np.uint8),
        gym.spaces.Discrete(3, start=2),
        gym.spaces.MultiDiscrete([3, 4], start=[1, -1]),
        gym.spaces.MultiBinary(4),
        gym.spaces.Dict({"a": gym.spaces.Discrete(2), "b": gym.spaces.Box(-1.0, 1.0, (2,))}),
    ],
)
def test_probe_observation_is_valid_and_draws_nothing(space: gym.spaces.Space) -> None:
    space.seed(0)
    before = repr(space.np_random.bit_generator.state)
    global_before = repr(np.random.get_state())
    assert space.contains(probe_observation(space))
    assert repr(space.np_random.bit_generator.state) == before
    assert repr(np.random.get_state()) == global_before
