"""
The critic fit on cached features (issue 12): when the critic's features extractor is frozen (the
actor's, as SB3's CnnPolicy and MultiInputPolicy share it by default), its features are computed
once per fit and the fit computes what the generic torch fit computes: same minibatches (same
draws from NumPy's global generator), same critic parameters and Adam state, extractor untouched.
Otherwise (the critic's own extractor, which the fit trains; a hook; an extractor of another kind)
the generic fit runs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import flat
from gymnasium import spaces
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from test_parity_spaces import SpacesEnv
from torch import nn

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus import critic as critic_module
from sb3_trpo_plus.critic import ValueTargets, cacheable_features, fit_critic, fit_critic_torch

SMALL = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 3}
IMAGE_KWARGS: dict[str, Any] = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [16]}


def image_env() -> SpacesEnv:
    """Random 36x36 grey images, 3 actions, a reward that depends on both."""
    return SpacesEnv(spaces.Box(0, 255, (1, 36, 36), np.uint8), spaces.Discrete(3))


class NoisyExtractor(BaseFeaturesExtractor):
    """A custom extractor (a class the cached fit does not know): flattens and projects."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 8) -> None:
        super().__init__(observation_space, features_dim)
        self.linear = nn.Linear(int(np.prod(observation_space.shape)), features_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return th.relu(self.linear(observations.flatten(1)))


def _model(kind: str, **policy_kwargs: Any) -> TRPOPlus:
    """A model of ``kind`` ("cnn" or "dict") after one iteration (Adam has state), with a fresh rollout."""
    if kind == "cnn":
        env = make_vec_env(image_env, n_envs=2, seed=0)
        model = TRPOPlus("CnnPolicy", env, seed=0, policy_kwargs={**IMAGE_KWARGS, **policy_kwargs}, **SMALL)
    else:
        model = TRPOPlus(
            "MultiInputPolicy", SimpleMultiObsEnv(), seed=0, policy_kwargs={"net_arch": [16], **policy_kwargs}, **SMALL
        )
    model.learn(model.n_steps * model.n_envs)
    callback = CallbackList([])
    callback.init_callback(model)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]
    return model


def _twin(model: TRPOPlus) -> tuple[Any, list[nn.Parameter]]:
    """A copy of the policy (with its optimizer and Adam state) and its actor parameters."""
    twin = copy.deepcopy(model.policy)
    actor_ids = {id(p) for p in model._actor_params}
    pairs = zip(twin.parameters(), model.policy.parameters(), strict=True)
    return twin, [p for p, q in pairs if id(q) in actor_ids]


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of the cached-features fit (by :func:`fit_critic`)."""
    calls: list[int] = []
    original = critic_module.fit_critic_cached_features
    monkeypatch.setattr(critic_module, "fit_critic_cached_features", lambda *a: calls.append(1) or original(*a))
    return calls


def _assert_same_state(policy: Any, twin: Any, atol: float = 1e-6) -> None:
    assert th.allclose(flat(policy.parameters()), flat(twin.parameters()), rtol=0.0, atol=atol)
    ours, theirs = policy.optimizer.state_dict(), twin.optimizer.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys(), "Adam has state for the same parameters"
    for key, state in ours["state"].items():
        assert state.keys() == theirs["state"][key].keys()
        for name, value in state.items():
            assert th.allclose(value, theirs["state"][key][name], rtol=0.0, atol=atol), (key, name)


def _fit_both(model: TRPOPlus, seed: int = 5) -> tuple[Any, list[float], list[float], tuple, tuple]:
    """fit_critic on the model's policy and fit_critic_torch on a twin, from the same NumPy seed."""
    targets = ValueTargets.from_buffer(model.rollout_buffer)
    twin, twin_actor = _twin(model)
    np.random.seed(seed)
    losses = fit_critic(model.policy, targets, 3, 32, model._actor_params)
    state = np.random.get_state()
    np.random.seed(seed)
    reference = fit_critic_torch(twin, targets, 3, 32, twin_actor)
    reference_state = np.random.get_state()
    return twin, losses, reference, state, reference_state


