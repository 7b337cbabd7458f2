"""
The two step rules on exact finite MDPs, along the natural gradient of the tabular softmax policy.

In the logits theta[s, a] of a tabular softmax policy, the normalised surrogate
(1 - gamma) (L_pi(pi_theta) - eta(pi)) has gradient g[s, a] = d(s) pi(a|s) A_pi(s, a) at theta_old,
d = (1 - gamma) rho_pi, and the Hessian of the mean KL over d is block-diagonal,
F_s = d(s) (diag pi(.|s) - pi(.|s) pi(.|s)^T). Since F_s A_pi(s, .) = d(s) pi(.|s) * A_pi(s, .)
(the pi-weighted advantages sum to 0), the natural gradient F^-1 g is the advantage table itself
(Kakade 2002), up to a constant per state that does not change the policy. The package's conjugate
gradient finds it (:func:`cg_direction`).

- Constraint (the practical algorithm): the largest step beta_max = sqrt(2 delta / s^T F s), then
  the package's backtracking line search on the mean KL(pi_old || pi_new) over d (<= delta) and
  the surrogate.
- Penalty (Algorithm 1 of the paper): the step along the same direction that maximises
  L_pi(pi_new) - C * D_KL^max(pi_old, pi_new) over a geometric grid of step lengths (and 0).
  Since the penalised objective equals eta(pi_old) at 0 and, by Theorem 1, is below
  eta(pi_new), every step it takes improves eta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch as th

from benchmarks.tabular.checks import kl_and_tv
from benchmarks.tabular.mdp import Evaluation, FiniteMDP, evaluate, policy_advantage, softmax
from sb3_trpo_plus.bound import penalty_coefficient
from sb3_trpo_plus.settings import FisherMode, StepSettings
from sb3_trpo_plus.step import CONSTRAINTS, STEP_RULES, StepProblem
from sb3_trpo_plus.trust_region import StepResult, backtracking_line_search, conjugate_gradient, max_step_length

GRID_PER_DECADE = 16
GRID_DECADES = 16


@dataclass(frozen=True)
class StepOutcome:
    """
    One step from theta_old to theta_old + beta * direction.

    :param beta: the step length taken (0.0 when no step)
    :param logits: the new logits
    :param mean_kl: mean KL(pi_old || pi_new) over d = (1 - gamma) rho_pi
    :param kl_max: largest per-state KL(pi_old || pi_new)
    :param eta_gain: eta(pi_new) - eta(pi_old)
    :param penalised_gain: L_pi(pi_new) - eta(pi_old) - C * kl_max, Theorem 1's lower bound on the gain
    """

    beta: float
    logits: np.ndarray
    mean_kl: float
    kl_max: float
    eta_gain: float
    penalised_gain: float


def fisher_product(evaluation: Evaluation, gamma: float, vector: th.Tensor) -> th.Tensor:
    """F v for the flattened logits, F the Hessian of the mean KL over d = (1 - gamma) rho_pi."""
    probs = th.as_tensor(evaluation.policy, dtype=th.float64)
    weights = th.as_tensor((1.0 - gamma) * evaluation.visitation, dtype=th.float64)[:, None]
    table = vector.reshape(probs.shape)
    return (weights * probs * (table - (probs * table).sum(dim=1, keepdim=True))).reshape(-1)


def surrogate_gradient(evaluation: Evaluation, gamma: float) -> np.ndarray:
    """g[s, a] = d(s) pi(a|s) A_pi(s, a): the normalised surrogate's gradient in the logits at theta_old."""
    return (1.0 - gamma) * evaluation.visitation[:, None] * evaluation.policy * evaluation.advantages


def cg_direction(evaluation: Evaluation, gamma: float) -> np.ndarray:
    """F^-1 g by the package's conjugate gradient (as many iterations as logits), as an (S, A) table."""
    gradient = th.as_tensor(surrogate_gradient(evaluation, gamma).reshape(-1))
    result = conjugate_gradient(
        lambda v: fisher_product(evaluation, gamma, v), gradient, max_iter=gradient.numel(), residual_tol=1e-26
    )
    return result.solution.numpy().reshape(evaluation.policy.shape)


