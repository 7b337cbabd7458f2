"""Importance weights, the single-path surrogate, the KL measure and the q-aware rollout buffers."""

from __future__ import annotations

import math

import pytest
import torch as th
from conftest import build_policy
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)

from sb3_trpo_plus.distributions import detached, distribution_parameters
from sb3_trpo_plus.surrogate import (
    effective_sample_size,
    importance_sampled_surrogate,
    importance_weights,
    mean_kl,
)

F64 = th.float64


def test_importance_weights_and_truncation() -> None:
    log_prob = th.log(th.tensor([0.2, 0.5, 0.9], dtype=F64))
    log_q = th.log(th.tensor([0.4, 0.1, 0.3], dtype=F64))
    assert th.allclose(importance_weights(log_prob, log_q), th.tensor([0.5, 5.0, 3.0], dtype=F64), rtol=1e-12)
    # truncation clamps the large weights' values; they keep the gradient c * grad log pi
    log_prob = log_prob.clone().requires_grad_(True)
    truncated = importance_weights(log_prob, log_q, max_weight=4.0)
    assert th.allclose(truncated, th.tensor([0.5, 4.0, 3.0], dtype=F64), rtol=1e-12)
    (grad,) = th.autograd.grad(truncated.sum(), log_prob)
    assert th.allclose(grad, th.tensor([0.5, 4.0, 3.0], dtype=F64), rtol=1e-12)


def test_surrogate_at_theta_old_is_the_mean_advantage_and_its_gradient_the_policy_gradient() -> None:
    # L(theta) = mean[pi_theta / pi_old * A]: at theta_old its value is mean(A) and its gradient
    # mean(A * grad log pi_theta), the likelihood-ratio policy gradient
    gen = th.Generator().manual_seed(0)
    logits = th.randn(6, 3, generator=gen, dtype=F64, requires_grad=True)
    dist = CategoricalDistribution(3).proba_distribution(logits)
    actions = th.tensor([0, 2, 1, 1, 0, 2])
    advantages = th.randn(6, generator=gen, dtype=F64)
    log_old = dist.log_prob(actions).detach()
    surrogate = importance_sampled_surrogate(dist.log_prob(actions), log_old, advantages)
    assert math.isclose(float(surrogate), float(advantages.mean()), rel_tol=1e-12)
    (grad,) = th.autograd.grad(surrogate, logits, retain_graph=True)
    (expected,) = th.autograd.grad((dist.log_prob(actions) * advantages).mean(), logits)
    assert th.allclose(grad, expected, rtol=1e-12, atol=1e-15)


def test_surrogate_with_another_q_weights_by_pi_over_q() -> None:
    log_prob = th.log(th.tensor([0.5, 0.25], dtype=F64))
    log_q = th.log(th.tensor([0.25, 0.5], dtype=F64))
    advantages = th.tensor([1.0, -2.0], dtype=F64)
    # (2 * 1 + 0.5 * -2) / 2
    assert math.isclose(float(importance_sampled_surrogate(log_prob, log_q, advantages)), 0.5, rel_tol=1e-12)


