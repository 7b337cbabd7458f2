"""
The theory of the paper on exact finite MDPs (benchmarks/tabular): the identity eq. (2), the
package's surrogate as the paper's L, Theorem 1 in both forms, Kakade and Langford's mixture bound,
and the penalised step against the constrained one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.tabular.checks import (  # noqa: E402
    cpi_slack,
    identity_error,
    package_surrogates,
    surrogate_gradient_error,
    theorem1_slacks,
)
from benchmarks.tabular.harness import HarnessConfig, Report, format_report, run  # noqa: E402
from benchmarks.tabular.mdp import FiniteMDP, evaluate, local_approximation, random_mdp, softmax  # noqa: E402
from benchmarks.tabular.steps import (  # noqa: E402
    cg_direction,
    constrained_step,
    iterate,
    package_rule_step,
    penalised_step,
)

TOLERANCE = 1e-10  # a bound holds when its slack is >= -TOLERANCE (rounding only)
GAMMAS = (0.5, 0.9, 0.99)


@pytest.fixture(scope="module")
def report() -> Report:
    return run(HarnessConfig(n_mdps=2, n_states=5, n_actions=3, gammas=GAMMAS, n_iterations=3, seed=1))


def test_exact_evaluation_of_a_one_state_mdp() -> None:
    mdp = FiniteMDP(np.ones((1, 2, 1)), np.array([[1.0, 3.0]]), 0.9, np.ones(1))
    policy = np.array([[0.25, 0.75]])
    evaluation = evaluate(mdp, policy)
    assert evaluation.eta == pytest.approx(2.5 / 0.1)
    assert evaluation.visitation == pytest.approx([10.0])
    assert evaluation.advantages == pytest.approx(np.array([[-1.5, 0.5]]))
    assert float((policy * evaluation.advantages).sum()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_visitation_mass_and_first_order_match(gamma: float) -> None:
    rng = np.random.default_rng(3)
    mdp = random_mdp(rng, 5, 3, gamma)
    logits = rng.normal(size=(5, 3))
    old = evaluate(mdp, softmax(logits))
    assert old.visitation.sum() == pytest.approx(1.0 / (1.0 - gamma), rel=1e-12)
    assert local_approximation(old, old.policy) == pytest.approx(old.eta, abs=1e-12)
    assert surrogate_gradient_error(mdp, logits) < 1e-7 * max(1.0, abs(old.eta))


def test_package_surrogates_equal_the_papers_l(report: Report) -> None:
    rng = np.random.default_rng(4)
    mdp = random_mdp(rng, 4, 3, 0.9)
    old = evaluate(mdp, softmax(rng.normal(size=(4, 3))))
    new = softmax(rng.normal(size=(4, 3)))
    target = 0.1 * (local_approximation(old, new) - old.eta)  # (1 - gamma) (L - eta)
    values = package_surrogates(old, new, 0.9)
    assert set(values) == {"single_path", "uniform_q", "vine_exact_sum", "vine_self_normalized"}
    assert values == pytest.approx(dict.fromkeys(values, target), abs=1e-13)
    surrogate_errors = {k: v for k, v in report.extremes.errors.items() if k.startswith("package surrogate")}
    assert len(surrogate_errors) == 4
    assert max(surrogate_errors.values()) < 1e-12


def test_identity_and_gradient_hold_on_every_case(report: Report) -> None:
    assert report.extremes.errors["identity eq. (2)"] < 1e-10
    assert report.extremes.errors["gradient of package surrogate = (1-gamma) grad eta"] < 1e-7


def test_no_bound_is_violated(report: Report) -> None:
    expected = {
        f"Theorem 1, {form} form ({cases})"
        for form in ("KL", "TV")
        for cases in ("random pairs", "mixtures", "penalty steps", "constraint steps")
    } | {"CPI mixture bound eq. (6)", "penalty step: eta gain >= penalised bound >= 0"}
    assert set(report.extremes.slacks) == expected
    for name, slack in report.extremes.slacks.items():
        assert slack >= -TOLERANCE, name
    assert all(count > 0 for count in report.extremes.counts.values())
    assert "smallest slack" in format_report(report)


def test_the_bounds_are_not_vacuous() -> None:
    """Without the penalty the checks fail: a large step makes eta fall below L; equal policies give zero slack."""
    rng = np.random.default_rng(5)
    mdp = random_mdp(rng, 5, 3, 0.9)
    logits = rng.normal(size=(5, 3))
    old = evaluate(mdp, softmax(logits))
    assert theorem1_slacks(mdp, old, old.policy) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert cpi_slack(mdp, old, softmax(rng.normal(size=(5, 3))), 0.0) == pytest.approx(0.0, abs=1e-12)
    assert identity_error(mdp, old, old.policy) < 1e-12
    below = [
        evaluate(mdp, softmax(logits + beta * old.advantages)).eta
        - local_approximation(old, softmax(logits + beta * old.advantages))
        for beta in (1.0, 3.0, 10.0)
    ]
    assert min(below) < -1e-3  # L overestimates eta for large steps: the penalty term is needed


def test_cg_finds_the_tabular_natural_gradient() -> None:
    rng = np.random.default_rng(6)
    mdp = random_mdp(rng, 5, 3, 0.9)
    old = evaluate(mdp, softmax(rng.normal(size=(5, 3))))
    direction = cg_direction(old, 0.9)
    centred = direction - direction.mean(axis=1, keepdims=True)
    expected = old.advantages - old.advantages.mean(axis=1, keepdims=True)
    assert centred == pytest.approx(expected, abs=1e-9)


def test_penalised_steps_improve_eta_monotonically_and_constraint_bounds_mean_kl() -> None:
    rng = np.random.default_rng(7)
    mdp = random_mdp(rng, 5, 3, 0.9)
    logits = rng.normal(size=(5, 3))
    etas = [evaluate(mdp, softmax(logits)).eta]
    for step in iterate(mdp, logits, "penalty", 4):
        assert step.beta > 0.0
        assert step.eta_gain >= step.penalised_gain - TOLERANCE
        assert step.penalised_gain > 0.0
        etas.append(etas[-1] + step.eta_gain)
    assert np.all(np.diff(etas) > 0.0)
    constrained = constrained_step(mdp, logits, delta=0.01)
    assert 0.0 < constrained.mean_kl <= 0.01
    assert constrained.beta > penalised_step(mdp, logits).beta


def test_the_theory_shrinks_the_step_more_as_gamma_grows(report: Report) -> None:
    medians = []
    for gamma in GAMMAS:
        rows = [row for row in report.steps if row.gamma == gamma]
        assert all(row.beta_ratio > 0.0 and row.kl_ratio > 0.0 for row in rows)
        assert all(row.eta_gain_constraint > row.eta_gain_penalty > 0.0 for row in rows)
        medians.append(float(np.median([row.beta_ratio for row in rows])))
    assert medians[0] < medians[1] < medians[2]
    assert medians[2] > 2.0  # at gamma = 0.99 the penalised step is over 100 times shorter


def test_iterate_refuses_an_unknown_rule() -> None:
    mdp = random_mdp(np.random.default_rng(8), 2, 2, 0.5)
    with pytest.raises(ValueError, match="rule"):
        iterate(mdp, np.zeros((2, 2)), "fixed", 1)


# ----------------------------------------------------------------------------- the package's step rules

STEP_OPTIONS: list[dict[str, object]] = [
    {"step": "trust_region"},
    {"step": "trust_region", "kl_constraint": "max"},
    {"step": "natural_gradient", "step_size": 0.03},
    {"step": "natural_gradient", "step_size": 3.0},
    {"step": "theory_penalty"},
]


@pytest.mark.parametrize("gamma", GAMMAS)
def test_theorem_one_holds_for_the_steps_of_every_step_option(gamma: float) -> None:
    rng = np.random.default_rng(11)
    for _ in range(3):
        mdp = random_mdp(rng, 5, 3, gamma)
        logits = rng.normal(size=(5, 3))
        old = evaluate(mdp, softmax(logits))
        for option in STEP_OPTIONS:
            outcome, result = package_rule_step(mdp, logits, delta=0.01, **option)  # type: ignore[arg-type]
            assert result.accepted, (option, result.reason)
            new_policy = softmax(outcome.logits)
            kl_slack, tv_slack = theorem1_slacks(mdp, old, new_policy)
            assert kl_slack >= -TOLERANCE and tv_slack >= -TOLERANCE, option
            assert outcome.eta_gain >= outcome.penalised_gain - TOLERANCE
            kl_new_old = (new_policy * (np.log(new_policy) - np.log(old.policy))).sum(axis=1)
            if option.get("kl_constraint") == "max":
                assert kl_new_old.max() <= 0.01  # every state, not only on average
            elif option["step"] == "trust_region":
                assert (1.0 - gamma) * old.visitation @ kl_new_old <= 0.01
            if option["step"] == "theory_penalty":
                # Algorithm 1: the penalised bound rises, so eta does (monotonic improvement)
                assert outcome.penalised_gain > 0.0 and outcome.eta_gain > 0.0


def test_the_theory_penalty_steps_are_orders_of_magnitude_smaller_than_the_trust_regions() -> None:
    rng = np.random.default_rng(12)
    ratios = {}
    for gamma in GAMMAS:
        mdp = random_mdp(rng, 5, 3, gamma)
        logits = rng.normal(size=(5, 3))
        trust, _ = package_rule_step(mdp, logits, step="trust_region")
        penalty, _ = package_rule_step(mdp, logits, step="theory_penalty")
        ratios[gamma] = np.log10(trust.mean_kl / penalty.mean_kl)
    assert ratios[0.5] < ratios[0.99] and ratios[0.99] > 3.0  # the penalty's KL 1000 times smaller at 0.99
