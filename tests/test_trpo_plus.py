"""TRPOPlus as an SB3 algorithm: spaces, policies, persistence, determinism, diagnostics, bad input."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import flat
from design_keys import DESIGN_KEYS
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
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.critic import ValueTargets, fit_critic_torch
from sb3_trpo_plus.fast import FusedMlpCritic, NumpyActor
from sb3_trpo_plus.sampling import TorchActor

SMALL = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 2}
TINY_CNN = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [16]}
TINY_MULTI = {"features_extractor_kwargs": {"cnn_output_dim": 8}, "net_arch": [16]}


def _params(model: TRPOPlus) -> th.Tensor:
    return flat(model.policy.parameters())


def _actor(model: TRPOPlus) -> th.Tensor:
    return flat(model._actor_params)


class LogCapture(BaseCallback):
    """Keeps the values logged by every train() (read when the next rollout ends) and at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.rollouts = 0
        self.seen: set[str] = set()
        self.logged: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        self.steps += 1
        self.seen |= set(self.locals)
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        if any(key.startswith("train/") for key in self.model.logger.name_to_value):
            self.logged.append(dict(self.model.logger.name_to_value))

    def _on_training_end(self) -> None:
        # the last train() has not been dumped yet
        self.logged.append(dict(self.model.logger.name_to_value))


# ----------------------------------------------------------------------------- spaces, policies, options


@pytest.mark.parametrize(
    "env_fn",
    [lambda: IdentityEnv(4), IdentityEnvBox, lambda: IdentityEnvMultiDiscrete(3), lambda: IdentityEnvMultiBinary(3)],
    ids=["discrete", "box", "multidiscrete", "multibinary"],
)
@pytest.mark.parametrize("fisher", ["analytic", "kl_hessian"])
def test_every_action_space_trains(env_fn: Any, fisher: str) -> None:
    model = TRPOPlus("MlpPolicy", env_fn(), seed=0, fisher=fisher, **SMALL)
    before = _actor(model)
    capture = LogCapture()
    model.learn(3 * SMALL["n_steps"], callback=capture)
    assert model.num_timesteps == 3 * SMALL["n_steps"]
    assert not th.equal(before, _actor(model)), "no trust-region step was accepted"
    assert all(log["train/kl"] <= model.target_kl for log in capture.logged)
    obs = model.env.reset()  # type: ignore[union-attr]
    action, _ = model.predict(obs, deterministic=True)
    assert model.action_space.contains(action[0])


@pytest.mark.parametrize(
    ("policy", "env_fn", "kwargs"),
    [
        ("CnnPolicy", lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1), {"policy_kwargs": TINY_CNN}),
        ("MultiInputPolicy", lambda: SimpleMultiObsEnv(random_start=True), {"policy_kwargs": TINY_MULTI}),
        ("MlpPolicy", lambda: gym.make("Pendulum-v1"), {"use_sde": True, "sde_sample_freq": 4}),
        ("MlpPolicy", lambda: gym.make("Pendulum-v1"), {"use_sde": True, "fisher": "kl_hessian"}),
        ("MlpPolicy", lambda: gym.make("CartPole-v1"), {"sub_sampling_factor": 3}),
        ("MlpPolicy", lambda: gym.make("CartPole-v1"), {"fvp_subsample": 0.25}),
        (
            "MlpPolicy",
            lambda: gym.make("Pendulum-v1"),
            {"fvp_subsample": 0.1, "fisher": "kl_hessian", "sub_sampling_factor": 2},
        ),
        (
            "MultiInputPolicy",
            lambda: SimpleMultiObsEnv(),
            {"policy_kwargs": TINY_MULTI, "sub_sampling_factor": 2, "fvp_subsample": 0.5},
        ),
        ("MlpPolicy", lambda: gym.make("CartPole-v1"), {"policy_kwargs": {"share_features_extractor": False}}),
        ("MlpPolicy", lambda: gym.make("CartPole-v1"), {"normalize_advantage": False, "n_critic_updates": 0}),
    ],
    ids=[
        "cnn",
        "multi_input",
        "gsde",
        "gsde_kl_hessian",
        "sub_sampling",
        "fvp_subsample",
        "fvp_subsample_kl_hessian_sub_sampling",
        "multi_input_subsampled",
        "separate_extractors",
        "no_normalisation_no_critic",
    ],
)
def test_policies_and_options_train(policy: str, env_fn: Any, kwargs: dict[str, Any]) -> None:
    model = TRPOPlus(policy, env_fn(), seed=1, **{**SMALL, **kwargs})
    before = _actor(model)
    capture = LogCapture()
    model.learn(2 * SMALL["n_steps"], callback=capture)
    assert not th.equal(before, _actor(model)), "no trust-region step was accepted"
    assert all(log["train/kl"] <= model.target_kl for log in capture.logged)
    obs = model.env.reset()  # type: ignore[union-attr]
    actions, _ = model.predict(obs, deterministic=True)
    assert model.env.action_space.contains(actions[0])  # type: ignore[union-attr]