def test_effective_sample_size() -> None:
    assert effective_sample_size(th.full((7,), 0.3)) == pytest.approx(1.0, rel=1e-6)
    assert effective_sample_size(th.tensor([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25, rel=1e-6)
    # (1 + 2 + 3)^2 / (1 + 4 + 9) / 3
    assert effective_sample_size(th.tensor([1.0, 2.0, 3.0])) == pytest.approx(36 / 14 / 3, rel=1e-6)
    assert effective_sample_size(th.zeros(3)) == 0.0


_SPACES = {
    "gaussian": spaces.Box(-1, 1, (2,)),
    "categorical": spaces.Discrete(3),
    "multi_categorical": spaces.MultiDiscrete([2, 3]),
    "bernoulli": spaces.MultiBinary(2),
}


@pytest.mark.parametrize("name", sorted(_SPACES))
def test_detached_keeps_pi_old_when_the_policy_is_evaluated_again(name: str) -> None:
    policy = build_policy(_SPACES[name], 0)
    obs = th.randn(5, 5, generator=th.Generator().manual_seed(0))
    distribution = policy.get_distribution(obs)
    old = detached(distribution)
    old_params = [p.clone() for p in distribution_parameters(old)]
    assert all(not p.requires_grad for p in distribution_parameters(old))
    for a, b in zip(distribution_parameters(old), distribution_parameters(distribution), strict=True):
        # value for value: re-building a Categorical would normalise its logits again (about 1e-8 off)
        assert th.equal(a, b.detach())
    with th.no_grad():
        assert float(mean_kl(old, distribution)) == 0.0 and float(mean_kl(distribution, old)) == 0.0
    # SB3 policies reuse one distribution object: evaluating them elsewhere must not change pi_old
    policy.get_distribution(3.0 * obs + 1.0)
    with th.no_grad():
        next(policy.action_net.parameters()).add_(1.0)
    policy.get_distribution(obs)
    assert all(th.equal(a, b) for a, b in zip(old_params, distribution_parameters(old), strict=True))
    assert type(old) is type(distribution)


@pytest.mark.parametrize("name", sorted(_SPACES))
def test_distribution_parameters_are_the_closed_form_fisher_coordinates(name: str) -> None:
    policy = build_policy(_SPACES[name], 1)
    obs = th.randn(4, 5)
    distribution = policy.get_distribution(obs)
    outputs = distribution_parameters(distribution)
    if name == "gaussian":
        assert len(outputs) == 2 and outputs[0].shape == (4, 2) and outputs[1].shape == (4, 2)
        assert th.equal(outputs[0], distribution.distribution.mean)
        assert th.allclose(outputs[1], policy.log_std.exp().expand(4, 2))
    elif name == "multi_categorical":
        assert [o.shape for o in outputs] == [(4, 2), (4, 3)]
    else:
        assert len(outputs) == 1 and outputs[0].shape == (4, _SPACES[name].shape[0] if name == "bernoulli" else 3)
    assert all(o.requires_grad for o in outputs)


def test_mean_kl_closed_forms_for_discrete_distributions() -> None:
    gen = th.Generator().manual_seed(2)
    z0, z1 = th.randn(4, 5, generator=gen, dtype=F64), th.randn(4, 5, generator=gen, dtype=F64)

    def categorical_kl(a: th.Tensor, b: th.Tensor) -> th.Tensor:
        p, q = th.softmax(a, -1), th.softmax(b, -1)
        return (p * (p.log() - q.log())).sum(-1)

    cat = CategoricalDistribution(5)
    old, new = cat.proba_distribution(z0), CategoricalDistribution(5).proba_distribution(z1)
    assert math.isclose(float(mean_kl(old, new)), float(categorical_kl(z0, z1).mean()), rel_tol=1e-12)
    # multi-categorical: the components' KLs add up, then the mean over states
    multi_old = MultiCategoricalDistribution([2, 3]).proba_distribution(z0)
    multi_new = MultiCategoricalDistribution([2, 3]).proba_distribution(z1)
    summed = categorical_kl(z0[:, :2], z1[:, :2]) + categorical_kl(z0[:, 2:], z1[:, 2:])
    assert math.isclose(float(mean_kl(multi_old, multi_new)), float(summed.mean()), rel_tol=1e-12)
    # Bernoulli: per action dimension, averaged over states and dimensions
    p, q = th.sigmoid(z0), th.sigmoid(z1)
    bern = p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())
    bern_old = BernoulliDistribution(5).proba_distribution(z0)
    bern_new = BernoulliDistribution(5).proba_distribution(z1)
    assert math.isclose(float(mean_kl(bern_old, bern_new)), float(bern.mean()), rel_tol=1e-10)
    for dist in (old, multi_old, bern_old):
        assert float(mean_kl(dist, dist)) == 0.0


def test_mean_kl_is_nonnegative_and_grows_with_the_step() -> None:
    mean, log_std = th.zeros(8, 3), th.zeros(3)
    old = DiagGaussianDistribution(3).proba_distribution(mean, log_std)
    kls = [float(mean_kl(old, DiagGaussianDistribution(3).proba_distribution(mean + t, log_std + t))) for t in (0.0, 0.1, 0.2)]
    assert kls[0] == 0.0 < kls[1] < kls[2]
