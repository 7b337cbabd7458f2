"""
The NumPy fast paths compute log-probabilities as torch's distributions do, stably for any
logit, mean and standard deviation (issue 8): from logits (log-softmax, softplus), never from
probabilities rounded to 0 or 1.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_trpo_plus import BoxObsEnv

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.distributions import bernoulli_log_prob, gaussian_log_prob, log_softmax
from sb3_trpo_plus.fast.actor import NumpyActor
from sb3_trpo_plus.sampling import TorchActor

LOGITS = st.floats(-100.0, 100.0, width=32)
SHAPES = st.tuples(st.integers(1, 6), st.integers(1, 5))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=SHAPES)
def test_bernoulli_log_prob_matches_torch_for_extreme_logits(data: Any, shape: tuple[int, int]) -> None:
    logits = data.draw(arrays(np.float32, shape, elements=LOGITS))
    actions = data.draw(arrays(np.float32, shape, elements=st.sampled_from([0.0, 1.0])))
    ours = bernoulli_log_prob(logits, actions)
    theirs = th.distributions.Bernoulli(logits=th.from_numpy(logits)).log_prob(th.from_numpy(actions)).sum(-1).numpy()
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=SHAPES)
def test_categorical_log_prob_matches_torch_for_extreme_logits(data: Any, shape: tuple[int, int]) -> None:
    logits = data.draw(arrays(np.float32, shape, elements=LOGITS))
    ours = log_softmax(logits)
    theirs = th.distributions.Categorical(logits=th.from_numpy(logits)).logits.numpy()
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=SHAPES)
def test_gaussian_log_prob_matches_torch_for_extreme_means_and_stds(data: Any, shape: tuple[int, int]) -> None:
    mean = data.draw(arrays(np.float32, shape, elements=st.floats(-1e4, 1e4, width=32)))
    log_std = data.draw(arrays(np.float32, shape[1:], elements=st.floats(-20.0, 5.0, width=32)))
    noise = data.draw(arrays(np.float32, shape, elements=st.floats(-6.0, 6.0, width=32)))
    std = th.from_numpy(log_std).exp().numpy()
    actions = mean + noise * std
    ours = gaussian_log_prob(actions, mean, std)
    normal = th.distributions.Normal(th.from_numpy(mean), th.from_numpy(log_std).exp().expand(shape))
    theirs = normal.log_prob(th.from_numpy(actions)).sum(-1).numpy()
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "action_space",
    [gym.spaces.MultiBinary(3), gym.spaces.Discrete(4), gym.spaces.MultiDiscrete([3, 2]), gym.spaces.Box(-1, 1, (2,))],
    ids=["multibinary", "discrete", "multidiscrete", "box"],
)
@pytest.mark.parametrize("scale", [30.0, 1000.0])
def test_numpy_actor_equals_torch_with_saturated_heads(action_space: gym.spaces.Space, scale: float) -> None:
    model = TRPOPlus("MlpPolicy", BoxObsEnv(action_space), seed=0, n_steps=64, batch_size=32)
    with th.no_grad():
        model.policy.action_net.bias.copy_(scale * th.linspace(-1, 1, len(model.policy.action_net.bias)))
        if hasattr(model.policy, "log_std"):
            model.policy.log_std.fill_(-15.0)
    actor = NumpyActor.from_policy(model.policy)
    assert actor is not None
    obs = np.random.default_rng(0).uniform(-1, 1, size=(7, 4)).astype(np.float32)
    th.manual_seed(3)
    fast = actor.act(obs)
    th.manual_seed(3)
    slow = TorchActor(model.policy).act(obs, th.as_tensor(obs))
    assert np.array_equal(fast[0], slow[0])
    assert th.isfinite(fast[2]).all() and th.isfinite(slow[2]).all()
    assert th.allclose(fast[2], slow[2], rtol=1e-5, atol=1e-4)


class SignsEnv(BoxObsEnv):
    """Box observations (served by the NumPy actor), MultiBinary actions rewarded for matching the signs."""

    def __init__(self) -> None:
        super().__init__(gym.spaces.MultiBinary(3))
        self.obs = np.zeros(3, dtype=np.float32)

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.obs = super().reset(seed=seed)[0]
        return self.obs, {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(np.sum(np.asarray(action) == (self.obs > 0)))
        self.obs = self.observation_space.sample()
        return self.obs, reward, False, False, {}


def test_multibinary_with_a_saturated_logit_keeps_training() -> None:
    # one logit far above 16.6, where float32 rounds sigmoid to 1: the log-probability computed from
    # the probability was NaN, every step was then rejected as non-finite and the policy froze
    model = TRPOPlus("MlpPolicy", SignsEnv(), seed=0, n_steps=64, batch_size=32, n_critic_updates=2)
    assert NumpyActor.from_policy(model.policy) is not None
    with th.no_grad():
        model.policy.action_net.bias.copy_(th.tensor([40.0, 0.0, 0.0]))
    before = model.policy.action_net.weight.detach().clone()
    model.learn(3 * 64)
    assert np.isfinite(model.rollout_buffer.log_probs).all()
    assert model.n_rejected_steps == 0
    assert not th.equal(before, model.policy.action_net.weight)
