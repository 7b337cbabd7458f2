"""
Importance-sampled surrogate objectives and the KL trust region (Schulman et al. 2015, eq. 14).

For states s from the old policy's visitation distribution and actions a drawn from a sampling
distribution q, the surrogate is

    L(theta) = E[ pi_theta(a|s) / q(a|s) * A(s, a) ]

and the constraint is the mean over states of KL(pi_theta || pi_old) <= delta, measured as
sb3-contrib's TRPO measures it (the paper writes KL(pi_old || pi_theta): the two directions have
the same Hessian at theta_old, the Fisher matrix, so the natural-gradient step is the same; see
:func:`mean_kl`). The functions here are pure tensor maps; the algorithm decides which estimator
goes with which sampling scheme.
"""

from __future__ import annotations

import math

import numpy as np
import torch as th
from stable_baselines3.common.distributions import Distribution, kl_divergence


def importance_weights(log_prob: th.Tensor, log_q: th.Tensor, max_weight: float | None = None) -> th.Tensor:
    """
    pi_theta(a|s) / q(a|s) from log-probabilities, truncated at ``max_weight`` = c when given.

    A truncated weight has the value c and keeps a gradient: it is c * w / stopgrad(w), whose
    gradient is c * grad log pi_theta(a|s) (a plain clamp would give it none, and the truncated
    actions would leave the step's direction). At theta_old the estimators' gradients are then the
    untruncated ones with every action's weight w replaced by min(w, c): for the self-normalised
    estimator with many actions, the policy gradient of the actions weighted by
    rho(a|s) proportional to min(pi_old(a|s), c q(a|s)) instead of pi_old(a|s) (see docs/q.md).
    """
    log_ratio = log_prob - log_q
    weights = th.exp(log_ratio)
    if max_weight is None:
        return weights
    truncated = max_weight * th.exp(log_ratio - log_ratio.detach())  # the value c, the gradient c grad log pi
    return th.where(weights > max_weight, truncated, weights)


def importance_sampled_surrogate(
    log_prob: th.Tensor, log_q: th.Tensor, advantages: th.Tensor, max_weight: float | None = None
) -> th.Tensor:
    """
    Mean of pi_theta/q times the advantage (or Q-value): the single-path estimator, and the
    vine estimator when every branch carries its own weight.
    """
    return (importance_weights(log_prob, log_q, max_weight) * advantages).mean()


def exact_sum_surrogate(log_prob: th.Tensor, q_values: th.Tensor, group: th.Tensor, n_groups: int) -> th.Tensor:
    """
    The vine surrogate when every action of a finite space was branched: for every rollout-set
    state n, L_n = sum_k pi_theta(a_k|s_n) Q(s_n, a_k), averaged over states. No importance
    weights, and no baseline needed (a constant added to Q adds a constant to L_n).

    :param group: index of the rollout-set state of every (state, action) row, in [0, n_groups)
    """
    per_state = th.zeros(n_groups, dtype=q_values.dtype, device=q_values.device)
    return per_state.index_add(0, group, th.exp(log_prob) * q_values).mean()


def self_normalized_surrogate(
    log_prob: th.Tensor,
    log_q: th.Tensor,
    q_values: th.Tensor,
    group: th.Tensor,
    n_groups: int,
    max_weight: float | None = None,
) -> th.Tensor:
    """
    Self-normalised importance-sampling surrogate of the vine scheme: for every rollout-set
    state n with sampled actions a_{n,k},

        L_n = sum_k w_k Q(s_n, a_k) / sum_k w_k,   w_k = pi_theta(a_k|s_n) / q(a_k|s_n),

    averaged over states. Adding a constant to Q leaves L_n's gradient unchanged, so no
    baseline is needed.

    :param group: index of the rollout-set state of every (state, action) row, in [0, n_groups)
    """
    weights = importance_weights(log_prob, log_q, max_weight)
    numerator = th.zeros(n_groups, dtype=weights.dtype, device=weights.device).index_add_(0, group, weights * q_values)
    denominator = th.zeros(n_groups, dtype=weights.dtype, device=weights.device).index_add_(0, group, weights)
    return (numerator / denominator).mean()