def test_string_env_and_default_arguments_just_work() -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, n_steps=128)
    model.learn(256)
    assert model.num_timesteps == 256
    assert model.fisher == "analytic" and model.target_kl == 0.01 and model.cg_max_steps == 15
    assert model.sampling == "single_path" and model.q == "policy"


class ScaledActionPolicy(ActorCriticPolicy):
    """A custom policy: the action logits are scaled by a learned gain whose name contains "value"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.value_gain = th.nn.Parameter(th.tensor(3.0))

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Any:
        return self.action_dist.proba_distribution(action_logits=self.action_net(latent_pi) * self.value_gain)


class RolloutCheck(BaseCallback):
    """At the end of a rollout, the stored log pi_old(a|s) and V(s) must be the policy's own."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        obs = th.as_tensor(buffer.observations.reshape(-1, *self.model.observation_space.shape))
        actions = th.as_tensor(buffer.actions.reshape(-1, *buffer.actions.shape[2:]))
        if isinstance(self.model.action_space, gym.spaces.Discrete):
            actions = actions.long().flatten()
        elif isinstance(self.model.action_space, gym.spaces.MultiBinary):
            actions = actions.float()
        with th.no_grad():
            values, log_prob, _ = self.model.policy.evaluate_actions(obs, actions)
        self.log_prob_error = float((log_prob - th.as_tensor(buffer.log_probs.reshape(-1))).abs().max())
        self.value_error = float((values.flatten() - th.as_tensor(buffer.values.reshape(-1))).abs().max())


@pytest.mark.parametrize(
    ("policy", "env_fn", "kwargs"),
    [
        ("MlpPolicy", lambda: gym.make("CartPole-v1"), {}),
        ("MlpPolicy", lambda: gym.make("Pendulum-v1"), {}),
        ("MlpPolicy", lambda: gym.make("Pendulum-v1"), {"use_sde": True, "sde_sample_freq": 8}),
        ("MlpPolicy", lambda: IdentityEnvMultiDiscrete(3), {}),
        ("MlpPolicy", lambda: IdentityEnvMultiBinary(3), {}),
        (ScaledActionPolicy, lambda: gym.make("CartPole-v1"), {}),
    ],
    ids=["discrete", "box", "gsde", "multidiscrete", "multibinary", "custom_policy"],
)
def test_rollouts_are_sampled_from_the_policy(policy: Any, env_fn: Any, kwargs: dict[str, Any]) -> None:
    # the importance weights pi_theta / q are only right if the stored log q(a|s) is the policy's
    model = TRPOPlus(policy, make_vec_env(env_fn, n_envs=2, seed=0), seed=0, **{**SMALL, **kwargs})
    check = RolloutCheck()
    model.learn(2 * SMALL["n_steps"], callback=check)
    assert check.log_prob_error < 1e-4
    assert check.value_error < 1e-4


# ----------------------------------------------------------------------------- persistence and determinism


