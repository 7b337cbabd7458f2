"""
The settings built once from TRPOPlus's arguments (sb3_trpo_plus.settings) and the step's two
seams (sb3_trpo_plus.step): a constraint and a step rule, each chosen once from the settings
through a registry.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import pytest
import torch as th
from conftest import flat, step_problem
from gymnasium import spaces

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.q import PolicyQ, ScaledQ
from sb3_trpo_plus.settings import FisherMode, Sampling, Settings, StepSettings, SurrogateSettings, build_q
from sb3_trpo_plus.step import (
    CONSTRAINTS,
    STEP_RULES,
    Constraint,
    MeanKL,
    NaturalGradientStep,
    PolicyStep,
    StepProblem,
    StepRule,
    TrustRegionStep,
    register_constraint,
    register_step_rule,
)
from sb3_trpo_plus.surrogate import mean_kl
from sb3_trpo_plus.trust_region import StepResult

# ----------------------------------------------------------------------------- settings


def _arguments(**changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "sampling": "single_path",
        "q": "policy",
        "q_kwargs": None,
        "vine_kwargs": None,
        "normalize_advantage": True,
        "target_kl": 0.01,
        "cg_max_steps": 15,
        "cg_damping": 0.1,
        "line_search_shrinking_factor": 0.8,
        "line_search_max_iter": 10,
        "fisher": "analytic",
        "fvp_subsample": 1.0,
    }
    return {**arguments, **changes}


def test_settings_are_typed_and_know_the_arguments_they_were_built_from() -> None:
    settings = Settings.from_arguments(_arguments(sampling="vine", q="scaled", q_kwargs={"std_scale": 3, "max_weight": 4}))
    assert settings.sampling.sampling is Sampling.VINE and settings.vine is not None
    assert isinstance(settings.q, ScaledQ) and settings.q.std_scale == 3
    assert settings.surrogate == SurrogateSettings(normalize_advantage=True, max_weight=4.0)
    assert settings.step.fisher is FisherMode.ANALYTIC and settings.step.step == "trust_region"
    assert settings.step.kl_constraint == "mean"
    same = _arguments(sampling="vine", q="scaled", q_kwargs={"std_scale": 3, "max_weight": 4})
    assert settings.built_from(same)
    assert not settings.built_from({**same, "target_kl": 0.02})
    assert not settings.built_from({**same, "q_kwargs": {"std_scale": 3}})


def test_max_weight_is_a_surrogate_setting_checked_by_the_one_q_builder() -> None:
    q = build_q("policy", {"max_weight": 5.0}, "single_path")
    assert isinstance(q, PolicyQ) and not hasattr(q, "max_weight")
    with pytest.raises(ValueError, match=r"q_kwargs\['max_weight'\]"):
        build_q("policy", {"max_weight": 0.5}, "single_path")
    with pytest.raises(ValueError, match=r"allowed: .*max_weight"):
        build_q("policy", {"eps": 0.1})


def test_step_settings_refuse_an_unknown_fisher_mode() -> None:
    with pytest.raises(ValueError, match="fisher must be one of"):
        StepSettings(0.01, 10, 0.1, 0.8, 10, "exact", 1.0)  # type: ignore[arg-type]


def test_a_model_builds_its_settings_once_and_again_when_an_argument_changes() -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, seed=0, q_kwargs={"max_weight": 3.0})
    first = model._settings()
    assert model._settings() is first and model.max_weight == 3.0
    model.target_kl = 0.05
    rebuilt = model._settings()
    assert rebuilt is not first and rebuilt.step.target_kl == 0.05 and model._step.settings is rebuilt.step


# ----------------------------------------------------------------------------- the step's seams


def _problem(target_kl: float = 0.01) -> tuple[Any, list[th.nn.Parameter], th.Tensor, Any, StepSettings]:
    policy, params, obs, objective, _ = step_problem(spaces.Discrete(3), 0)
    return policy, params, obs, objective, StepSettings(target_kl, 10, 0.1, 0.8, 10, FisherMode.ANALYTIC, 1.0)


def test_the_defaults_are_the_trust_region_rule_and_the_mean_kl() -> None:
    step = PolicyStep(_problem()[4])
    assert type(step.rule) is TrustRegionStep and isinstance(step.rule, NaturalGradientStep)
    assert type(step.constraint) is MeanKL
    assert STEP_RULES["trust_region"] is TrustRegionStep and CONSTRAINTS["mean"] is MeanKL
    policy, _, obs, _, _ = _problem()
    with th.no_grad():
        new, old = policy.get_distribution(obs), policy.get_distribution(obs * 1.5)
        assert float(step.constraint(new, old)) == float(mean_kl(new, old))


def test_unknown_rules_and_constraints_are_refused_naming_the_setting() -> None:
    settings = _problem()[4]
    with pytest.raises(ValueError, match="step must be one of"):
        PolicyStep(replace(settings, step="penalty"))
    with pytest.raises(ValueError, match="kl_constraint must be one of"):
        PolicyStep(replace(settings, kl_constraint="median"))


def test_a_registered_constraint_is_what_the_line_search_bounds() -> None:
    @register_constraint
    class NeverSatisfied(Constraint):
        name: ClassVar[str] = "never"

        def reduce(self, per_state: th.Tensor) -> th.Tensor:
            return per_state.sum() + 1.0  # above any target_kl < 1

    try:
        policy, params, obs, objective, settings = _problem()
        before = flat(params).clone()
        strict = replace(settings, kl_constraint="never")
        result = PolicyStep(strict)(policy, params, obs, objective)
        assert not result.accepted and result.reason == "KL above target"
        assert th.equal(flat(params), before)  # restored exactly
        accepted = PolicyStep(settings)(policy, params, obs, objective)
        assert accepted.accepted and 0.0 < accepted.kl <= settings.target_kl
    finally:
        del CONSTRAINTS["never"]


def test_a_registered_step_rule_extends_the_natural_gradient_direction() -> None:
    @register_step_rule
    class HalfNaturalGradient(NaturalGradientStep):
        """A fixed step of half the natural-gradient direction (no line search)."""

        name: ClassVar[str] = "half"

        def take(self, problem: StepProblem) -> StepResult:
            natural = self.direction(problem)
            step = 0.5 * natural.direction
            with th.no_grad():
                for param, piece in zip(problem.params, th.split(step, [p.numel() for p in problem.params]), strict=True):
                    param.add_(piece.view_as(param))
            with th.no_grad():
                value, kl = problem.evaluate()
            return StepResult(True, "", kl, value - natural.baseline, 0.0, 0, 0.0, 0, 0.5)

    try:
        policy, params, obs, objective, settings = _problem()
        before = flat(params).clone()
        half = replace(settings, step="half")
        th.manual_seed(1)
        result = PolicyStep(half)(policy, params, obs, objective)
        moved = flat(params) - before
        assert result.accepted and float(moved.norm()) > 0
        assert isinstance(PolicyStep(half).rule, StepRule)
        with th.no_grad():
            per_state = PolicyStep(half).constraint.per_state(policy.get_distribution(obs), policy.get_distribution(obs))
        assert per_state.shape == (64,) and float(per_state.abs().max()) == 0.0
    finally:
        del STEP_RULES["half"]
