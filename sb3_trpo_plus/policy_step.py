"""
Steps 2 and 3 of the algorithm box on an SB3 policy: the iteration's surrogate objective, built
from the batch the sampling scheme returned, and the trust-region step that maximises it.

- :func:`single_path_surrogate`: mean[pi_theta / q * A] on the rollout's states and actions
  (q = pi_old), with the advantages normalised as sb3-contrib does;
- :func:`vine_surrogate`: on the rollout set, the exact sum over every branched action or the
  self-normalised importance-sampled estimator of the branches' Q-values;
- :func:`trust_region_step`: Fisher-vector products at theta_old (analytic or by double backprop,
  on an ``fvp_subsample`` share of the states), conjugate gradient, maximal step and line search
  (:func:`sb3_trpo_plus.trust_region.natural_gradient_step`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.distributions import detached, distribution_metric, distribution_parameters
from sb3_trpo_plus.surrogate import (
    effective_sample_size,
    exact_sum_surrogate,
    importance_sampled_surrogate,
    importance_weights,
    mean_kl,
    self_normalized_surrogate,
)
from sb3_trpo_plus.trust_region import (
    MatVec,
    StepResult,
    analytic_fisher_vector_product,
    kl_hessian_vector_product,
    natural_gradient_step,
)


@dataclass
class Surrogate:
    """
    The estimated objective of one iteration.

    :param observations: the states the objective and the KL constraint are evaluated on
    :param objective: the surrogate L(theta) as a function of pi_theta's distribution on them
    :param ess: effective sample size of the importance weights under a distribution
    :param invalid: why the batch cannot be used ("" when it can)
    """

    observations: PyTorchObs
    objective: Callable[[Distribution], th.Tensor]
    ess: Callable[[Distribution], float]
    invalid: str


def index_obs(obs: PyTorchObs, index: th.Tensor | slice) -> PyTorchObs:
    """The states ``obs[index]`` of a batch of observations (dict observations included)."""
    if isinstance(obs, dict):
        return {key: value[index] for key, value in obs.items()}
    return obs[index]


def _n_obs(obs: PyTorchObs) -> int:
    if isinstance(obs, dict):
        return len(next(iter(obs.values())))
    return len(obs)


def actions_for_log_prob(actions: th.Tensor, action_space: spaces.Space) -> th.Tensor:
    """Buffer actions in the shape SB3's ``Distribution.log_prob`` takes (flat indices for Discrete)."""
    if isinstance(action_space, spaces.Discrete):
        return actions.long().flatten()
    return actions


def single_path_surrogate(
    batch: Any, action_space: spaces.Space, normalize_advantage: bool, max_weight: float | None
) -> Surrogate:
    """
    The single-path importance-sampled surrogate mean[pi_theta / q * A] (q = pi_old) as a function
    of the policy's action distribution on the batch's states.

    :param batch: the rollout's samples (SB3's ``RolloutBufferSamples`` or its dict variant)
    :param action_space: the environment's action space
    :param normalize_advantage: normalise the advantages over the batch, as sb3-contrib does
    :param max_weight: truncation of the weights (``q_kwargs['max_weight']``; None: sb3-contrib's objective)
    """
    actions = actions_for_log_prob(batch.actions, action_space)
    log_q = batch.old_log_prob  # single path: q = pi_old
    advantages = batch.advantages
    if normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    def objective(distribution: Distribution) -> th.Tensor:
        return importance_sampled_surrogate(distribution.log_prob(actions), log_q, advantages, max_weight)

    def ess(distribution: Distribution) -> float:
        return effective_sample_size(importance_weights(distribution.log_prob(actions), log_q, max_weight))

    finite = bool(th.isfinite(advantages).all())
    return Surrogate(batch.observations, objective, ess, "" if finite else "non-finite advantages")


