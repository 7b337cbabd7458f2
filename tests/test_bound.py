"""
sb3_trpo_plus.bound against closed forms: KL and total variation of categoricals computed by hand,
Gaussians by their formulas and by numerical integration, products by enumerating their outcomes.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from torch.distributions import Normal

from sb3_trpo_plus import bound
from sb3_trpo_plus.bound import (
    bound_epsilon,
    categorical_tv,
    coupling_bound,
    gaussian_tv,
    kl_max,
    lower_bound,
    penalty_coefficient,
    per_state_kl,
    per_state_tv,
    tv_is_exact,
    tv_max,
)
from sb3_trpo_plus.surrogate import mean_kl

F64 = th.float64


def _categorical(probs: list[list[float]]) -> CategoricalDistribution:
    table = th.tensor(probs, dtype=F64)
    return CategoricalDistribution(table.shape[1]).proba_distribution(action_logits=th.log(table))


def _gaussian(mean: list[list[float]], log_std: list[float], cls: type = DiagGaussianDistribution) -> DiagGaussianDistribution:
    mean_t = th.tensor(mean, dtype=F64)
    return cls(mean_t.shape[1]).proba_distribution(mean_t, th.tensor(log_std, dtype=F64))


def _numerical_gaussian_tv(m1: float, s1: float, m2: float, s2: float) -> float:
    x = th.linspace(min(m1 - 12 * s1, m2 - 12 * s2), max(m1 + 12 * s1, m2 + 12 * s2), 400_001, dtype=F64)
    p = Normal(th.tensor(m1, dtype=F64), th.tensor(s1, dtype=F64)).log_prob(x).exp()
    q = Normal(th.tensor(m2, dtype=F64), th.tensor(s2, dtype=F64)).log_prob(x).exp()
    return float(0.5 * th.trapezoid((p - q).abs(), x))


def test_categorical_kl_and_tv_by_hand() -> None:
    old = _categorical([[0.5, 0.5], [0.2, 0.8]])
    new = _categorical([[0.9, 0.1], [0.2, 0.8]])
    expected_kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert per_state_kl(old, new).tolist() == pytest.approx([expected_kl, 0.0], abs=1e-12)
    assert float(kl_max(old, new)) == pytest.approx(expected_kl, abs=1e-12)
    assert per_state_tv(old, new).tolist() == pytest.approx([0.4, 0.0], abs=1e-12)
    assert float(tv_max(old, new)) == pytest.approx(0.4, abs=1e-12)
    assert tv_is_exact(old)


def test_diag_gaussian_kl_per_state_measure_and_joint() -> None:
    old = _gaussian([[0.0, 1.0], [0.5, -0.5]], [0.0, math.log(2.0)])
    new = _gaussian([[1.0, 1.0], [0.5, 0.5]], [math.log(0.5), math.log(2.0)])

    def kl_1d(m1: float, s1: float, m2: float, s2: float) -> float:
        return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5

    per_dim = [[kl_1d(0.0, 1.0, 1.0, 0.5), kl_1d(1.0, 2.0, 1.0, 2.0)], [kl_1d(0.5, 1.0, 0.5, 0.5), kl_1d(-0.5, 2.0, 0.5, 2.0)]]
    joint = [sum(row) for row in per_dim]
    assert per_state_kl(old, new, joint=True).tolist() == pytest.approx(joint, rel=1e-12)
    assert per_state_kl(old, new).tolist() == pytest.approx([j / 2 for j in joint], rel=1e-12)
    # the default measure, averaged over states, is the package's mean KL
    assert float(per_state_kl(new, old).mean()) == pytest.approx(float(mean_kl(new, old)), rel=1e-12)
    assert float(kl_max(old, new, joint=True)) == pytest.approx(max(joint), rel=1e-12)


@pytest.mark.parametrize(
    ("m1", "s1", "m2", "s2"),
    [(0.0, 1.0, 1.0, 1.0), (0.0, 1.0, 0.0, 2.0), (0.3, 0.5, -1.0, 1.7), (2.0, 3.0, -1.0, 0.2), (0.0, 1.0, 0.1, 1.0 + 1e-9)],
)
def test_gaussian_tv_matches_numerical_integration(m1: float, s1: float, m2: float, s2: float) -> None:
    args = [th.tensor(v, dtype=F64) for v in (m1, s1, m2, s2)]
    value = float(gaussian_tv(*args))
    assert value == pytest.approx(_numerical_gaussian_tv(m1, s1, m2, s2), abs=1e-8)
    assert float(gaussian_tv(args[2], args[3], args[0], args[1])) == pytest.approx(value, abs=1e-12)


def test_gaussian_tv_equal_widths_closed_form_and_identity() -> None:
    mean_p, mean_q, std = th.tensor([0.0, 0.0]), th.tensor([1.0, 0.0]), th.tensor([2.0, 0.7])
    expected = math.erf(1.0 / (2.0 * math.sqrt(2.0) * 2.0))
    assert gaussian_tv(mean_p, std, mean_q, std).tolist() == pytest.approx([expected, 0.0], abs=1e-7)


def test_gaussian_tv_one_dimension_exact_several_dimensions_bounded() -> None:
    one_old, one_new = _gaussian([[0.2]], [0.0]), _gaussian([[-0.4]], [math.log(1.5)])
    assert tv_is_exact(one_old)
    assert float(per_state_tv(one_old, one_new)) == pytest.approx(_numerical_gaussian_tv(0.2, 1.0, -0.4, 1.5), abs=1e-8)

    old = _gaussian([[0.0, 0.5]], [0.0, math.log(0.8)])
    new = _gaussian([[0.6, 0.2]], [math.log(1.3), math.log(0.8)])
    assert not tv_is_exact(old)
    # exact joint total variation by integrating the product densities on a 2-D grid
    grid = th.linspace(-9.0, 9.0, 1801, dtype=F64)
    x, y = th.meshgrid(grid, grid, indexing="ij")
    density = [
        Normal(m1, s1).log_prob(x).exp() * Normal(m2, s2).log_prob(y).exp()
        for m1, s1, m2, s2 in ((0.0, 1.0, 0.5, 0.8), (0.6, 1.3, 0.2, 0.8))
    ]
    step = float(grid[1] - grid[0])
    exact = float(0.5 * (density[0] - density[1]).abs().sum() * step * step)
    upper = float(per_state_tv(old, new))
    per_dim = [_numerical_gaussian_tv(0.0, 1.0, 0.6, 1.3), _numerical_gaussian_tv(0.5, 0.8, 0.2, 0.8)]
    assert max(per_dim) - 1e-6 <= exact <= upper + 1e-6
    assert upper <= 1.0 - (1.0 - per_dim[0]) * (1.0 - per_dim[1]) + 1e-8
    assert upper <= math.sqrt(0.5 * float(per_state_kl(old, new, joint=True))) + 1e-12


def test_squashed_and_state_dependent_gaussians_use_the_gaussian_formulas() -> None:
    old = _gaussian([[0.1]], [0.0], SquashedDiagGaussianDistribution)
    new = _gaussian([[0.7]], [math.log(0.6)], SquashedDiagGaussianDistribution)
    plain = float(per_state_tv(_gaussian([[0.1]], [0.0]), _gaussian([[0.7]], [math.log(0.6)])))
    assert float(per_state_tv(old, new)) == pytest.approx(plain, abs=1e-14)

    def sde(mean: float, log_std: float) -> StateDependentNoiseDistribution:
        dist = StateDependentNoiseDistribution(1)
        dist.sample_weights(th.zeros(2, 1, dtype=F64))
        return dist.proba_distribution(
            th.tensor([[mean]], dtype=F64), th.full((2, 1), log_std, dtype=F64), th.ones(1, 2, dtype=F64)
        )

    p, q = sde(0.0, 0.0), sde(0.5, -0.5)
    normal_p, normal_q = p.distribution, q.distribution
    expected = gaussian_tv(normal_p.mean, normal_p.stddev, normal_q.mean, normal_q.stddev)[:, 0]
    assert th.allclose(per_state_tv(p, q), expected)
    assert tv_is_exact(p)


def _enumerated_product_tv(components_p: list[list[float]], components_q: list[list[float]]) -> float:
    total = 0.0
    for outcome in itertools.product(*[range(len(c)) for c in components_p]):
        p = math.prod(c[i] for c, i in zip(components_p, outcome, strict=True))
        q = math.prod(c[i] for c, i in zip(components_q, outcome, strict=True))
        total += abs(p - q)
    return 0.5 * total


def _multicategorical(components: list[list[float]]) -> MultiCategoricalDistribution:
    logits = th.log(th.tensor([v for c in components for v in c], dtype=F64)).unsqueeze(0)
    return MultiCategoricalDistribution([len(c) for c in components]).proba_distribution(logits)


def test_multicategorical_tv_exact_by_enumeration_and_coupling_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    comp_p, comp_q = [[0.3, 0.7], [0.2, 0.5, 0.3]], [[0.6, 0.4], [0.1, 0.1, 0.8]]
    old, new = _multicategorical(comp_p), _multicategorical(comp_q)
    exact = _enumerated_product_tv(comp_p, comp_q)
    assert tv_is_exact(old)
    assert float(per_state_tv(old, new)) == pytest.approx(exact, abs=1e-12)
    # the KL of a product is the sum of the components' KLs (one per state, as SB3 gives it)
    kl = sum(p * math.log(p / q) for cp, cq in zip(comp_p, comp_q, strict=True) for p, q in zip(cp, cq, strict=True))
    assert float(kl_max(old, new)) == pytest.approx(kl, abs=1e-12)

    monkeypatch.setattr(bound, "MAX_JOINT_OUTCOMES", 4)
    assert not tv_is_exact(old)
    component_tv = [0.5 * sum(abs(p - q) for p, q in zip(cp, cq, strict=True)) for cp, cq in zip(comp_p, comp_q, strict=True)]
    expected_bound = 1.0 - (1.0 - component_tv[0]) * (1.0 - component_tv[1])
    assert float(per_state_tv(old, new)) == pytest.approx(expected_bound, abs=1e-12)
    assert max(component_tv) <= exact <= expected_bound <= sum(component_tv)


def test_bernoulli_tv_exact() -> None:
    p, q = [0.1, 0.6, 0.5], [0.3, 0.5, 0.9]

    def dist(probs: list[float]) -> BernoulliDistribution:
        return BernoulliDistribution(len(probs)).proba_distribution(th.logit(th.tensor([probs], dtype=F64)))

    expected = _enumerated_product_tv([[1 - v, v] for v in p], [[1 - v, v] for v in q])
    assert float(per_state_tv(dist(p), dist(q))) == pytest.approx(expected, abs=1e-12)
    assert float(per_state_tv(dist(p[:1]), dist(q[:1]))) == pytest.approx(0.2, abs=1e-12)
    assert tv_is_exact(dist(p))


def test_pure_tv_helpers() -> None:
    assert categorical_tv(th.tensor([0.25, 0.75]), th.tensor([0.75, 0.25])).item() == pytest.approx(0.5)
    assert coupling_bound(th.tensor([0.5])).item() == pytest.approx(0.5)
    assert coupling_bound(th.tensor([0.5, 0.5])).item() == pytest.approx(0.75)


def test_mismatched_distributions_are_refused() -> None:
    with pytest.raises(TypeError, match="one class"):
        per_state_tv(_categorical([[0.5, 0.5]]), _gaussian([[0.0]], [0.0]))


def test_epsilon_penalty_and_lower_bound() -> None:
    assert bound_epsilon(th.tensor([[0.5, -2.0], [1.0, 0.0]])) == 2.0
    with pytest.raises(ValueError, match="at least one advantage"):
        bound_epsilon(th.zeros(0))
    assert penalty_coefficient(0.5, 0.9) == pytest.approx(4 * 0.5 * 0.9 / 0.01)
    assert penalty_coefficient(1.0, 0.0) == 0.0
    for gamma in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="gamma"):
            penalty_coefficient(1.0, gamma)
    with pytest.raises(ValueError, match="epsilon"):
        penalty_coefficient(-1.0, 0.9)
    assert lower_bound(0.3, 10.0, 0.01) == pytest.approx(0.2)