@pytest.mark.parametrize("kind", ["cnn", "dict"])
def test_cached_features_fit_equals_the_generic_fit(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(kind)
    policy = model.policy
    assert policy.share_features_extractor
    assert cacheable_features(policy, model._actor_params)
    actor_before = flat(model._actor_params).clone()
    extractor_before = flat(policy.vf_features_extractor.parameters()).clone()
    critic_before = flat(p for p in policy.parameters() if all(p is not q for q in model._actor_params)).clone()
    calls = _counted(monkeypatch)
    twin, losses, reference, state, reference_state = _fit_both(model)
    assert calls == [1], "the cached-features fit served the policy"
    assert np.allclose(losses, reference, rtol=0.0, atol=1e-6)
    _assert_same_state(policy, twin)
    assert th.equal(flat(model._actor_params), actor_before), "the actor (and its extractor) did not move"
    assert th.equal(flat(policy.vf_features_extractor.parameters()), extractor_before)
    assert not th.equal(flat(p for p in policy.parameters() if all(p is not q for q in model._actor_params)), critic_before)
    # the same draws from NumPy's global generator
    assert state[0] == reference_state[0] and np.array_equal(state[1], reference_state[1]) and state[2:] == reference_state[2:]


def test_fast_paths_false_and_true_learn_the_same_cnn_policy() -> None:
    # end to end: one iteration (critic fit included) with and without the fast paths
    results = []
    for fast_paths in (True, False):
        env = make_vec_env(image_env, n_envs=2, seed=0)
        model = TRPOPlus("CnnPolicy", env, seed=0, policy_kwargs=IMAGE_KWARGS, fast_paths=fast_paths, **SMALL)
        model.learn(2 * model.n_steps * model.n_envs)
        results.append(flat(model.policy.parameters()))
    assert th.allclose(results[0], results[1], rtol=0.0, atol=1e-6)


def test_the_critic_own_extractor_is_trained_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("cnn", share_features_extractor=False)
    policy = model.policy
    assert not cacheable_features(policy, model._actor_params), "the critic's own extractor is not frozen"
    extractor_before = flat(policy.vf_features_extractor.parameters()).clone()
    calls = _counted(monkeypatch)
    twin, losses, reference, state, reference_state = _fit_both(model)
    assert calls == []
    assert losses == reference
    _assert_same_state(policy, twin, atol=0.0)
    assert not th.equal(flat(policy.vf_features_extractor.parameters()), extractor_before), "the fit trains it"
    assert np.array_equal(state[1], reference_state[1])


def test_a_forward_hook_on_the_extractor_sees_every_minibatch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("cnn")
    policy = model.policy
    seen: list[int] = []
    handle = policy.features_extractor.register_forward_hook(lambda module, inputs, output: seen.append(len(output)))
    assert not cacheable_features(policy, model._actor_params)
    calls = _counted(monkeypatch)
    targets = ValueTargets.from_buffer(model.rollout_buffer)
    fit_critic(policy, targets, 3, 32, model._actor_params)
    handle.remove()
    assert calls == []
    assert seen == [32] * (3 * len(targets.returns) // 32), "the generic fit: one extractor pass per minibatch"
    assert cacheable_features(policy, model._actor_params), "the hook removed, the cached fit serves again"


def test_other_extractors_and_policies_use_the_generic_fit() -> None:
    # a custom extractor class, dropout in the extractor, a patched predict_values, a backward hook
    custom = _model("cnn", features_extractor_class=NoisyExtractor, features_extractor_kwargs={"features_dim": 8})
    assert not cacheable_features(custom.policy, custom._actor_params)
    model = _model("cnn")
    policy = model.policy
    assert cacheable_features(policy, model._actor_params)
    cnn = policy.features_extractor.cnn
    cnn.append(nn.Dropout(0.0))
    assert not cacheable_features(policy, model._actor_params)
    del cnn[-1]
    policy.predict_values = policy.predict_values  # an instance patch
    assert not cacheable_features(policy, model._actor_params)
    del policy.predict_values
    handle = policy.features_extractor.linear.register_full_backward_hook(lambda *a: None)
    assert not cacheable_features(policy, model._actor_params)
    handle.remove()
    param_handle = next(policy.features_extractor.parameters()).register_hook(lambda grad: grad)
    assert not cacheable_features(policy, model._actor_params)
    param_handle.remove()
    assert cacheable_features(policy, model._actor_params)
    # an extractor parameter the caller does not freeze: the fit would move it
    first = next(policy.features_extractor.parameters())
    assert not cacheable_features(policy, [p for p in model._actor_params if p is not first])
