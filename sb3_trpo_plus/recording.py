"""
What TRPOPlus logs: the keys of one iteration (the trust-region step's diagnostics, the critic
fit, sb3-contrib's keys so that dashboards written for TRPO keep working) and of vine branching.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import explained_variance

from sb3_trpo_plus import bound
from sb3_trpo_plus.trust_region import StepResult


def record_iteration(
    logger: Logger,
    step: StepResult,
    value_losses: list[float] | None,
    ess: float | None,
    rollout_buffer: RolloutBuffer,
    policy: BasePolicy,
    rejected_steps: int,
    n_updates: int,
    stats: Mapping[str, float],
    verbose: int = 0,
) -> None:
    """
    Record one iteration.

    :param step: the trust-region step
    :param value_losses: the loss of every minibatch of the critic fit (None when it was skipped)
    :param ess: effective sample size of the surrogate's importance weights after the step (None:
        the estimator has none, and ``train/is_ess`` is not logged)
    :param rollout_buffer: the iteration's rollout (explained variance of its returns by its values)
    :param policy: the policy (the mean standard deviation of a Gaussian policy is logged)
    :param rejected_steps: number of rejected steps since the model was built
    :param n_updates: number of updates since the model was built
    :param stats: what the surrogate's estimator measured, logged under ``train/``
    :param verbose: 1 or more: a rejected step is printed
    """
    if not step.accepted and verbose >= 1:
        print(f"TRPOPlus: trust-region step rejected ({step.reason}); policy parameters kept")
    explained_var = explained_variance(rollout_buffer.values.flatten(), rollout_buffer.returns.flatten())
    log_std = getattr(policy, "log_std", None)
    std = th.exp(log_std).mean().item() if isinstance(log_std, th.Tensor) else None
    record = logger.record
    if value_losses is None:
        record("train/critic_fit_skipped", 1)
    record("train/kl", step.kl)
    record("train/surrogate_gain", step.surrogate_gain)
    record("train/expected_gain", step.expected_gain)
    record("train/line_search_steps", step.line_search_steps)
    record("train/line_search_success", float(step.accepted))
    record("train/cg_residual", step.cg_residual)
    record("train/cg_iterations", step.cg_iterations)
    record("train/step_fraction", step.step_fraction)
    record("train/rejected_steps", rejected_steps)
    if ess is not None:
        record("train/is_ess", ess)
    if value_losses:
        record("train/value_loss", float(np.mean(value_losses)))
    record("train/explained_variance", explained_var)
    # sb3-contrib's keys, so dashboards and scripts written for TRPO keep working
    record("train/kl_divergence_loss", step.kl)
    record("train/is_line_search_success", float(step.accepted))
    if std is not None:
        record("train/std", std)
    record("train/n_updates", n_updates, exclude="tensorboard")
    for key, value in stats.items():
        record(f"train/{key}", value)


def bound_diagnostics(step: StepResult, epsilon: float, gamma: float) -> dict[str, float]:
    """
    Theorem 1's quantities for the step just taken (:mod:`sb3_trpo_plus.bound`): ``kl_max``
    (D_KL^max(pi_old, pi_new), joint over action dimensions), ``tv_max``, ``bound_epsilon`` (eps in
    the surrogate's scale), ``bound_penalty_c`` (C = 4 eps gamma / (1 - gamma)^2) and
    ``bound_lower`` (the surrogate gain in the paper's scale, gain / (1 - gamma), minus C * kl_max).
    C and the bound are nan at gamma = 1 (C infinite) or when eps is unknown.

    :param step: the step (its ``kl_max``, ``tv_max`` and ``surrogate_gain``)
    :param epsilon: max |A| over the batch, in the surrogate's scale
    :param gamma: the discount factor
    """
    penalty = lower = math.nan
    if gamma < 1.0 and math.isfinite(epsilon):
        penalty = bound.penalty_coefficient(epsilon, gamma)
        lower = bound.lower_bound(step.surrogate_gain / (1.0 - gamma), penalty, step.kl_max)
    return {
        "kl_max": step.kl_max,
        "tv_max": step.tv_max,
        "bound_epsilon": epsilon,
        "bound_penalty_c": penalty,
        "bound_lower": lower,
    }


def record_bound(logger: Logger, step: StepResult, epsilon: float, gamma: float) -> None:
    """Record :func:`bound_diagnostics` under ``train/``."""
    for key, value in bound_diagnostics(step, epsilon, gamma).items():
        logger.record(f"train/{key}", value)


def record_branching(logger: Logger, branch_steps: int, trunk_steps: int, stats: Mapping[str, float]) -> None:
    """Record a vine rollout: branch steps, their share of the budget, and the sampler's statistics."""
    logger.record("rollout/branch_steps", branch_steps)
    logger.record("rollout/branch_fraction", branch_steps / max(1, branch_steps + trunk_steps))
    for key in (
        "rollout_set_size",
        "branch_length_mean",
        "replayed_steps",
        "q_value_mean",
        "critic_targets_from_branches",
        "branch_probe_count",
        "branch_probe_max_diff",
    ):
        if key in stats:
            logger.record(f"rollout/{key}", stats[key])