def self_normalized_gradient_correction(n_actions: int) -> float:
    """
    K / (K - 1): the factor that makes the self-normalised estimator's gradient at theta_old
    unbiased when its K actions per state are drawn from q. At theta_old its gradient is
    (1/K) sum_k w_k grad log pi_k (Q_k - Qbar) / mean_k w_k; each action's Q_k also sits in the
    mean Qbar with weight 1/K, so the expected gradient is (K - 1)/K of the policy gradient
    (exactly so for q = pi_old; to first order in 1/K for another q), in the right direction.

    :param n_actions: K, the actions per state (>= 2)
    """
    if n_actions < 2:
        raise ValueError(f"the self-normalised estimator needs at least 2 actions per state, got {n_actions}")
    return n_actions / (n_actions - 1)


def variance_of_mean(chunk_estimates: th.Tensor) -> float:
    """
    Total variance (trace of the covariance) of the mean of B independent, equally sized chunk
    estimates of a vector: sum_j ||g_j - g_bar||^2 / (B (B - 1)), g_j the estimate of chunk j
    (row j of ``chunk_estimates``, shape (B, d), B >= 2). It is the variance of the estimate the
    whole batch gives, measured from the batch itself.
    """
    count = chunk_estimates.shape[0]
    if count < 2:
        raise ValueError(f"variance_of_mean needs at least 2 chunk estimates, got {count}")
    deviations = chunk_estimates - chunk_estimates.mean(dim=0, keepdim=True)
    return float((deviations * deviations).sum()) / (count * (count - 1))


def chi2_quantile(probability: float, dof: int) -> float:
    """
    The ``probability`` quantile of the chi-square distribution with ``dof`` degrees of freedom,
    by the Wilson-Hilferty approximation (relative error below 7% at 2 degrees of freedom and below
    1% from 3 on, for the quantiles used here; 67% too small at 1, where the bound is looser).
    """
    if dof < 1 or not 0.0 < probability < 1.0:
        raise ValueError(f"chi2_quantile needs dof >= 1 and a probability in (0, 1), got {dof} and {probability}")
    z = float(th.special.ndtri(th.tensor(probability, dtype=th.float64)))
    term = 1.0 - 2.0 / (9.0 * dof) + z * math.sqrt(2.0 / (9.0 * dof))
    return dof * max(term, 0.0) ** 3


def variance_upper_bound(variance: float, n_chunks: int, confidence: float = 0.9) -> float:
    """
    A one-sided ``confidence`` upper bound on a variance estimated from ``n_chunks`` chunk
    estimates (n_chunks - 1 degrees of freedom, the chi-square bound of a Gaussian sample
    variance): the estimate times (n - 1) / chi2_{1 - confidence}(n - 1). With few chunks an
    estimated variance can be far too small; the bound keeps a small sample from looking precise.
    """
    if n_chunks < 2:
        return math.inf
    quantile = chi2_quantile(1.0 - confidence, n_chunks - 1)
    return math.inf if quantile <= 0.0 else variance * (n_chunks - 1) / quantile


def inverse_variance_weight(variance_a: float, variance_b: float) -> float:
    """
    The weight w of estimate b in (1 - w) a + w b that minimises the variance of the combination
    of two independent unbiased estimates of the same vector: w = var_a / (var_a + var_b)
    (0.5 when both variances are 0; a non-finite variance gets no weight).
    """
    finite_a, finite_b = bool(np.isfinite(variance_a)), bool(np.isfinite(variance_b))
    if not finite_b:
        return 0.0
    if not finite_a:
        return 1.0
    total = variance_a + variance_b
    return 0.5 if total <= 0.0 else variance_a / total


