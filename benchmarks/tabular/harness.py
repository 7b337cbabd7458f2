"""
Run every check of :mod:`benchmarks.tabular.checks` and both step rules of
:mod:`benchmarks.tabular.steps` on many random MDPs and policy pairs, and summarise: the largest
violation of each bound (the smallest slack, which must stay >= -1e-10), the largest error of each
identity, and how much smaller Theorem 1's penalty makes a step than the mean-KL constraint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from benchmarks.tabular.checks import cpi_slack, identity_error, surrogate_errors, surrogate_gradient_error, theorem1_slacks
from benchmarks.tabular.mdp import evaluate, random_mdp, softmax
from benchmarks.tabular.steps import iterate

PERTURBATIONS = (0.003, 0.03, 0.3, 1.0, 3.0)  # std of the logit noise from pi to pi~
MIXTURE_ALPHAS = (0.01, 0.1, 0.3, 0.6, 0.9, 1.0)
CONCENTRATIONS = (0.1, 1.0)  # transition rows: nearly deterministic, and spread


@dataclass(frozen=True)
class HarnessConfig:
    """
    :param n_mdps: random MDPs per discount factor
    :param n_states: S
    :param n_actions: A
    :param gammas: the discount factors
    :param n_iterations: steps of each rule from the same start, per MDP
    :param delta: the mean-KL radius of the constraint
    :param seed: seed of the NumPy generator
    """

    n_mdps: int = 40
    n_states: int = 8
    n_actions: int = 4
    gammas: tuple[float, ...] = (0.5, 0.9, 0.99)
    n_iterations: int = 10
    delta: float = 0.01
    seed: int = 0


@dataclass
class Extremes:
    """The worst value seen of every check: the smallest slack of a bound, the largest error of an identity."""

    slacks: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def slack(self, name: str, value: float) -> None:
        self.slacks[name] = min(self.slacks.get(name, math.inf), value)
        self.counts[name] = self.counts.get(name, 0) + 1

    def error(self, name: str, value: float) -> None:
        self.errors[name] = max(self.errors.get(name, 0.0), value)
        self.counts[name] = self.counts.get(name, 0) + 1


@dataclass(frozen=True)
class StepComparison:
    """
    Penalty against constraint on one MDP, first step from the same start and after n steps.

    :param gamma: the discount factor
    :param beta_ratio: log10(beta_constraint / beta_penalty) of the first step
    :param kl_ratio: log10(mean KL_constraint / mean KL_penalty) of the first step
    :param eta_gain_penalty: eta after n penalised steps minus eta at the start
    :param eta_gain_constraint: the same for the constrained steps
    """

    gamma: float
    beta_ratio: float
    kl_ratio: float
    eta_gain_penalty: float
    eta_gain_constraint: float


@dataclass
class Report:
    config: HarnessConfig
    extremes: Extremes
    steps: list[StepComparison]


def _check_pairs(
    extremes: Extremes, mdp_index: int, rng: np.random.Generator, config: HarnessConfig, gamma: float
) -> np.ndarray:
    """The policy-pair and mixture checks on one random MDP; returns the starting logits."""
    mdp = random_mdp(rng, config.n_states, config.n_actions, gamma, CONCENTRATIONS[mdp_index % len(CONCENTRATIONS)])
    logits = rng.normal(scale=1.0 + mdp_index % 3, size=(config.n_states, config.n_actions))
    old = evaluate(mdp, softmax(logits))
    shape = logits.shape
    candidates = [softmax(logits + sigma * rng.normal(size=shape)) for sigma in PERTURBATIONS]
    candidates.append(softmax(rng.normal(scale=2.0, size=shape)))  # an unrelated policy
    for new_policy in candidates:
        extremes.error("identity eq. (2)", identity_error(mdp, old, new_policy))
        kl_slack, tv_slack = theorem1_slacks(mdp, old, new_policy)
        extremes.slack("Theorem 1, KL form (random pairs)", kl_slack)
        extremes.slack("Theorem 1, TV form (random pairs)", tv_slack)
        for name, error in surrogate_errors(old, new_policy, gamma).items():
            extremes.error(f"package surrogate = (1-gamma)(L - eta), {name}", error)
    greedy = np.eye(config.n_actions)[old.advantages.argmax(axis=1)]
    for other in (softmax(rng.normal(scale=2.0, size=shape)), greedy):
        for alpha in MIXTURE_ALPHAS:
            extremes.slack("CPI mixture bound eq. (6)", cpi_slack(mdp, old, other, alpha))
            if alpha < 1.0:
                mixture = (1.0 - alpha) * old.policy + alpha * other
                kl_slack, tv_slack = theorem1_slacks(mdp, old, mixture)
                extremes.slack("Theorem 1, KL form (mixtures)", kl_slack)
                extremes.slack("Theorem 1, TV form (mixtures)", tv_slack)
    extremes.error("gradient of package surrogate = (1-gamma) grad eta", surrogate_gradient_error(mdp, logits))
    return logits


def _compare_steps(
    extremes: Extremes, rng: np.random.Generator, config: HarnessConfig, gamma: float, logits: np.ndarray, mdp_index: int
) -> StepComparison:
    mdp = random_mdp(rng, config.n_states, config.n_actions, gamma, CONCENTRATIONS[mdp_index % len(CONCENTRATIONS)])
    penalty = iterate(mdp, logits, "penalty", config.n_iterations, config.delta)
    constraint = iterate(mdp, logits, "constraint", config.n_iterations, config.delta)
    for rule, steps in (("penalty", penalty), ("constraint", constraint)):
        current = logits
        for step in steps:
            kl_slack, tv_slack = theorem1_slacks(mdp, evaluate(mdp, softmax(current)), softmax(step.logits))
            extremes.slack(f"Theorem 1, KL form ({rule} steps)", kl_slack)
            extremes.slack(f"Theorem 1, TV form ({rule} steps)", tv_slack)
            current = step.logits
    for step in penalty:
        extremes.slack(
            "penalty step: eta gain >= penalised bound >= 0", min(step.eta_gain - step.penalised_gain, step.penalised_gain)
        )
    first_penalty, first_constraint = penalty[0], constraint[0]
    return StepComparison(
        gamma,
        math.log10(first_constraint.beta / first_penalty.beta) if first_penalty.beta > 0 else math.inf,
        math.log10(first_constraint.mean_kl / first_penalty.mean_kl) if first_penalty.mean_kl > 0 else math.inf,
        sum(step.eta_gain for step in penalty),
        sum(step.eta_gain for step in constraint),
    )


def run(config: HarnessConfig) -> Report:
    """
    Every check on ``config.n_mdps`` random MDPs per discount factor.

    :param config: sizes, discount factors, seed
    :return: the worst value of every check and the step comparisons
    """
    rng = np.random.default_rng(config.seed)
    extremes = Extremes()
    steps = []
    for gamma in config.gammas:
        for index in range(config.n_mdps):
            state = rng.bit_generator.state
            logits = _check_pairs(extremes, index, rng, config, gamma)
            replay = np.random.default_rng()
            replay.bit_generator.state = state  # the same MDP again for the step rules
            steps.append(_compare_steps(extremes, replay, config, gamma, logits, index))
    return Report(config, extremes, steps)


def format_report(report: Report) -> str:
    """The report as plain text: one line per check, then the step comparison per discount factor."""
    config = report.config
    lines = [
        f"{config.n_mdps} random MDPs per gamma, S={config.n_states}, A={config.n_actions}, gammas {list(config.gammas)}, "
        f"seed {config.seed}",
        "",
        "bounds (smallest slack = true eta minus bound; a violation would be < -1e-10):",
    ]
    for name, value in report.extremes.slacks.items():
        lines.append(f"  {name:<55} cases {report.extremes.counts[name]:>6}   smallest slack {value: .3e}")
    lines += ["", "identities (largest absolute error):"]
    for name, value in report.extremes.errors.items():
        lines.append(f"  {name:<70} cases {report.extremes.counts[name]:>6}   largest error {value:.3e}")
    lines += [
        "",
        f"first step along the natural gradient: Theorem 1's penalty against the mean-KL constraint (delta {config.delta}),",
        f"and eta gained by {config.n_iterations} steps of each rule (median [min, max] over MDPs):",
    ]
    for gamma in config.gammas:
        rows = [row for row in report.steps if row.gamma == gamma]
        beta = np.array([row.beta_ratio for row in rows])
        kl = np.array([row.kl_ratio for row in rows])
        gain_ratio = np.array([row.eta_gain_constraint / row.eta_gain_penalty for row in rows if row.eta_gain_penalty > 0])
        lines.append(
            f"  gamma {gamma}: step length {_spread(beta)} orders of magnitude smaller, mean KL {_spread(kl)} orders smaller;"
            f" constraint gains {_spread(gain_ratio, '.3g')} times the penalty's eta gain"
        )
    return "\n".join(lines)


def _spread(values: np.ndarray, fmt: str = ".2f") -> str:
    if values.size == 0:
        return "n/a"
    return f"{np.median(values):{fmt}} [{values.min():{fmt}}, {values.max():{fmt}}]"
