"""
Step 2 of the algorithm box: the iteration's surrogate objective L(theta), built from the batch
the sampling scheme returned, as a function of pi_theta's action distribution.

- :func:`single_path_surrogate`: mean[pi_theta / q * A] on the rollout's states and actions
  (q = pi_old), with the advantages normalised as sb3-contrib does;
- :func:`vine_surrogate`: on the rollout set, the exact sum over every branched action or the
  self-normalised importance-sampled estimator of the branches' Q-values;
- :func:`vine_and_trunk_surrogate`: the vine's and the trunk's estimators combined by the
  inverse of their measured gradient variances (``vine_kwargs['estimator']="combined"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_trpo_plus import bound
from sb3_trpo_plus import observations as batches
from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.distributions import actions_for_log_prob, preserved_state
from sb3_trpo_plus.settings import CombinedWeight, Estimator, SurrogateSettings, TrustRegionStates, VineSettings
from sb3_trpo_plus.surrogate import (
    effective_sample_size,
    exact_sum_surrogate,
    importance_sampled_surrogate,
    importance_weights,
    inverse_variance_weight,
    minimum_mse_weight,
    self_normalized_gradient_correction,
    self_normalized_surrogate,
    squared_bias_estimate,
    variance_of_mean,
    variance_upper_bound,
)


@dataclass
class Surrogate:
    """
    The estimated objective of one iteration.

    :param observations: the states the objective and the KL constraint are evaluated on
    :param objective: the surrogate L(theta) as a function of pi_theta's distribution on them
    :param ess: effective sample size of the importance weights under a distribution (None when
        the estimator has no importance weights: every action branched, the exact sum)
    :param invalid: why the batch cannot be used ("" when it can)
    :param constraint_observations: the states of the KL constraint and the Fisher matrix, when
        they are not ``observations`` (vine: the trunk's states)
    :param stats: what the estimator measured, logged under ``train/``
    :param epsilon: Theorem 1's eps, max |A| over the batch's advantages in the surrogate's scale
        (nan without advantages)
    :param score_actions: the actions of ``observations`` whose score gradients make the empirical
        Fisher matrix, when the batch has them (single path; None: drawn from pi_old)
    """

    observations: PyTorchObs
    objective: Callable[[Distribution], th.Tensor]
    ess: Callable[[Distribution], float] | None
    invalid: str
    constraint_observations: PyTorchObs | None = None
    stats: dict[str, float] = field(default_factory=dict)
    epsilon: float = math.nan
    score_actions: th.Tensor | None = None


def standardized_advantages(advantages: th.Tensor, normalize: bool) -> tuple[th.Tensor, float]:
    """
    The advantages, standardised over the batch when ``normalize`` (as sb3-contrib's TRPO does),
    and the scale sigma they were divided by (their standard deviation plus 1e-8; 1 without
    normalisation).
    """
    if not normalize:
        return advantages, 1.0
    std = advantages.std()
    return (advantages - advantages.mean()) / (std + 1e-8), float(std) + 1e-8


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
    advantages, _ = standardized_advantages(batch.advantages, normalize_advantage)

    def objective(distribution: Distribution) -> th.Tensor:
        return importance_sampled_surrogate(distribution.log_prob(actions), log_q, advantages, max_weight)

    def ess(distribution: Distribution) -> float:
        return effective_sample_size(importance_weights(distribution.log_prob(actions), log_q, max_weight))

    finite = bool(th.isfinite(advantages).all())
    return Surrogate(batch.observations, objective, ess, "" if finite else "non-finite advantages")


def vine_value(log_prob: th.Tensor, batch: VineBatch, max_weight: float | None, states: th.Tensor | None = None) -> th.Tensor:
    """
    The vine surrogate from pi_theta's log-probabilities of the batch's rows: the exact sum over
    actions when every action was branched, the self-normalised estimator otherwise.

    :param states: only these rollout-set states (sorted indices; None: all of them)
    """
    q_values, log_q, group, n_groups = batch.q_values, batch.log_q, batch.group, batch.n_states
    if states is not None:
        rows = th.isin(group, states)
        log_prob, q_values, log_q = log_prob[rows], q_values[rows], log_q[rows]
        group, n_groups = th.searchsorted(states, group[rows]), len(states)
    if batch.all_actions:
        return exact_sum_surrogate(log_prob, q_values, group, n_groups)
    return self_normalized_surrogate(log_prob, log_q, q_values, group, n_groups, max_weight)


def vine_ess(log_prob: th.Tensor, batch: VineBatch, max_weight: float | None) -> float:
    """Mean over rollout-set states of the effective sample size of their K importance weights."""
    weights = importance_weights(log_prob, batch.log_q, max_weight).view(batch.n_states, -1)
    return float(np.mean([effective_sample_size(row) for row in weights]))


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
        return vine_value(distribution.log_prob(actions), batch, max_weight)

    def ess(distribution: Distribution) -> float:
        return vine_ess(distribution.log_prob(actions), batch, max_weight)

    finite = bool(th.isfinite(batch.q_values).all())
    weighted = ess if not batch.all_actions else None  # the exact sum has no importance weights
    return Surrogate(batch.observations, objective, weighted, "" if finite else "non-finite Q-values")


def _chunk_gradients(estimates: list[th.Tensor], params: list[nn.Parameter]) -> th.Tensor:
    """The chunk estimates' gradients, one flat row per chunk."""
    gradients = []
    for estimate in estimates:
        pieces = th.autograd.grad(estimate, params, retain_graph=True, allow_unused=True)
        flat = [
            p.new_zeros(p.numel()).cpu() if g is None else g.detach().cpu().flatten()
            for g, p in zip(pieces, params, strict=True)
        ]
        gradients.append(th.cat(flat))
    return th.stack(gradients)


def vine_and_trunk_surrogate(
    vine: VineBatch,
    trunk: Any,
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    action_space: spaces.Space,
    normalize_advantage: bool,
    max_weight: float | None,
    estimator: Estimator,
    trust_region_states: TrustRegionStates,
    combined_weight: CombinedWeight = CombinedWeight.INVERSE_VARIANCE,
    n_chunks: int = 16,
) -> Surrogate:
    """
    The vine iteration's surrogate, with the trunk's states and samples put to work (each part
    an option of ``vine_kwargs``, see :class:`~sb3_trpo_plus.settings.VineSettings`):

    - ``trust_region_states="trunk"``: the KL constraint and the Fisher matrix are measured on
      every trunk state (samples of the same state distribution as the rollout set, and many
      more of them); ``"rollout_set"``: on the rollout set's rows only, with either estimator;
    - ``estimator="combined"``: the objective is (1 - w) L_trunk + w c L_vine / sigma, the
      single-path surrogate of the trunk (advantages normalised as sb3-contrib does, by sigma)
      and the vine surrogate of the rollout set, both estimates of the same policy gradient
      (c = K / (K - 1) with sampled actions, :func:`~sb3_trpo_plus.surrogate.self_normalized_gradient_correction`,
      makes the vine's unbiased at theta_old; 1 with every action branched). The weight
      w = var_trunk / (var_trunk + B_vine) minimises the variance of the combination; each
      variance is that of the estimator's gradient at theta_old, measured on the batch itself
      from ``n_chunks`` interleaved chunks of its samples (rollout-set states for the vine), and
      B_vine is var_vine's 90% upper confidence bound (it rests on few states), logged as
      ``grad_variance_vine_bound`` so that w can be recomputed from the logs;
      ``combined_weight="min_mse"`` adds the vine part's squared bias b^2 to the denominator,
      w = var_trunk / (var_trunk + B_vine + b^2), b^2 = max(0, ||g_vine - g_trunk||^2 - var_trunk
      - var_vine) from the two batch gradients (the trunk's taken as unbiased), logged as
      ``vine_bias_sq``: a vine gradient that disagrees with the trunk's by more than their noise
      explains (a critic-biased one, or one that vanished on saturated rollout-set states) does
      not take over the step.

    :param vine: the rollout set's batch
    :param trunk: the trunk's samples (SB3's rollout samples)
    :param policy: the policy (pi_theta at its current parameters is pi_old)
    :param actor_params: the parameters the gradients are taken in
    :param action_space: the environment's action space
    :param normalize_advantage: normalise the trunk's advantages (sigma = their standard deviation)
    :param max_weight: truncation of the importance weights (``q_kwargs['max_weight']``)
    :param estimator: "combined" or "vine"
    :param trust_region_states: "trunk" or "rollout_set"
    :param combined_weight: "inverse_variance" or "min_mse"
    :param n_chunks: chunks per estimator for the variances
    """
    vine_part = vine_surrogate(vine, action_space, max_weight)
    on_trunk = TrustRegionStates(trust_region_states) is TrustRegionStates.TRUNK
    constraint = trunk.observations if on_trunk else None
    if Estimator(estimator) is Estimator.VINE or vine_part.invalid:
        return replace(vine_part, constraint_observations=constraint)
    advantages, scale = standardized_advantages(trunk.advantages, normalize_advantage)  # scale: sigma
    if not bool(th.isfinite(advantages).all()):  # the trunk's surrogate is unusable: the vine's alone
        return replace(vine_part, constraint_observations=constraint)
    n_vine = len(vine.actions)
    trunk_actions = actions_for_log_prob(trunk.actions, action_space)
    vine_actions = actions_for_log_prob(vine.actions, action_space).to(trunk_actions.dtype)
    actions = th.cat([vine_actions, trunk_actions])
    observations = batches.concat(vine.observations, trunk.observations)

    log_q = trunk.old_log_prob
    vine_cap = None if vine.all_actions else max_weight
    # the vine part is put in the trunk's units (/ sigma) and, with sampled actions, rescaled to be
    # unbiased at theta_old (the self-normalised estimator's expected gradient is (K-1)/K of it);
    # (v * 1.0) / sigma is v / sigma to the bit: the exact sum's arithmetic is unchanged
    correction = 1.0 if vine.all_actions else self_normalized_gradient_correction(n_vine // vine.n_states)

    def trunk_value(log_prob: th.Tensor, rows: slice = slice(None)) -> th.Tensor:
        return importance_sampled_surrogate(log_prob[n_vine:][rows], log_q[rows], advantages[rows], max_weight)

    # the two variances, from chunk gradients at theta_old (interleaved chunks: no random draw)
    with preserved_state(policy.action_dist):  # the graph of this pass is not left on the policy
        log_prob = policy.get_distribution(observations).log_prob(actions)
    trunk_chunks = [trunk_value(log_prob, slice(c, None, n_chunks)) for c in range(min(n_chunks, len(advantages)))]
    states = th.arange(vine.n_states, device=vine.group.device)
    chunk_states = [states[c::n_chunks].contiguous() for c in range(min(n_chunks, vine.n_states))]
    vine_chunks = [
        vine_value(log_prob[:n_vine], vine, vine_cap, chosen) * correction / scale for chosen in chunk_states
    ]
    trunk_gradients = _chunk_gradients(trunk_chunks, actor_params)
    vine_gradients = _chunk_gradients(vine_chunks, actor_params)
    var_trunk = variance_of_mean(trunk_gradients) if len(trunk_chunks) >= 2 else math.inf
    var_vine = variance_of_mean(vine_gradients) if len(vine_chunks) >= 2 else math.inf
    # the rollout set has few states: its variance is weighed at its 90% upper bound, so that a
    # small sample that happens to look precise does not take over the step
    var_vine_bound = variance_upper_bound(var_vine, len(vine_chunks))
    stats: dict[str, float] = {}
    if CombinedWeight(combined_weight) is CombinedWeight.MIN_MSE:
        # the chunks are interleaved and near equal: their mean is the batch's gradient
        bias_sq = squared_bias_estimate(trunk_gradients.mean(0), vine_gradients.mean(0), var_trunk, var_vine)
        weight = minimum_mse_weight(var_trunk, var_vine_bound, bias_sq)
        stats["vine_bias_sq"] = bias_sq
    else:
        weight = inverse_variance_weight(var_trunk, var_vine_bound)

    def objective(distribution: Distribution) -> th.Tensor:
        log_prob = distribution.log_prob(actions)
        vine_part = vine_value(log_prob[:n_vine], vine, vine_cap)
        return (1.0 - weight) * trunk_value(log_prob) + weight * vine_part * correction / scale

    def ess(distribution: Distribution) -> float:
        return vine_ess(distribution.log_prob(actions)[:n_vine], vine, vine_cap)

    stats.update(
        {
            "vine_weight": weight,
            "grad_variance_trunk": var_trunk,
            "grad_variance_vine": var_vine,
            "grad_variance_vine_bound": var_vine_bound,
        }
    )
    # "rollout_set": the KL and the Fisher matrix on the rollout set's states only (not the trunk's)
    weighted = ess if not vine.all_actions else None  # the exact sum has no importance weights
    return Surrogate(observations, objective, weighted, "", constraint if on_trunk else vine.observations, stats)


def iteration_surrogate(
    batch: Any,
    settings: SurrogateSettings,
    vine: VineSettings | None,
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    action_space: spaces.Space,
) -> Surrogate:
    """
    The iteration's surrogate: :func:`single_path_surrogate` of SB3's rollout samples, or, for a
    :class:`~sb3_trpo_plus.buffers.VineBatch`, :func:`vine_and_trunk_surrogate` as the vine
    settings say (:func:`vine_surrogate` alone without the trunk's samples).

    :param batch: the iteration's batch
    :param settings: the surrogate's settings
    :param vine: the vine settings (None in single-path mode)
    :param policy: the policy (pi_theta at its current parameters is pi_old)
    :param actor_params: the parameters the gradients are taken in
    :param action_space: the environment's action space
    """
    trunk = batch.trunk if isinstance(batch, VineBatch) else batch
    epsilon = bound_epsilon_of(trunk, settings.normalize_advantage)
    if not isinstance(batch, VineBatch):
        surrogate = single_path_surrogate(batch, action_space, settings.normalize_advantage, settings.max_weight)
        return replace(surrogate, epsilon=epsilon, score_actions=actions_for_log_prob(batch.actions, action_space))
    if batch.trunk is None or vine is None:
        return vine_surrogate(batch, action_space, settings.max_weight)
    surrogate = vine_and_trunk_surrogate(
        batch,
        batch.trunk,
        policy,
        actor_params,
        action_space,
        settings.normalize_advantage,
        settings.max_weight,
        Estimator(vine.estimator),
        TrustRegionStates(vine.trust_region_states),
        CombinedWeight(vine.combined_weight),
    )
    return replace(surrogate, epsilon=epsilon)


def bound_epsilon_of(samples: Any, normalize_advantage: bool) -> float:
    """
    Theorem 1's eps on the batch: max |A| over the (trunk's) rollout samples' advantages,
    standardised as the surrogate standardises them (so in the surrogate's scale); nan without them.

    :param samples: SB3's rollout samples (None: none)
    :param normalize_advantage: whether the surrogate standardises the advantages
    """
    advantages = getattr(samples, "advantages", None)
    if advantages is None or advantages.numel() == 0:
        return math.nan
    scaled, _ = standardized_advantages(advantages, normalize_advantage)
    return bound.bound_epsilon(scaled) if bool(th.isfinite(scaled).all()) else math.nan
