"""The analytic Fisher-vector product equals the Hessian of the mean KL, for every SB3 distribution."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import get_schedule_fn

from sb3_trpo_plus.surrogate import detached, distribution_metric, distribution_parameters, mean_kl
from sb3_trpo_plus.trust_region import analytic_fisher_vector_product, kl_hessian_vector_product

ACTION_SPACES = {
    "gaussian": (spaces.Box(-1, 1, (3,)), {}),
    "gsde": (spaces.Box(-1, 1, (2,)), {"use_sde": True}),
    "gsde_full_std_learn_features": (
        spaces.Box(-1, 1, (2,)),
        {"use_sde": True, "full_std": True, "use_expln": True, "log_std_init": -1.0},
    ),
    "categorical": (spaces.Discrete(4), {}),
    "multi_categorical": (spaces.MultiDiscrete([3, 2, 4]), {}),
    "bernoulli": (spaces.MultiBinary(3), {}),
}


def _policy(action_space: spaces.Space, kwargs: dict[str, Any], seed: int) -> ActorCriticPolicy:
    th.manual_seed(seed)
    policy = ActorCriticPolicy(spaces.Box(-2, 2, (5,)), action_space, get_schedule_fn(1e-3), net_arch=[16, 16], **kwargs)
    # move away from the orthogonal initialisation's symmetric logits
    with th.no_grad():
        for param in policy.parameters():
            param.add_(0.3 * th.randn_like(param))
    return policy


@pytest.mark.parametrize("name", sorted(ACTION_SPACES))
@pytest.mark.parametrize("seed", [0, 1])
def test_analytic_fisher_equals_kl_hessian(name: str, seed: int) -> None:
    action_space, kwargs = ACTION_SPACES[name]
    policy = _policy(action_space, kwargs, seed)
    obs = th.randn(32, 5, generator=th.Generator().manual_seed(seed))
    params = [p for p in policy.parameters() if p.requires_grad]
    # actor parameters only: those the distribution depends on
    grads = th.autograd.grad(
        [o.sum() for o in distribution_parameters(policy.get_distribution(obs))], params, allow_unused=True
    )
    params = [p for p, g in zip(params, grads, strict=True) if g is not None]

    distribution = policy.get_distribution(obs)
    old = detached(distribution)
    analytic = analytic_fisher_vector_product(distribution_parameters(distribution), distribution_metric(old), params, 0.0, 32)
    new = policy.get_distribution(obs)
    hessian = kl_hessian_vector_product(mean_kl(old, new), params, 0.0)
    for trial in range(3):
        vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(trial))
        expected = hessian(vector)
        # float32 (SB3 casts observations to float): equal up to rounding
        assert float(th.linalg.norm(analytic(vector) - expected)) <= 1e-5 * float(th.linalg.norm(expected)), name
        assert float(vector @ expected) > 0  # positive definite on a random direction


def test_damping_adds_c_times_v() -> None:
    policy = _policy(spaces.Discrete(3), {}, 0)
    obs = th.randn(8, 5)
    params = list(policy.action_net.parameters())
    distribution = policy.get_distribution(obs)
    old = detached(distribution)
    outputs = distribution_parameters(distribution)
    plain = analytic_fisher_vector_product(outputs, distribution_metric(old), params, 0.0, 8)
    damped = analytic_fisher_vector_product(outputs, distribution_metric(old), params, 0.5, 8)
    vector = th.randn(sum(p.numel() for p in params))
    assert th.allclose(damped(vector), plain(vector) + 0.5 * vector)


def test_mean_kl_of_gaussians_matches_the_closed_form() -> None:
    policy = _policy(spaces.Box(-1, 1, (2,)), {}, 3)
    obs = th.randn(10, 5)
    old = detached(policy.get_distribution(obs))
    with th.no_grad():
        policy.log_std.add_(0.2)
        policy.action_net.bias.add_(0.1)
    new = policy.get_distribution(obs)
    mu0, s0 = old.distribution.loc, old.distribution.scale
    mu1, s1 = new.distribution.loc, new.distribution.scale
    per_dimension = th.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5
    joint = per_dimension.sum(-1).mean()  # KL of the joint 2-d Gaussian, averaged over states
    # sb3-contrib's measure, kept for drop-in equivalence: the mean over states and dimensions
    assert math.isclose(float(mean_kl(old, new)), float(per_dimension.mean()), rel_tol=1e-5)
    assert math.isclose(2 * float(mean_kl(old, new)), float(joint), rel_tol=1e-5)
    assert float(mean_kl(old, old)) == 0.0


def test_categorical_metric_is_the_softmax_fisher() -> None:
    logits = th.tensor([[0.1, -0.4, 1.2]], dtype=th.float64)
    probs = th.softmax(logits, -1)
    from stable_baselines3.common.distributions import CategoricalDistribution

    dist = CategoricalDistribution(3).proba_distribution(logits)
    tangent = th.tensor([[1.0, 2.0, -1.0]], dtype=th.float64)
    expected = (th.diag(probs[0]) - probs[0][:, None] * probs[0][None]) @ tangent[0]
    assert np.allclose(distribution_metric(dist)([tangent])[0][0].numpy(), expected.numpy())