def _outcome(mdp: FiniteMDP, old: Evaluation, logits: np.ndarray, direction: np.ndarray, beta: float, c: float) -> StepOutcome:
    new_logits = logits + beta * direction
    new_policy = softmax(new_logits)
    kl, _ = kl_and_tv(old.policy, new_policy)
    d = (1.0 - mdp.gamma) * old.visitation
    gain = policy_advantage(old, new_policy)
    return StepOutcome(
        beta,
        new_logits,
        float(d @ kl),
        float(kl.max()),
        evaluate(mdp, new_policy).eta - old.eta,
        gain - c * float(kl.max()),
    )


def largest_step(old: Evaluation, gamma: float, direction: np.ndarray, delta: float) -> float:
    """beta_max = sqrt(2 delta / s^T F s) (the package's :func:`max_step_length`)."""
    flat = th.as_tensor(direction.reshape(-1))
    return max_step_length(flat, fisher_product(old, gamma, flat), delta)


def constrained_step(
    mdp: FiniteMDP, logits: np.ndarray, delta: float = 0.01, shrinking_factor: float = 0.8, max_iter: int = 10
) -> StepOutcome:
    """
    The practical algorithm's step: natural gradient, beta_max, backtracking line search on the
    mean KL (<= delta) and the surrogate, with the package's line search.

    :param mdp: the MDP
    :param logits: theta_old, shape (S, A)
    :param delta: the mean-KL radius
    :param shrinking_factor: line-search shrinking factor
    :param max_iter: line-search candidates
    :return: the step taken
    """
    old = evaluate(mdp, softmax(logits))
    c = penalty_coefficient(float(np.abs(old.advantages).max()), mdp.gamma)
    direction = old.advantages
    beta_max = largest_step(old, mdp.gamma, direction, delta)
    d = (1.0 - mdp.gamma) * old.visitation

    def measure(fraction: float) -> tuple[float, float]:
        new_policy = softmax(logits + fraction * beta_max * direction)
        kl, _ = kl_and_tv(old.policy, new_policy)
        return (1.0 - mdp.gamma) * policy_advantage(old, new_policy), float(d @ kl)

    search = backtracking_line_search(measure, 0.0, delta, shrinking_factor, max_iter)
    return _outcome(mdp, old, logits, direction, search.step_fraction * beta_max, c)


def penalised_step(mdp: FiniteMDP, logits: np.ndarray, delta: float = 0.01) -> StepOutcome:
    """
    Algorithm 1's step along the natural gradient: the step length of a geometric grid (from the
    constrained step's beta_max down by GRID_DECADES decades, GRID_PER_DECADE points a decade,
    and 0) that maximises L_pi(pi_new) - C * D_KL^max(pi_old, pi_new).

    :param mdp: the MDP
    :param logits: theta_old, shape (S, A)
    :param delta: the mean-KL radius that sets the grid's top (the constrained step's beta_max)
    :return: the step taken
    """
    old = evaluate(mdp, softmax(logits))
    c = penalty_coefficient(float(np.abs(old.advantages).max()), mdp.gamma)
    direction = old.advantages
    beta_max = largest_step(old, mdp.gamma, direction, delta)
    log_old = _log_softmax(logits)
    best_beta, best_value = 0.0, 0.0  # the penalised gain is 0 at beta = 0
    for k in range(GRID_DECADES * GRID_PER_DECADE + 1):
        beta = beta_max * 10.0 ** (-k / GRID_PER_DECADE)
        log_new = _log_softmax(logits + beta * direction)
        kl_max = float((old.policy * (log_old - log_new)).sum(axis=1).max())
        value = policy_advantage(old, np.exp(log_new)) - c * kl_max
        if value > best_value:
            best_beta, best_value = beta, value
    return _outcome(mdp, old, logits, direction, best_beta, c)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def iterate(mdp: FiniteMDP, logits: np.ndarray, rule: str, n_iterations: int, delta: float = 0.01) -> list[StepOutcome]:
    """
    ``n_iterations`` steps of one rule ("constraint" or "penalty") from ``logits``.

    :return: the steps, in order
    """
    if rule not in ("constraint", "penalty"):
        raise ValueError(f"rule must be 'constraint' or 'penalty', got {rule!r}")
    steps = []
    for _ in range(n_iterations):
        step = constrained_step(mdp, logits, delta) if rule == "constraint" else penalised_step(mdp, logits, delta)
        steps.append(step)
        logits = step.logits
    return steps