def test_save_load_round_trip_and_continued_training(tmp_path: Path) -> None:
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = TRPOPlus("MlpPolicy", env, seed=0, fisher="kl_hessian", fvp_subsample=0.5, target_kl=0.02, **SMALL)
    model.learn(2 * 128)
    model.save(tmp_path / "model")
    loaded = TRPOPlus.load(tmp_path / "model", env=env)
    obs = env.reset()
    assert th.equal(_params(model), _params(loaded))
    # exactly: the trust-region step writes into each parameter's own storage (see
    # test_an_accepted_step_keeps_each_parameter_in_its_own_storage), so the loaded copy computes
    # with the same memory layout and the same rounding
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    for name in ("fisher", "fvp_subsample", "target_kl", "cg_max_steps", "n_rejected_steps", "num_timesteps", "_n_updates"):
        assert getattr(loaded, name) == getattr(model, name), name
    # the actor parameters are those of the loaded policy, found again by dependence
    policy_ids = {id(p) for p in loaded.policy.parameters()}
    assert [id(p) for p in loaded._actor_params] and all(id(p) in policy_ids for p in loaded._actor_params)
    assert len(loaded._actor_params) == len(model._actor_params)
    actor_before = _actor(loaded)
    loaded.learn(2 * 128, reset_num_timesteps=False)
    assert loaded.num_timesteps == 4 * 128 and loaded._n_updates == 4
    assert not th.equal(actor_before, _actor(loaded))


def test_set_env_trains_on_the_new_environment() -> None:
    model = TRPOPlus("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), seed=0, **SMALL)
    model.learn(2 * SMALL["n_steps"])
    new_env = make_vec_env("CartPole-v1", n_envs=2, seed=3)
    model.set_env(new_env)
    assert model.get_env() is new_env
    before = _actor(model)
    capture = LogCapture()
    model.learn(2 * SMALL["n_steps"], callback=capture)
    assert capture.steps == SMALL["n_steps"]
    assert not th.equal(before, _actor(model))
    with pytest.raises(ValueError, match="space"):
        model.set_env(make_vec_env("Pendulum-v1", n_envs=2))


def _run(seed: int, env_id: str = "CartPole-v1", **kwargs: Any) -> th.Tensor:
    model = TRPOPlus("MlpPolicy", make_vec_env(env_id, n_envs=2, seed=seed), seed=seed, **{**SMALL, **kwargs})
    model.learn(2 * 2 * SMALL["n_steps"])
    return _params(model)


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [("CartPole-v1", {}), ("Pendulum-v1", {"use_sde": True, "fvp_subsample": 0.5})],
    ids=["cartpole", "pendulum_gsde_fvp_subsample"],
)
def test_same_seed_same_parameters_after_two_iterations(env_id: str, kwargs: dict[str, Any]) -> None:
    first = _run(7, env_id, **kwargs)
    assert th.equal(first, _run(7, env_id, **kwargs))
    assert not th.equal(first, _run(8, env_id, **kwargs))


# ----------------------------------------------------------------------------- callbacks, logging


def test_callbacks_progress_bar_tensorboard_and_logged_keys(tmp_path: Path) -> None:
    capture = LogCapture()
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, tensorboard_log=str(tmp_path), **SMALL)
    model.learn(3 * SMALL["n_steps"], callback=capture, progress_bar=True)
    assert capture.steps == 3 * SMALL["n_steps"]
    assert capture.rollouts == 3
    # the locals SB3 callbacks rely on
    assert {"infos", "dones", "rewards", "new_obs", "actions", "values", "log_probs", "obs_tensor"} <= capture.seen
    assert len(capture.logged) == 3
    for logged in capture.logged:
        missing = [key for key in DESIGN_KEYS if key not in logged]
        assert not missing, missing
        assert logged["train/line_search_success"] in (0.0, 1.0)
        assert 0.0 < logged["train/is_ess"] <= 1.0 + 1e-6
        assert all(math.isfinite(logged[key]) for key in DESIGN_KEYS)
        if logged["train/line_search_success"] == 1.0:
            assert 0.0 < logged["train/kl"] <= model.target_kl
            assert logged["train/surrogate_gain"] > 0 and logged["train/expected_gain"] > 0
            assert 1 <= logged["train/line_search_steps"] <= model.line_search_max_iter
            assert logged["train/cg_residual"] >= 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = tmp_path.glob("TRPOPlus_1")
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(DESIGN_KEYS) <= tags
    assert "rollout/ep_len_mean" in tags
    assert len(events.Scalars("train/kl")) >= 2


def test_logged_keys_reach_a_csv_logger(tmp_path: Path) -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(3 * SMALL["n_steps"])
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert set(DESIGN_KEYS) <= set(header)


# ----------------------------------------------------------------------------- actor and critic


