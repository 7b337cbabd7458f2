"""
Step 3 of the algorithm box as two seams, each chosen once from the
:class:`~sb3_trpo_plus.settings.StepSettings`:

- a **constraint** measures how far pi_theta moved from pi_old on the constraint's states: a
  per-state KL, reduced to one number (:class:`MeanKL`: the mean, the practical algorithm's and
  sb3-contrib's; :class:`MaxKL`: the largest per-state value, the paper's "max KL" variant). A new
  constraint is one :class:`Constraint` subclass (its ``reduce``) plus
  :func:`register_constraint`; ``StepSettings.kl_constraint`` names it.
- a **step rule** turns the natural-gradient direction into new parameters. The trust-region
  rule (:class:`TrustRegionStep`) extends the natural-gradient one
  (:class:`NaturalGradientStep`: g, then s ~ F^-1 g by conjugate gradient on Fisher-vector
  products) with the maximal step sqrt(2 delta / s^T F s) and the backtracking line search on
  the surrogate and the constraint; :class:`FixedNaturalGradientStep` takes a fixed
  ``step_size`` along the direction (the paper's natural-gradient baseline);
  :class:`TheoryPenaltyStep` maximises Theorem 1's penalised bound (Algorithm 1). A new rule is
  one :class:`StepRule` subclass (its :meth:`StepRule.take`) plus :func:`register_step_rule`;
  ``StepSettings.step`` names it.

:class:`PolicyStep` binds both to an SB3 policy: it evaluates pi_theta on the step's states,
builds the Fisher-vector products (:mod:`sb3_trpo_plus.fisher`) and hands a :class:`StepProblem`
to the rule. The numerics are the pure functions of :mod:`sb3_trpo_plus.trust_region`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

import torch as th
from stable_baselines3.common.distributions import Distribution, kl_divergence
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_trpo_plus import bound
from sb3_trpo_plus.distributions import detached, preserved_state
from sb3_trpo_plus.fisher import fisher_product, step_distribution, uses_forward_mode
from sb3_trpo_plus.settings import StepSettings
from sb3_trpo_plus.trust_region import (
    MatVec,
    NaturalGradient,
    StepResult,
    fixed_natural_gradient_update,
    natural_gradient_direction,
    penalized_update,
    trust_region_update,
)

# ----------------------------------------------------------------------------- constraints

CONSTRAINTS: dict[str, type[Constraint]] = {}
"""The constraints by name: ``StepSettings.kl_constraint=<name>`` (see :func:`register_constraint`)."""

ConstraintClass = TypeVar("ConstraintClass", bound="type[Constraint]")


def register_constraint(cls: ConstraintClass) -> ConstraintClass:
    """Make a :class:`Constraint` subclass available under its ``name`` (a class decorator)."""
    CONSTRAINTS[cls.name] = cls
    return cls


class Constraint:
    """
    How far pi_theta is from pi_old: a per-state divergence reduced to one number, compared with
    ``target_kl``. A subclass sets ``name`` and :meth:`reduce` (and may measure per state otherwise).
    """

    name: ClassVar[str] = ""

    def per_state(self, new: Distribution, old: Distribution) -> th.Tensor:
        """
        KL(pi_theta || pi_old) per state, the direction sb3-contrib measures: shape (N,) for
        categorical and multi-categorical policies, (N, d) for Gaussian and Bernoulli ones
        (one entry per action dimension, as SB3's ``kl_divergence`` gives them).
        """
        return kl_divergence(new, old)

    def reduce(self, per_state: th.Tensor) -> th.Tensor:
        """The constraint's value from :meth:`per_state`'s measure."""
        raise NotImplementedError

    def __call__(self, new: Distribution, old: Distribution) -> th.Tensor:
        """The constraint's value between pi_theta (``new``) and pi_old (``old``) on the same states."""
        return self.reduce(self.per_state(new, old))


@register_constraint
class MeanKL(Constraint):
    """The mean over states (and action dimensions) of KL(pi_theta || pi_old): :func:`~sb3_trpo_plus.surrogate.mean_kl`."""

    name: ClassVar[str] = "mean"

    def reduce(self, per_state: th.Tensor) -> th.Tensor:
        return per_state.mean()


@register_constraint
class MaxKL(Constraint):
    """
    The largest KL(pi_theta || pi_old) over the states, each state's KL averaged over its action
    dimensions as :class:`MeanKL` averages them (so ``target_kl`` is on the same scale): after an
    accepted step, every state of the batch has moved by at most ``target_kl``.
    """

    name: ClassVar[str] = "max"

    def reduce(self, per_state: th.Tensor) -> th.Tensor:
        return per_state.reshape(per_state.shape[0], -1).mean(dim=1).max()


# ----------------------------------------------------------------------------- step rules


@dataclass(frozen=True)
class StepProblem:
    """
    What a step rule works on, at theta_old.

    :param params: the parameters the step moves (the actor's)
    :param surrogate: L(theta_old), attached to the graph of ``params``
    :param fisher_product: v -> (F + c I) v at theta_old
    :param evaluate: (surrogate, constraint value) at the current values of ``params``; to be
        called without gradient tracking
    :param per_state_kl: the constraint's per-state measure at the current values of ``params``
        (:meth:`Constraint.per_state`), without gradient tracking
    :param cg_x0: the conjugate gradient's starting point
    :param theorem_kl_max: Theorem 1's D_KL^max(pi_old, pi_theta) on the constraint's states at the
        current values of ``params`` (KL of the joint action distribution, from pi_old), without
        gradient tracking
    :param epsilon: Theorem 1's eps, max |A| over the batch's advantages in the surrogate's scale
        (nan: unknown)
    """

    params: list[nn.Parameter]
    surrogate: th.Tensor
    fisher_product: MatVec
    evaluate: Callable[[], tuple[float, float]]
    per_state_kl: Callable[[], th.Tensor]
    cg_x0: th.Tensor
    theorem_kl_max: Callable[[], float] = lambda: math.nan
    epsilon: float = math.nan


STEP_RULES: dict[str, type[StepRule]] = {}
"""The step rules by name: ``StepSettings.step=<name>`` (see :func:`register_step_rule`)."""

StepRuleClass = TypeVar("StepRuleClass", bound="type[StepRule]")


def register_step_rule(cls: StepRuleClass) -> StepRuleClass:
    """Make a :class:`StepRule` subclass available under its ``name`` (a class decorator)."""
    STEP_RULES[cls.name] = cls
    return cls


class StepRule:
    """
    A rule that moves the parameters from theta_old, built once from the settings.

    :param settings: the step's settings
    """

    name: ClassVar[str] = ""

    def __init__(self, settings: StepSettings) -> None:
        self.settings = settings

    def take(self, problem: StepProblem) -> StepResult:
        """Move ``problem.params`` (or leave them exactly at theta_old) and report what was measured."""
        raise NotImplementedError


class NaturalGradientStep(StepRule):
    """
    The natural-gradient direction: g = grad L(theta_old), s ~ F^-1 g by conjugate gradient
    (``cg_max_steps`` iterations) on the Fisher-vector products. The rules that follow this
    direction extend this class: a fixed step along it (:class:`FixedNaturalGradientStep`), the
    trust region's (:class:`TrustRegionStep`) and the theory's penalty (:class:`TheoryPenaltyStep`).
    """

    def direction(self, problem: StepProblem) -> NaturalGradient:
        """g and s ~ F^-1 g at theta_old (no usable direction: its ``reason`` says why)."""
        return natural_gradient_direction(
            problem.params, problem.surrogate, problem.fisher_product, self.settings.cg_max_steps, problem.cg_x0
        )


@register_step_rule
class TrustRegionStep(NaturalGradientStep):
    """
    TRPO's step: along the natural-gradient direction, the maximal step
    sqrt(2 delta / s^T F s), then a backtracking line search accepting the first shrunk step that
    improves the surrogate with the constraint at most ``target_kl``; a rejected step leaves the
    parameters exactly as they were.
    """

    name: ClassVar[str] = "trust_region"

    def take(self, problem: StepProblem) -> StepResult:
        return trust_region_update(
            problem.params,
            self.direction(problem),
            problem.fisher_product,
            problem.evaluate,
            max_kl=self.settings.target_kl,
            shrinking_factor=self.settings.line_search_shrinking_factor,
            line_search_max_iter=self.settings.line_search_max_iter,
        )


@register_step_rule
class FixedNaturalGradientStep(NaturalGradientStep):
    """
    The paper's natural-gradient baseline: theta = theta_old + step_size * s, s ~ F^-1 g, a fixed
    step with no line search and no check of the constraint (``StepSettings.step_size``). Only a
    missing direction or a non-finite result keeps theta_old.
    """

    name: ClassVar[str] = "natural_gradient"

    def take(self, problem: StepProblem) -> StepResult:
        assert self.settings.step_size is not None, "step='natural_gradient' needs step_size"
        natural = self.direction(problem)
        return fixed_natural_gradient_update(problem.params, natural, self.settings.step_size, problem.evaluate)


def surrogate_penalty(epsilon: float, gamma: float) -> float:
    """
    Theorem 1's penalty coefficient in the scale of the package's surrogate: (1 - gamma) * C =
    4 eps gamma / (1 - gamma). The surrogate is a batch mean, an estimate of the expectation over
    the normalised discounted state distribution, i.e. (1 - gamma) times the paper's L (see
    :func:`~sb3_trpo_plus.bound.lower_bound`); maximising L_batch - (1 - gamma) C KL^max is
    maximising the paper's L - C KL^max.

    :param epsilon: max |A| in the surrogate's scale
    :param gamma: the discount factor, in [0, 1)
    """
    return (1.0 - gamma) * bound.penalty_coefficient(epsilon, gamma)


@register_step_rule
class TheoryPenaltyStep(NaturalGradientStep):
    """
    The paper's Algorithm 1: maximise L(theta) - C * D_KL^max(pi_old, pi_theta), C = 4 eps gamma /
    (1 - gamma)^2 with eps = max |A| over the batch, by a line search along the natural-gradient
    direction on the penalised surrogate (:func:`~sb3_trpo_plus.trust_region.penalized_update`;
    C taken in the surrogate's scale, :func:`surrogate_penalty`). A step is accepted only when it
    raises the penalised surrogate; ``target_kl`` is not used.
    """

    name: ClassVar[str] = "theory_penalty"

    def take(self, problem: StepProblem) -> StepResult:
        natural = self.direction(problem)
        if not math.isfinite(problem.epsilon):
            return natural.rejected(problem.params, "non-finite surrogate or KL")
        penalty = surrogate_penalty(problem.epsilon, self.settings.gamma)
        settings = self.settings
        shrink, iterations = settings.line_search_shrinking_factor, settings.line_search_max_iter
        return penalized_update(problem.params, natural, penalty, problem.evaluate, problem.theorem_kl_max, shrink, iterations)


def check_step_names(step: str, kl_constraint: str) -> None:
    """
    Refuse a step rule or a constraint no registry knows.

    :raises ValueError: naming ``step`` or ``kl_constraint`` and the registered names
    """
    _registered(STEP_RULES, step, "step")
    _registered(CONSTRAINTS, kl_constraint, "kl_constraint")


def _registered(registry: dict[str, type], name: str, argument: str) -> type:
    if name not in registry:
        raise ValueError(f"{argument} must be one of {sorted(registry)}, got {name!r}")
    return registry[name]


# ----------------------------------------------------------------------------- on an SB3 policy


class PolicyStep:
    """
    The step rule and the constraint of the settings, chosen once, applied to an SB3 policy.

    :param settings: the step's settings
    :raises ValueError: for a step rule or constraint no registry knows, naming the setting
    """

    def __init__(self, settings: StepSettings) -> None:
        self.settings = settings
        self.rule: StepRule = _registered(STEP_RULES, settings.step, "step")(settings)
        self.constraint: Constraint = _registered(CONSTRAINTS, settings.kl_constraint, "kl_constraint")()

    def __call__(
        self,
        policy: ActorCriticPolicy,
        actor_params: list[nn.Parameter],
        obs: PyTorchObs,
        objective: Callable[[Distribution], th.Tensor],
        constraint_obs: PyTorchObs | None = None,
        epsilon: float = math.nan,
        fisher_actions: th.Tensor | None = None,
    ) -> StepResult:
        """
        Maximise the surrogate under the constraint, by the settings' rule, and measure Theorem 1's
        D_KL^max and D_TV^max of the step on the constraint's states (``kl_max``, ``tv_max``).

        :param policy: the policy (pi_theta at its current parameters is pi_old)
        :param actor_params: the parameters the action distribution depends on (moved by the step)
        :param obs: the states of the objective (and of the constraint, unless ``constraint_obs``)
        :param objective: the surrogate as a function of pi_theta's distribution on ``obs``
        :param constraint_obs: the states of the constraint, the Fisher matrix and the line
            search's measure (None: ``obs``)
        :param epsilon: Theorem 1's eps in the surrogate's scale (``step="theory_penalty"`` needs it)
        :param fisher_actions: the actions taken in the Fisher matrix's states (``fisher="empirical"``;
            None: drawn from pi_old)
        """
        settings = self.settings
        # the step's distributions, attached to the graph of its forward passes, do not outlive it
        with preserved_state(policy.action_dist):
            # SB3 policies keep one distribution object per policy, so each is used before the next is made
            forward_mode = uses_forward_mode(policy, actor_params, settings)
            obs, distribution = step_distribution(policy, obs, forward_mode)
            old_distribution = detached(distribution)
            surrogate = objective(distribution)
            separate = constraint_obs is not None
            if constraint_obs is None:
                constraint_obs, constrained, old_constrained = obs, distribution, old_distribution
            else:
                constraint_obs, constrained = step_distribution(policy, constraint_obs, forward_mode)
                old_constrained = detached(constrained)
            product = fisher_product(
                policy, actor_params, constraint_obs, constrained, old_constrained, settings, fisher_actions
            )

            def per_state_kl() -> th.Tensor:
                return self.constraint.per_state(policy.get_distribution(constraint_obs), old_constrained)

            def evaluate() -> tuple[float, float]:
                new_distribution = policy.get_distribution(obs)
                value = float(objective(new_distribution))
                new_constrained = policy.get_distribution(constraint_obs) if separate else new_distribution
                # the constraint as sb3-contrib measures it, KL(pi_theta || pi_old), so that target_kl
                # means the same (the paper's KL(pi_old || pi_theta) agrees to second order)
                return value, float(self.constraint(new_constrained, old_constrained))

            def theorem_kl_max() -> float:
                return float(bound.kl_max(old_constrained, policy.get_distribution(constraint_obs), joint=True))

            # Start CG from small noise rather than zero, as sb3-contrib does (same random stream).
            x0 = 1e-4 * th.randn(sum(p.numel() for p in actor_params), device=policy.device)
            problem = StepProblem(actor_params, surrogate, product, evaluate, per_state_kl, x0, theorem_kl_max, epsilon)
            result = self.rule.take(problem)
            with th.no_grad():
                new_constrained = policy.get_distribution(constraint_obs)
                kl_max = float(bound.kl_max(old_constrained, new_constrained, joint=True))
                try:
                    tv_max = float(bound.tv_max(old_constrained, new_constrained))
                except TypeError:  # a distribution class without a total variation
                    tv_max = math.nan
            return replace(result, kl_max=kl_max, tv_max=tv_max)


def take_step(
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    obs: PyTorchObs,
    objective: Callable[[Distribution], th.Tensor],
    settings: StepSettings,
    constraint_obs: PyTorchObs | None = None,
    epsilon: float = math.nan,
    fisher_actions: th.Tensor | None = None,
) -> StepResult:
    """One step with the settings' rule and constraint (:class:`PolicyStep`, built for this call)."""
    return PolicyStep(settings)(policy, actor_params, obs, objective, constraint_obs, epsilon, fisher_actions)