def vine_surrogate(batch: VineBatch, action_space: spaces.Space, max_weight: float | None) -> Surrogate:
    """
    The vine surrogate on the rollout set: the exact sum over actions when every action of a
    finite space was branched, the self-normalised importance-sampled estimator otherwise (its
    weights, and those of the effective sample size, truncated at ``max_weight`` when given).

    :param batch: the rollout set, its branch actions, log q and Q-values
    :param action_space: the environment's action space
    :param max_weight: truncation of the weights (``q_kwargs['max_weight']``; None: none)
    """
    actions = actions_for_log_prob(batch.actions, action_space)
    max_weight = None if batch.all_actions else max_weight

    def objective(distribution: Distribution) -> th.Tensor:
        log_prob = distribution.log_prob(actions)
        if batch.all_actions:
            return exact_sum_surrogate(log_prob, batch.q_values, batch.group, batch.n_states)
        return self_normalized_surrogate(log_prob, batch.log_q, batch.q_values, batch.group, batch.n_states, max_weight)

    def ess(distribution: Distribution) -> float:
        weights = importance_weights(distribution.log_prob(actions), batch.log_q, max_weight).view(batch.n_states, -1)
        return float(np.mean([effective_sample_size(row) for row in weights]))

    finite = bool(th.isfinite(batch.q_values).all())
    return Surrogate(batch.observations, objective, ess, "" if finite else "non-finite Q-values")


@dataclass(frozen=True)
class StepSettings:
    """
    The trust-region step's arguments of :class:`~sb3_trpo_plus.TRPOPlus` (same names and meaning).
    """

    target_kl: float
    cg_max_steps: int
    cg_damping: float
    line_search_shrinking_factor: float
    line_search_max_iter: int
    fisher: str
    fvp_subsample: float


def fisher_product(
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    obs: PyTorchObs,
    distribution: Distribution,
    old_distribution: Distribution,
    settings: StepSettings,
) -> MatVec:
    """Fisher-vector products at theta_old, on a random ``fvp_subsample`` share of ``obs``."""
    if settings.fvp_subsample < 1.0:
        n_obs = _n_obs(obs)
        size = max(1, math.ceil(settings.fvp_subsample * n_obs))
        index = th.randperm(n_obs, device=policy.device)[:size]
        distribution = policy.get_distribution(index_obs(obs, index))
        old_distribution = detached(distribution)
    if settings.fisher == "kl_hessian":
        kl = mean_kl(distribution, old_distribution)  # its Hessian at theta_old is the Fisher matrix
        return kl_hessian_vector_product(kl, actor_params, settings.cg_damping)
    outputs = distribution_parameters(distribution)
    return analytic_fisher_vector_product(
        outputs, distribution_metric(old_distribution), actor_params, settings.cg_damping, n_samples=len(outputs[0])
    )


def trust_region_step(
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    obs: PyTorchObs,
    objective: Callable[[Distribution], th.Tensor],
    settings: StepSettings,
) -> StepResult:
    """
    Maximise the surrogate under the KL constraint: natural-gradient direction by conjugate
    gradient, maximal step sqrt(2 delta / s^T F s), backtracking line search. A rejected step
    leaves the policy exactly as it was.

    :param policy: the policy (pi_theta at its current parameters is pi_old)
    :param actor_params: the parameters the action distribution depends on (moved by the step)
    :param obs: the states of the objective and of the KL constraint
    :param objective: the surrogate as a function of pi_theta's distribution on ``obs``
    :param settings: the step's arguments
    """
    distribution = policy.get_distribution(obs)
    old_distribution = detached(distribution)
    surrogate = objective(distribution)
    product = fisher_product(policy, actor_params, obs, distribution, old_distribution, settings)

    def evaluate() -> tuple[float, float]:
        new_distribution = policy.get_distribution(obs)
        # the constraint as sb3-contrib measures it, KL(pi_theta || pi_old), so that target_kl
        # means the same (the paper's KL(pi_old || pi_theta) agrees to second order)
        return float(objective(new_distribution)), float(mean_kl(new_distribution, old_distribution))

    # Start CG from small noise rather than zero, as sb3-contrib does (same random stream).
    x0 = 1e-4 * th.randn(sum(p.numel() for p in actor_params), device=policy.device)
    return natural_gradient_step(
        actor_params,
        surrogate,
        product,
        evaluate,
        max_kl=settings.target_kl,
        cg_max_iter=settings.cg_max_steps,
        shrinking_factor=settings.line_search_shrinking_factor,
        line_search_max_iter=settings.line_search_max_iter,
        cg_x0=x0,
    )