class SharedExtractor(BaseFeaturesExtractor):
    """A learned extractor shared by actor and critic, its weight named like a value-function part."""

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
    assert id(model.policy.action_net.weight) in actor_ids
    assert id(model.policy.value_net.weight) not in actor_ids
    assert not any(id(p) in actor_ids for p in model.policy.mlp_extractor.value_net.parameters())
    shared_before = model.policy.features_extractor.value_like_name.weight.detach().clone()
    model.learn(2 * SMALL["n_steps"])
    # the policy step does move the shared extractor
    assert not th.equal(shared_before, model.policy.features_extractor.value_like_name.weight)
    # one more critic fit on the collected batch leaves every actor parameter untouched
    actor_before = [p.detach().clone() for p in model._actor_params]
    critic_before = model.policy.value_net.weight.detach().clone()
    model._fit_critic(ValueTargets.from_buffer(model.rollout_buffer))
    assert all(th.equal(a, p) for a, p in zip(actor_before, model._actor_params, strict=True))
    assert not th.equal(critic_before, model.policy.value_net.weight)


def test_an_actor_parameter_named_value_is_found_and_trained() -> None:
    # sb3-contrib's TRPO skips every parameter with "value" in its name; TRPOPlus follows the graph
    model = TRPOPlus(ScaledActionPolicy, "CartPole-v1", seed=0, **SMALL)
    assert any(p is model.policy.value_gain for p in model._actor_params)
    assert not any(p is model.policy.value_net.weight for p in model._actor_params)
    gain = float(model.policy.value_gain)
    model.learn(2 * SMALL["n_steps"])
    assert float(model.policy.value_gain) != gain
    actor_before = _actor(model)
    model._fit_critic(ValueTargets.from_buffer(model.rollout_buffer))
    assert th.equal(actor_before, _actor(model))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_kl": 0.0}, "target_kl"),
        ({"target_kl": -1.0}, "target_kl"),
        ({"target_kl": math.inf}, "target_kl"),
        ({"target_kl": math.nan}, "target_kl"),
        ({"cg_max_steps": 0}, "cg_max_steps"),
        ({"cg_max_steps": 2.5}, "cg_max_steps"),
        ({"cg_damping": -0.1}, "cg_damping"),
        ({"cg_damping": math.nan}, "cg_damping"),
        ({"line_search_shrinking_factor": 1.0}, "line_search_shrinking_factor"),
        ({"line_search_shrinking_factor": 0.0}, "line_search_shrinking_factor"),
        ({"line_search_shrinking_factor": 1.5}, "line_search_shrinking_factor"),
        ({"line_search_max_iter": 0}, "line_search_max_iter"),
        ({"fvp_subsample": 0.0}, "fvp_subsample"),
        ({"fvp_subsample": -0.5}, "fvp_subsample"),
        ({"fvp_subsample": 1.5}, "fvp_subsample"),
        ({"fvp_subsample": math.nan}, "fvp_subsample"),
        ({"fisher": "exact"}, "fisher"),
        ({"fisher": None}, "fisher"),
        ({"sampling": "tree"}, "sampling"),
        ({"q": "boltzmann"}, "q"),
        ({"q": "uniform"}, "q"),
        ({"q": "mixture", "q_kwargs": {"eps": 0.1}}, "q"),
        ({"q_kwargs": {"eps": 0.1}}, "q_kwargs"),
        ({"vine_kwargs": {"n_states": 4}}, "vine_kwargs"),
        ({"sampling": "vine", "vine_kwargs": {"bogus": 1}}, "vine_kwargs"),
        ({"n_steps": 0}, "n_steps"),
        ({"n_steps": 1}, "n_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": -0.1}, "gae_lambda"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"sub_sampling_factor": 0}, "sub_sampling_factor"),
        ({"n_critic_updates": -1}, "n_critic_updates"),
        ({"sde_sample_freq": 1.5}, "sde_sample_freq"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(kwargs: dict[str, Any], name: str) -> None:
    env = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    touched: list[str] = []
    for method in ("step_async", "reset"):
        original = getattr(env, method)
        setattr(env, method, lambda *a, _m=method, _o=original, **k: touched.append(_m) or _o(*a, **k))
    with pytest.raises(ValueError, match=rf"(?<![\w']){re.escape(name)}(?![\w'])"):
        TRPOPlus("MlpPolicy", env, **kwargs)
    assert not touched


# ----------------------------------------------------------------------------- non-finite batches


class PoisonAdvantages(BaseCallback):
    """Poison the batch after it is collected, as a diverged value function would."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.model.rollout_buffer.advantages[3] = self.value


class PoisonRewards(BaseCallback):
    """A NaN reward from the environment (the callback edits the step's rewards before they are stored)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def _on_step(self) -> bool:
        self.calls += 1
        if self.calls == 10:
            self.locals["rewards"][0] = math.nan
        return True


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_non_finite_batch_is_rejected_and_leaves_the_policy_unchanged(value: float) -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    model.learn(SMALL["n_steps"])
    actor_before = _actor(model)
    capture = LogCapture()
    model.learn(SMALL["n_steps"], callback=[PoisonAdvantages(value), capture], reset_num_timesteps=False)
    assert th.equal(actor_before, _actor(model))
    assert model.n_rejected_steps == 1
    logged = capture.logged[-1]
    assert logged["train/rejected_steps"] == 1
    assert logged["train/line_search_success"] == 0.0 and logged["train/kl"] == 0.0
    # a later clean batch is used again
    model.learn(SMALL["n_steps"], reset_num_timesteps=False)
    assert model.n_rejected_steps == 1 and not th.equal(actor_before, _actor(model))


def test_a_nan_reward_rejects_the_step_and_does_not_corrupt_the_policy() -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    model.learn(SMALL["n_steps"])
    actor_before = _actor(model)
    capture = LogCapture()
    model.learn(SMALL["n_steps"], callback=[PoisonRewards(), capture], reset_num_timesteps=False)
    assert th.equal(actor_before, _actor(model))
    assert model.n_rejected_steps == 1 and capture.logged[-1]["train/rejected_steps"] == 1
    # the critic must not be fitted on NaN returns either: a NaN value function would poison
    # every later advantage and no step could ever be accepted again
    assert bool(th.isfinite(_params(model)).all()), "non-finite parameters after a NaN batch"
    model.learn(SMALL["n_steps"], reset_num_timesteps=False)
    assert model.n_rejected_steps == 1 and not th.equal(actor_before, _actor(model))


# ----------------------------------------------------------------------------- fast paths equal generic paths


class BoxObsEnv(gym.Env):
    """Box observations with any action space: what the NumPy actor serves."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,))

    def __init__(self, action_space: gym.spaces.Space) -> None:
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize(
    ("env", "kwargs"),
    [
        ("CartPole-v1", {}),
        ("Pendulum-v1", {}),
        ("Pendulum-v1", {"use_sde": True}),
        ("Pendulum-v1", {"use_sde": True, "policy_kwargs": {"full_std": False, "use_expln": True}}),
        (BoxObsEnv(gym.spaces.MultiDiscrete([3, 2])), {}),
        (BoxObsEnv(gym.spaces.MultiBinary(3)), {}),
    ],
    ids=["categorical", "gaussian", "gsde", "gsde_expln", "multidiscrete", "multibinary"],
)
def test_numpy_actor_reproduces_the_policy_and_its_random_stream(env: Any, kwargs: dict[str, Any]) -> None:
    for n_obs in (1, 5):
        model = TRPOPlus("MlpPolicy", env, seed=0, **SMALL, **kwargs)
        actor = NumpyActor.from_policy(model.policy)
        assert actor is not None
        if model.use_sde:
            model.policy.reset_noise(n_obs)
        obs = np.random.default_rng(0).normal(size=(n_obs, *model.observation_space.shape)).astype(np.float32)
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
    targets = ValueTargets.from_buffer(model.rollout_buffer)
    np.random.seed(5)
    fused = FusedMlpCritic.from_policy(model.policy)
    assert fused is not None
    fused_losses = fused.fit(targets.observations, targets.returns, 3, 32)
    model_fused = _params(model)
    model.policy = twin
    np.random.seed(5)
    twin_params = dict(twin.named_parameters())
    actor = [twin_params[name] for name in actor_names]
    torch_losses = fit_critic_torch(twin, targets, 3, 32, actor)
    assert np.allclose(fused_losses, torch_losses, rtol=1e-4)
    assert th.allclose(model_fused, _params(model), atol=1e-5)
    # the optimizer state carries over exactly as torch's Adam keeps it
    assert float(twin.optimizer.state[twin.value_net.weight]["step"]) == len(torch_losses) + 2 * 2 * 2