def squared_bias_estimate(mean_a: th.Tensor, mean_b: th.Tensor, variance_a: float, variance_b: float) -> float:
    """
    An estimate of ||E[b] - E[a]||^2 from one draw of each of two independent estimates of a
    vector, a taken as unbiased: E||b - a||^2 = ||E[b] - E[a]||^2 + var_a + var_b, so
    b^2 = max(0, ||b - a||^2 - var_a - var_b) (unbiased before the clip at 0; 0 with a
    non-finite variance). Positively correlated estimates make it smaller than the truth.
    """
    if not (math.isfinite(variance_a) and math.isfinite(variance_b)):
        return 0.0
    difference = (mean_b - mean_a).double()
    return max(0.0, float((difference * difference).sum()) - variance_a - variance_b)


def minimum_mse_weight(variance_a: float, variance_b: float, bias_sq_b: float) -> float:
    """
    The weight w of estimate b in (1 - w) a + w b that minimises the combination's mean squared
    error when a is unbiased and b has squared bias ``bias_sq_b`` (independent estimates):
    w = var_a / (var_a + var_b + bias_b^2), :func:`inverse_variance_weight` at zero bias.
    """
    return inverse_variance_weight(variance_a, variance_b + bias_sq_b)


def adaptive_branch_share(
    max_share: float, variance_trunk: float, mse_vine: float, trunk_steps: int, branch_steps: int
) -> float:
    """
    The share of the next iteration's environment steps to give the branches, from how much
    gradient information a step of each part bought in this one: rho = (var_trunk * T) /
    (mse_vine * B), the ratio of the vine part's information per branch step to the trunk's per
    trunk step (the variance of a mean falls as one over its steps), and the share is
    ``max_share * clip(rho, 1/4, 1)``. Spending steps on the part with more information per step
    lowers the combination's variance, so the branches keep the full share where one of their steps
    is worth at least a trunk step, and give the trunk back the rest in proportion where it is
    worth less; the floor of a quarter keeps enough rollout-set states to go on measuring.

    :param max_share: the largest share (``vine_kwargs['branch_share']``)
    :param variance_trunk: var_trunk, the variance of the trunk's gradient estimate
    :param mse_vine: the vine part's mean squared error as the combined weight counts it (B_vine,
        plus b^2 with ``combined_weight="min_mse"``)
    :param trunk_steps: T, the environment steps the trunk took
    :param branch_steps: B, the environment steps the branches took
    """
    if not math.isfinite(variance_trunk) or mse_vine == 0.0:  # no trunk measure, or an exact vine part
        ratio = 1.0
    elif not math.isfinite(mse_vine) or trunk_steps <= 0 or branch_steps <= 0:  # no vine measure
        ratio = 0.0
    else:
        ratio = variance_trunk * trunk_steps / (mse_vine * branch_steps)
    return max_share * min(1.0, max(0.25, ratio))


def effective_sample_size(weights: th.Tensor) -> float:
    """
    Kish's effective sample size (sum w)^2 / sum w^2 as a fraction of the number of weights:
    1.0 when all weights are equal, close to 0 when one weight dominates.
    """
    total = weights.sum()
    squares = (weights * weights).sum()
    if squares <= 0:
        return 0.0
    return float(total * total / squares) / weights.numel()


def mean_kl(new: Distribution, old: Distribution) -> th.Tensor:
    """
    Mean KL(new(.|s) || old(.|s)) over states: called as ``mean_kl(pi_theta, pi_old)``, the
    trust region's KL(pi_theta || pi_old), the direction sb3-contrib's TRPO measures
    (``kl_divergence(distribution, old_distribution)``), so that a ``target_kl`` tuned for it
    means the same here. The paper writes KL(pi_old || pi_theta); both directions vanish with
    their gradient at theta_old and have the same Hessian there, the Fisher matrix (so the
    Fisher-vector products and the natural-gradient step are the same), and differ at third
    order, which can change a line-search decision near ``target_kl``.

    SB3's ``kl_divergence`` gives Gaussian and Bernoulli KLs per action dimension and sums those
    of a multi-categorical's components, and the mean is taken over all entries: for a Gaussian
    or Bernoulli policy over d action dimensions this is the KL of the joint distribution
    divided by d.

    :param new: pi_theta's distribution on the states (the first argument of the KL)
    :param old: pi_old's distribution on the same states (the second argument)
    """
    return kl_divergence(new, old).mean()
