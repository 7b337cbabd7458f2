"""The trust-region step's pure functions, against exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sb3_trpo_plus.surrogate import importance_sampled_surrogate
from sb3_trpo_plus.trust_region import (
    analytic_fisher_vector_product,
    backtracking_line_search,
    conjugate_gradient,
    max_step_length,
    natural_gradient_step,
)


def _spd(n: int, seed: int) -> th.Tensor:
    gen = th.Generator().manual_seed(seed)
    a = th.randn(n, n, generator=gen, dtype=th.float64)
    return a @ a.T + n * th.eye(n, dtype=th.float64)


def test_conjugate_gradient_solves_a_small_spd_system_exactly() -> None:
    matrix = th.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]], dtype=th.float64)
    b = th.tensor([1.0, 2.0, 3.0], dtype=th.float64)
    result = conjugate_gradient(lambda v: matrix @ v, b, max_iter=3, residual_tol=0.0)
    # in exact arithmetic CG solves an n x n system in n iterations
    assert th.allclose(result.solution, th.linalg.solve(matrix, b), atol=1e-12)
    assert result.iterations == 3
    assert result.residual_norm < 1e-10


def test_conjugate_gradient_stops_early_on_the_residual() -> None:
    matrix = _spd(20, 0)
    b = th.randn(20, dtype=th.float64, generator=th.Generator().manual_seed(1))
    result = conjugate_gradient(lambda v: matrix @ v, b, max_iter=100, residual_tol=1e-20)
    assert result.iterations <= 20
    assert float(th.linalg.norm(matrix @ result.solution - b)) < 1e-8
    capped = conjugate_gradient(lambda v: matrix @ v, b, max_iter=2)
    assert capped.iterations == 2
    assert capped.residual_norm > result.residual_norm


def test_conjugate_gradient_from_the_solution_does_nothing() -> None:
    matrix = _spd(5, 2)
    b = th.ones(5, dtype=th.float64)
    exact = th.linalg.solve(matrix, b)
    result = conjugate_gradient(lambda v: matrix @ v, b, max_iter=10, residual_tol=1e-20, x0=exact)
    assert result.iterations == 0
    assert th.allclose(result.solution, exact)
    with pytest.raises(ValueError, match="max_iter"):
        conjugate_gradient(lambda v: matrix @ v, b, max_iter=0)


def test_max_step_length_hits_the_kl_bound_of_the_quadratic_model() -> None:
    matrix = _spd(4, 3)
    direction = th.tensor([1.0, -2.0, 0.5, 3.0], dtype=th.float64)
    beta = max_step_length(direction, matrix @ direction, max_kl=0.01)
    step = beta * direction
    assert math.isclose(0.5 * float(step @ matrix @ step), 0.01, rel_tol=1e-12)
    assert math.isnan(max_step_length(direction, -(matrix @ direction), 0.01))
    assert math.isnan(max_step_length(direction, th.full_like(direction, math.nan), 0.01))


def test_line_search_accepts_the_first_improving_step_inside_the_bound() -> None:
    # objective 1 - (f - 0.3)^2 improves over 0.91 for f in (0, 0.6); KL = f^2 / 10 <= 0.01 for f <= 0.316
    tried: list[float] = []

    def evaluate(fraction: float) -> tuple[float, float]:
        tried.append(fraction)
        return 1 - (fraction - 0.3) ** 2, fraction**2 / 10

    result = backtracking_line_search(evaluate, baseline_objective=0.91, max_kl=0.01, shrinking_factor=0.5, max_iter=10)
    assert result.success and result.step_fraction == 0.25 and result.n_evaluations == 3
    assert tried == [1.0, 0.5, 0.25]


@pytest.mark.parametrize(
    ("values", "reason"),
    [((math.nan, 0.0), "non-finite"), ((2.0, 1.0), "KL above target"), ((0.0, 0.0), "no surrogate improvement")],
)
def test_line_search_failures_carry_their_reason(values: tuple[float, float], reason: str) -> None:
    result = backtracking_line_search(lambda _: values, 1.0, 0.01, 0.8, 4)
    assert not result.success and result.n_evaluations == 4 and reason in result.reason
    assert result.step_fraction == 0.0


class TinyGaussianPolicy(nn.Module):
    """A linear Gaussian policy pi(a|s) = N(W s + b, exp(log_std)) for the step tests."""

    def __init__(self, obs_dim: int, act_dim: int, seed: int) -> None:
        super().__init__()
        th.manual_seed(seed)
        self.linear = nn.Linear(obs_dim, act_dim)
        self.log_std = nn.Parameter(th.zeros(act_dim) - 0.5)

    def distribution(self, obs: th.Tensor) -> th.distributions.Normal:
        return th.distributions.Normal(self.linear(obs), self.log_std.exp().expand(len(obs), -1))


def _step_problem(seed: int, target_kl: float, n: int = 64):  # type: ignore[no-untyped-def]
    policy = TinyGaussianPolicy(3, 2, seed)
    gen = th.Generator().manual_seed(seed)
    obs = th.randn(n, 3, generator=gen)
    with th.no_grad():
        old = policy.distribution(obs)
        actions = old.sample()
        old_log_prob = old.log_prob(actions).sum(-1)
    advantages = th.randn(n, generator=gen)
    params = list(policy.parameters())

    class Wrapped:
        def __init__(self, dist: th.distributions.Normal) -> None:
            self.distribution = dist

    def kl(dist: th.distributions.Normal) -> th.Tensor:
        return th.distributions.kl_divergence(old, dist).sum(-1).mean()

    def objective() -> th.Tensor:
        dist = policy.distribution(obs)
        return importance_sampled_surrogate(dist.log_prob(actions).sum(-1), old_log_prob, advantages)

    def evaluate() -> tuple[float, float]:
        dist = policy.distribution(obs)
        surrogate = importance_sampled_surrogate(dist.log_prob(actions).sum(-1), old_log_prob, advantages)
        return float(surrogate), float(kl(dist))

    dist = policy.distribution(obs)
    inv_var = dist.scale.detach() ** -2
    fvp = analytic_fisher_vector_product(
        [dist.loc, dist.scale], lambda t: [inv_var * t[0], 2 * inv_var * t[1]], params, damping=0.0, n_samples=n
    )
    return policy, params, objective, evaluate, fvp, kl, obs


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), target_kl=st.floats(1e-4, 0.5), shrink=st.floats(0.1, 0.9), n=st.integers(4, 64))
def test_a_step_never_leaves_the_trust_region(seed: int, target_kl: float, shrink: float, n: int) -> None:
    policy, params, objective, evaluate, fvp, kl, obs = _step_problem(seed, target_kl, n)
    before = th.nn.utils.parameters_to_vector(params).detach().clone()
    result = natural_gradient_step(params, objective(), fvp, evaluate, target_kl, 10, shrink, 10)
    with th.no_grad():
        measured = float(kl(policy.distribution(obs)))
    after = th.nn.utils.parameters_to_vector(params).detach()
    if result.accepted:
        assert measured <= target_kl
        assert result.surrogate_gain > 0
    else:
        assert th.equal(before, after)


def test_a_rejected_step_restores_the_parameters_bit_for_bit() -> None:
    _, params, objective, _, fvp, _, _ = _step_problem(0, 0.01)
    before = [p.detach().clone() for p in params]
    result = natural_gradient_step(params, objective(), fvp, lambda: (math.nan, 0.0), 0.01, 10, 0.8, 5)
    assert not result.accepted and "non-finite" in result.reason and result.line_search_steps == 5
    assert all(th.equal(b, p) for b, p in zip(before, params, strict=True))


def test_non_finite_gradient_or_curvature_rejects_the_step() -> None:
    _, params, objective, evaluate, fvp, _, _ = _step_problem(1, 0.01)
    before = th.nn.utils.parameters_to_vector(params).detach().clone()
    result = natural_gradient_step(params, objective() * math.nan, fvp, evaluate, 0.01, 10, 0.8, 5)
    assert not result.accepted and "non-finite" in result.reason
    result = natural_gradient_step(params, objective(), lambda v: v * math.inf, evaluate, 0.01, 10, 0.8, 5)
    assert not result.accepted
    assert th.equal(before, th.nn.utils.parameters_to_vector(params).detach())


def test_expected_gain_matches_the_linear_model_for_small_steps() -> None:
    _, params, objective, evaluate, fvp, _, _ = _step_problem(2, 1e-6)
    result = natural_gradient_step(params, objective(), fvp, evaluate, 1e-6, 20, 0.8, 10)
    assert result.accepted
    assert np.isclose(result.surrogate_gain, result.expected_gain, rtol=0.05)
