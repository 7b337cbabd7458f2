"""TRPOPlus as an SB3 algorithm: spaces, policies, persistence, determinism, diagnostics, bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.critic import FusedMlpCritic, fit_critic_torch
from sb3_trpo_plus.sampling import NumpyActor, TorchActor

SMALL = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 2}
DESIGN_KEYS = [
    "train/kl",
    "train/surrogate_gain",
    "train/expected_gain",
    "train/line_search_steps",
    "train/line_search_success",
    "train/cg_residual",
    "train/value_loss",
    "train/explained_variance",
    "train/is_ess",
]


def _params(model: TRPOPlus) -> th.Tensor:
    return th.nn.utils.parameters_to_vector(model.policy.parameters()).detach().clone()


@pytest.mark.parametrize(
    "env",
    [IdentityEnv(4), IdentityEnvBox(), IdentityEnvMultiDiscrete(3), IdentityEnvMultiBinary(3)],
    ids=["discrete", "box", "multidiscrete", "multibinary"],
)
@pytest.mark.parametrize("fisher", ["analytic", "kl_hessian"])
def test_every_action_space_trains(env: gym.Env, fisher: str) -> None:
    model = TRPOPlus("MlpPolicy", env, seed=0, fisher=fisher, **SMALL)
    before = _params(model)
    model.learn(3 * SMALL["n_steps"])
    assert not th.equal(before, _params(model))
    assert model.n_rejected_steps < 3


@pytest.mark.parametrize(
    ("policy", "env_fn", "kwargs"),
    [
        ("CnnPolicy", lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1), {}),
        ("MultiInputPolicy", lambda: SimpleMultiObsEnv(random_start=True), {}),
        ("MlpPolicy", lambda: gym.make("Pendulum-v1"), {"use_sde": True, "sde_sample_freq": 4}),
        ("MlpPolicy", lambda: gym.make("CartPole-v1"), {"sub_sampling_factor": 2, "fvp_subsample": 0.3}),
        ("MlpPolicy", lambda: gym.make("CartPole-v1"), {"policy_kwargs": {"share_features_extractor": False}}),
    ],
    ids=["cnn", "multi_input", "gsde", "subsampling", "separate_extractors"],
)
def test_policies_and_options_train(policy: str, env_fn: Any, kwargs: dict[str, Any]) -> None:
    model = TRPOPlus(policy, env_fn(), seed=1, **SMALL, **kwargs)
    before = _params(model)
    model.learn(2 * SMALL["n_steps"])
    assert not th.equal(before, _params(model))
    obs = model.env.reset()  # type: ignore[union-attr]
    actions, _ = model.predict(obs, deterministic=True)
    assert model.env.action_space.contains(actions[0])  # type: ignore[union-attr]


def test_string_env_and_default_arguments_just_work() -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, n_steps=128)
    model.learn(256)
    assert model.num_timesteps == 256
    assert model.fisher == "analytic" and model.target_kl == 0.01 and model.cg_max_steps == 15


def test_save_load_round_trip_and_continued_training(tmp_path: Path) -> None:
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = TRPOPlus("MlpPolicy", env, seed=0, **SMALL)
    model.learn(2 * 128)
    model.save(tmp_path / "model")
    loaded = TRPOPlus.load(tmp_path / "model", env=env)
    obs = env.reset()
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert th.equal(_params(model), _params(loaded))
    assert loaded.fisher == model.fisher and loaded.fvp_subsample == model.fvp_subsample
    before = _params(loaded)
    loaded.learn(2 * 128, reset_num_timesteps=False)
    assert loaded.num_timesteps == 4 * 128
    assert not th.equal(before, _params(loaded))
    loaded.set_env(make_vec_env("Pendulum-v1", n_envs=2, seed=3))
    loaded.learn(128)


def test_same_seed_same_parameters_after_two_iterations() -> None:
    def run() -> th.Tensor:
        model = TRPOPlus("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=7), seed=7, **SMALL)
        model.learn(2 * 2 * SMALL["n_steps"])
        return _params(model)

    assert th.equal(run(), run())


class CountingCallback(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.rollouts = 0
        self.seen: set[str] = set()
        self.values: dict[str, float] = {}

    def _on_step(self) -> bool:
        self.steps += 1
        self.seen |= set(self.locals)
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        self.values.update(self.model.logger.name_to_value)


def test_callbacks_progress_bar_tensorboard_and_logged_keys(tmp_path: Path) -> None:
    callback = CountingCallback()
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, tensorboard_log=str(tmp_path), **SMALL)
    model.learn(3 * SMALL["n_steps"], callback=callback, progress_bar=True)
    assert callback.steps == 3 * SMALL["n_steps"]
    assert callback.rollouts == 3
    # the locals SB3 callbacks rely on
    assert {"infos", "dones", "rewards", "new_obs", "actions", "values", "log_probs", "obs_tensor"} <= callback.seen
    assert all(key in callback.values for key in DESIGN_KEYS)
    assert list(tmp_path.glob("TRPOPlus_1/events.out.tfevents.*"))


class SharedExtractor(BaseFeaturesExtractor):
    """A learned extractor shared by actor and critic."""

    def __init__(self, observation_space: gym.spaces.Box) -> None:
        super().__init__(observation_space, features_dim=8)
        self.value_like_name = th.nn.Linear(int(np.prod(observation_space.shape)), 8)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return th.tanh(self.value_like_name(observations))


def test_critic_never_moves_what_the_policy_depends_on() -> None:
    model = TRPOPlus(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        policy_kwargs={"features_extractor_class": SharedExtractor, "share_features_extractor": True},
        **SMALL,
    )
    actor_ids = {id(p) for p in model._actor_params}
    # found by dependence, not by name: the shared extractor's weight has "value" in its name
    assert id(model.policy.features_extractor.value_like_name.weight) in actor_ids
    assert id(model.policy.value_net.weight) not in actor_ids
    model.learn(SMALL["n_steps"])
    # one more critic fit on the collected batch leaves every actor parameter untouched
    actor_before = [p.detach().clone() for p in model._actor_params]
    critic_before = model.policy.value_net.weight.detach().clone()
    model._fit_critic()
    assert all(th.equal(a, p) for a, p in zip(actor_before, model._actor_params, strict=True))
    assert not th.equal(critic_before, model.policy.value_net.weight)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_kl": 0.0}, "target_kl"),
        ({"target_kl": -1.0}, "target_kl"),
        ({"cg_max_steps": 0}, "cg_max_steps"),
        ({"cg_damping": -0.1}, "cg_damping"),
        ({"line_search_shrinking_factor": 1.0}, "line_search_shrinking_factor"),
        ({"line_search_shrinking_factor": 0.0}, "line_search_shrinking_factor"),
        ({"line_search_max_iter": 0}, "line_search_max_iter"),
        ({"fvp_subsample": 0.0}, "fvp_subsample"),
        ({"fvp_subsample": 1.5}, "fvp_subsample"),
        ({"fisher": "exact"}, "fisher"),
        ({"sampling": "tree"}, "sampling"),
        ({"q": "boltzmann"}, "q"),
        ({"q": "uniform"}, "q"),
        ({"vine_kwargs": {"n_states": 4}}, "vine_kwargs"),
        ({"n_steps": 0}, "n_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": -0.1}, "gae_lambda"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"sub_sampling_factor": 0}, "sub_sampling_factor"),
        ({"n_critic_updates": -1}, "n_critic_updates"),
        ({"n_steps": 1}, "n_steps"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(kwargs: dict[str, Any], name: str) -> None:
    env = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    stepped = []
    original = env.step_async
    env.step_async = lambda actions: stepped.append(actions) or original(actions)  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=name):
        TRPOPlus("MlpPolicy", env, **kwargs)
    assert not stepped


class NanAdvantages(BaseCallback):
    """Poison the batch after it is collected, as a diverged value function would."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.model.rollout_buffer.advantages[0] = math.nan


