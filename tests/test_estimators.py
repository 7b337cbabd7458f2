"""
The importance-sampled surrogates against exact values on contextual bandits with known Q.

For a policy pi_theta and a sampling distribution q built from pi_old, the surrogate
L(theta) = mean_s sum_a pi_theta(a|s) Q(s, a) (or its integral for a continuous action) and its
gradient are known exactly. Each estimator, fed actions drawn from q, must match both within a
statistical tolerance (a few standard errors) for every q. Theta is moved away from theta_old so
that the importance weights are not all one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution

from sb3_trpo_plus.q import make_q
from sb3_trpo_plus.surrogate import exact_sum_surrogate, importance_sampled_surrogate, self_normalized_surrogate

Q_TABLE = th.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 3.0, -2.0, 0.0], [-1.0, 1.0, 1.5, 2.5]])
STATES = th.eye(3)
CENTERS = th.tensor([0.5, -0.3, 0.8])


def _user_discrete_q(pi_old: Any, observations: th.Tensor) -> th.distributions.Distribution:
    probs = th.tensor([0.1, 0.2, 0.3, 0.4]).expand(len(observations), 4)
    return th.distributions.Categorical(probs=probs)


def _user_gaussian_q(pi_old: Any, observations: th.Tensor) -> th.distributions.Distribution:
    normal = th.distributions.Normal(pi_old.distribution.loc, pi_old.distribution.scale * 1.3)
    return th.distributions.Independent(normal, 1)


DISCRETE_QS = [
    ("policy", {}),
    ("uniform", {}),
    ("scaled", {"temperature": 2.0}),
    ("mixture", {"eps": 0.3}),
    (_user_discrete_q, {}),
]
GAUSSIAN_QS = [
    ("policy", {}),
    ("uniform", {}),
    ("scaled", {"std_scale": 1.5}),
    ("mixture", {"eps": 0.3}),
    (_user_gaussian_q, {}),
]


def _discrete_problem() -> tuple[th.Tensor, th.Tensor]:
    th.manual_seed(0)
    w_old = 0.5 * th.randn(3, 4)
    w = (w_old + 0.3 * th.randn(3, 4)).requires_grad_(True)
    return w_old, w


def _exact_discrete(w: th.Tensor) -> th.Tensor:
    return (th.softmax(STATES @ w, dim=-1) * Q_TABLE).sum(-1).mean()


def _within(estimate: th.Tensor, exact: th.Tensor, stderr: th.Tensor, sigmas: float = 5.0) -> bool:
    return bool(th.all((estimate - exact).abs() <= sigmas * stderr + 1e-6))


@pytest.mark.parametrize(("q", "q_kwargs"), DISCRETE_QS, ids=lambda v: v if isinstance(v, str) else "")
def test_discrete_importance_sampled_surrogate_and_gradient(q: Any, q_kwargs: dict) -> None:
    w_old, w = _discrete_problem()
    exact = _exact_discrete(w)
    (exact_grad,) = th.autograd.grad(exact, w)
    pi_old = CategoricalDistribution(4).proba_distribution(STATES @ w_old)
    th.manual_seed(1)
    sampler = make_q(q, q_kwargs, spaces.Discrete(4)).build(pi_old, STATES)
    n, batches = 20_000, 20
    actions = sampler.sample(n)  # (3, n)
    log_q = sampler.log_prob(actions)
    log_pi = th.log_softmax(STATES @ w, dim=-1).gather(1, actions)
    q_values = Q_TABLE.gather(1, actions)
    estimate = importance_sampled_surrogate(log_pi.reshape(-1), log_q.reshape(-1), q_values.reshape(-1))
    (estimate_grad,) = th.autograd.grad(estimate, w, retain_graph=True)
    # standard errors from batch means: the estimator on 20 disjoint batches of samples
    parts = [
        importance_sampled_surrogate(lp.reshape(-1), lq.reshape(-1), qv.reshape(-1))
        for lp, lq, qv in zip(log_pi.chunk(batches, 1), log_q.chunk(batches, 1), q_values.chunk(batches, 1), strict=True)
    ]
    part_values = th.stack([p.detach() for p in parts])
    part_grads = th.stack([th.autograd.grad(p, w, retain_graph=True)[0] for p in parts])
    assert _within(estimate.detach(), exact.detach(), part_values.std() / np.sqrt(batches))
    assert _within(estimate_grad, exact_grad, part_grads.std(0) / np.sqrt(batches))


@pytest.mark.parametrize(("q", "q_kwargs"), DISCRETE_QS, ids=lambda v: v if isinstance(v, str) else "")
def test_discrete_self_normalized_surrogate_is_consistent(q: Any, q_kwargs: dict) -> None:
    w_old, w = _discrete_problem()
    exact = _exact_discrete(w)
    (exact_grad,) = th.autograd.grad(exact, w)
    pi_old = CategoricalDistribution(4).proba_distribution(STATES @ w_old)
    th.manual_seed(2)
    sampler = make_q(q, q_kwargs, spaces.Discrete(4)).build(pi_old, STATES)
    # The self-normalised estimator is consistent, not unbiased (bias O(1/K)): average R
    # independent replications with many actions per state and use their spread.
    values, grads = [], []
    for _ in range(20):
        actions = sampler.sample(1000)
        log_pi = th.log_softmax(STATES @ w, dim=-1).gather(1, actions).reshape(-1)
        group = th.arange(3).repeat_interleave(1000)
        value = self_normalized_surrogate(
            log_pi, sampler.log_prob(actions).reshape(-1), Q_TABLE.gather(1, actions).reshape(-1), group, 3
        )
        values.append(value.detach())
        grads.append(th.autograd.grad(value, w)[0])
    stacked_v, stacked_g = th.stack(values), th.stack(grads)
    assert _within(stacked_v.mean(), exact.detach(), stacked_v.std() / np.sqrt(20) + 1e-3)
    assert _within(stacked_g.mean(0), exact_grad, stacked_g.std(0) / np.sqrt(20) + 1e-3)


def test_exact_sum_surrogate_is_exact() -> None:
    _, w = _discrete_problem()
    actions = th.arange(4).repeat(3)
    group = th.arange(3).repeat_interleave(4)
    log_pi = th.log_softmax(STATES @ w, dim=-1)[group, actions]
    value = exact_sum_surrogate(log_pi, Q_TABLE[group, actions], group, 3)
    assert th.allclose(value, _exact_discrete(w))
    assert th.allclose(th.autograd.grad(value, w, retain_graph=True)[0], th.autograd.grad(_exact_discrete(w), w)[0])
    # a constant added to Q changes the value, not the gradient
    shifted = exact_sum_surrogate(log_pi, Q_TABLE[group, actions] + 10.0, group, 3)
    assert th.allclose(th.autograd.grad(shifted, w)[0], th.autograd.grad(_exact_discrete(w), w)[0], atol=1e-5)


def _gaussian_exact(mean: th.Tensor, log_std: th.Tensor) -> th.Tensor:
    # Q(s, a) = -(a - c_s)^2, so E_pi[Q] = -((mu_s - c_s)^2 + sigma^2)
    return -(((mean - CENTERS) ** 2) + th.exp(2 * log_std)).mean()


@pytest.mark.parametrize(("q", "q_kwargs"), GAUSSIAN_QS, ids=lambda v: v if isinstance(v, str) else "")
def test_gaussian_importance_sampled_surrogate_and_gradient(q: Any, q_kwargs: dict) -> None:
    th.manual_seed(3)
    w_old = th.tensor([0.2, -0.1, 0.4])
    log_std_old = th.tensor([-1.2])  # sigma 0.3: pi_old's mass outside [-2, 2] is negligible
    w = (w_old + 0.15).requires_grad_(True)
    log_std = (log_std_old + 0.1).requires_grad_(True)
    exact = _gaussian_exact(STATES @ w, log_std)
    exact_grad = th.autograd.grad(exact, [w, log_std])
    pi_old = DiagGaussianDistribution(1).proba_distribution((STATES @ w_old)[:, None], log_std_old)
    space = spaces.Box(-2.0, 2.0, (1,))
    sampler = make_q(q, q_kwargs, space).build(pi_old, STATES)
    n, batches = 40_000, 20
    actions = sampler.sample(n)  # (3, n, 1)
    log_q = sampler.log_prob(actions)
    pi = th.distributions.Normal((STATES @ w)[:, None, None], th.exp(log_std))
    log_pi = pi.log_prob(actions).sum(-1)
    q_values = -((actions[..., 0] - CENTERS[:, None]) ** 2)

    def flat_grad(value: th.Tensor) -> th.Tensor:
        return th.cat([g.reshape(-1) for g in th.autograd.grad(value, [w, log_std], retain_graph=True)])

    estimate = importance_sampled_surrogate(log_pi.reshape(-1), log_q.reshape(-1), q_values.reshape(-1))
    parts = [
        importance_sampled_surrogate(lp.reshape(-1), lq.reshape(-1), qv.reshape(-1))
        for lp, lq, qv in zip(log_pi.chunk(batches, 1), log_q.chunk(batches, 1), q_values.chunk(batches, 1), strict=True)
    ]
    part_values = th.stack([p.detach() for p in parts])
    part_grads = th.stack([flat_grad(p) for p in parts])
    flat_exact = th.cat([g.reshape(-1) for g in exact_grad])
    assert _within(estimate.detach(), exact.detach(), part_values.std() / np.sqrt(batches))
    assert _within(flat_grad(estimate), flat_exact, part_grads.std(0) / np.sqrt(batches))