# ----------------------------------------------------------------------------- the package's step rules


def package_rule_step(
    mdp: FiniteMDP,
    logits: np.ndarray,
    step: str = "trust_region",
    kl_constraint: str = "mean",
    step_size: float | None = None,
    delta: float = 0.01,
) -> tuple[StepOutcome, StepResult]:
    """
    One step of a registered step rule of the package (``sb3_trpo_plus.step.STEP_RULES[step]``,
    with the constraint ``CONSTRAINTS[kl_constraint]``) on the exact tabular problem: the
    parameters are the logits, the surrogate is the normalised one, (1 - gamma) sum_s rho_pi(s)
    sum_a pi_theta(a|s) A_pi(s, a) (the scale of the package's batch mean), the Fisher products
    are the exact ones of the mean KL over d = (1 - gamma) rho_pi, the constraint's per-state KL
    is KL(pi_theta || pi_old) (weighted by d for the mean: the mean over d stands for the batch's
    mean over visited states; as it is for the max, over every state), D_KL^max is Theorem 1's
    max_s KL(pi_old || pi_theta) and eps is max |A_pi|.

    :param mdp: the MDP
    :param logits: theta_old, shape (S, A)
    :param step: a name of ``STEP_RULES``
    :param kl_constraint: a name of ``CONSTRAINTS``
    :param step_size: the fixed step length of ``step="natural_gradient"``
    :param delta: ``target_kl``
    :return: the step taken (as :class:`StepOutcome`, ``beta`` the norm of the logits' change) and
        the rule's own report
    """
    old = evaluate(mdp, softmax(logits))
    gamma = mdp.gamma
    d = th.as_tensor((1.0 - gamma) * old.visitation, dtype=th.float64)
    advantages = th.as_tensor(old.advantages, dtype=th.float64)
    old_probs = th.as_tensor(old.policy, dtype=th.float64)
    theta = th.nn.Parameter(th.as_tensor(logits, dtype=th.float64).clone())
    n_states = mdp.n_states

    def surrogate() -> th.Tensor:
        return (d * (th.softmax(theta, dim=1) * advantages).sum(dim=1)).sum()

    def per_state_kl() -> th.Tensor:
        log_new = th.log_softmax(theta, dim=1)
        kl_new_old = (log_new.exp() * (log_new - old_probs.log())).sum(dim=1)
        # the mean's states weighted by d (its plain mean is then the mean over d); the max's as they are
        return n_states * d * kl_new_old if kl_constraint == "mean" else kl_new_old

    settings = StepSettings(
        delta, n_states * 4, 0.0, 0.8, 30, FisherMode.KL_HESSIAN, 1.0, step, kl_constraint, step_size, gamma
    )
    constraint = CONSTRAINTS[kl_constraint]()

    def evaluate_step() -> tuple[float, float]:
        return float(surrogate()), float(constraint.reduce(per_state_kl()))

    def theorem_kl_max() -> float:
        log_new = th.log_softmax(theta, dim=1)
        return float((old_probs * (old_probs.log() - log_new)).sum(dim=1).max())

    problem = StepProblem(
        [theta],
        surrogate(),
        lambda v: fisher_product(old, gamma, v),
        evaluate_step,
        per_state_kl,
        th.zeros(theta.numel(), dtype=th.float64),
        theorem_kl_max,
        float(np.abs(old.advantages).max()),
    )
    result = STEP_RULES[step](settings).take(problem)
    new_logits = theta.detach().numpy().copy()
    c = penalty_coefficient(float(np.abs(old.advantages).max()), gamma)
    change = new_logits - logits
    norm = float(np.linalg.norm(change))
    direction = change / norm if norm > 0 else np.zeros_like(change)
    return _outcome(mdp, old, logits, direction, norm, c), result