def test_a_non_finite_batch_is_rejected_and_leaves_the_policy_unchanged() -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, verbose=0, **SMALL)
    model.learn(SMALL["n_steps"])
    actor_before = [p.detach().clone() for p in model._actor_params]
    callback = CountingCallback()
    model.learn(SMALL["n_steps"], callback=[NanAdvantages(), callback], reset_num_timesteps=False)
    assert all(th.equal(a, p) for a, p in zip(actor_before, model._actor_params, strict=True))
    assert model.n_rejected_steps == 1
    assert model.logger.name_to_value.get("train/rejected_steps", 1) == 1


def test_numpy_actor_reproduces_the_policy_and_its_random_stream() -> None:
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        model = TRPOPlus("MlpPolicy", env_id, seed=0, **SMALL)
        actor = NumpyActor.from_policy(model.policy)
        assert actor is not None
        obs = np.random.default_rng(0).normal(size=(5, *model.observation_space.shape)).astype(np.float32)
        th.manual_seed(3)
        fast = actor.act(obs)
        th.manual_seed(3)
        slow = TorchActor(model.policy).act(obs, th.as_tensor(obs))
        assert np.allclose(fast[0], slow[0], atol=1e-5)
        assert th.allclose(fast[1], slow[1], atol=1e-5) and th.allclose(fast[2], slow[2], atol=1e-4)


def test_fused_critic_matches_the_autograd_critic() -> None:
    model = TRPOPlus("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), seed=0, **SMALL)
    model.learn(2 * SMALL["n_steps"])
    twin = copy.deepcopy(model.policy)
    actor_ids = {id(p) for p in model._actor_params}
    actor_names = [name for name, p in model.policy.named_parameters() if id(p) in actor_ids]
    assert "value_net.weight" not in actor_names and "action_net.weight" in actor_names
    model.rollout_buffer.get(None).__next__()  # flatten, as train() does
    np.random.seed(5)
    fused = FusedMlpCritic.from_policy(model.policy)
    assert fused is not None
    fused_losses = fused.fit(model.rollout_buffer.observations, model.rollout_buffer.returns, 3, 32)
    model_fused = _params(model)
    model.policy = twin
    np.random.seed(5)
    twin_params = dict(twin.named_parameters())
    actor = [twin_params[name] for name in actor_names]
    torch_losses = fit_critic_torch(twin, model.rollout_buffer, 3, 32, actor)
    assert np.allclose(fused_losses, torch_losses, rtol=1e-4)
    assert th.allclose(model_fused, _params(model), atol=1e-5)
    # the optimizer state carries over exactly as torch's Adam keeps it
    assert float(twin.optimizer.state[twin.value_net.weight]["step"]) == len(torch_losses) + 2 * 2 * 2


def test_custom_policy_class_is_accepted() -> None:
    model = TRPOPlus(ActorCriticPolicy, "CartPole-v1", seed=0, **SMALL)
    model.learn(SMALL["n_steps"])
