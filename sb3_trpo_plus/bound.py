"""
The quantities of the monotonic-improvement bound (Schulman et al. 2015, Theorem 1) on a batch.

For the current policy pi and a new policy pi~ the theorem says

    eta(pi~) >= L_pi(pi~) - C * D_KL^max(pi, pi~),    C = 4 eps gamma / (1 - gamma)^2,

with eps = max_{s,a} |A_pi(s, a)| and D_KL^max the largest KL(pi(.|s) || pi~(.|s)) over states;
its first form uses alpha = D_TV^max, the largest total variation, in place of D_KL^max with the
same C and alpha^2 (D_TV^2 <= D_KL, so the KL form follows). On a batch the maxima run over the
batch's states and eps over its advantages: what the functions here compute are the batch's
estimates of those quantities, not certified bounds on the whole state space.

The functions take SB3 :class:`~stable_baselines3.common.distributions.Distribution` objects
(Categorical, MultiCategorical, Bernoulli, DiagGaussian, SquashedDiagGaussian, StateDependentNoise)
or, for the total variation of one Gaussian or categorical, their parameters. They are pure:
nothing is modified and no gradient is needed (call them under ``torch.no_grad()`` for logging).

Per-state KL: SB3's ``kl_divergence`` gives one KL per action dimension for Gaussian and
Bernoulli policies and one per state for (multi-)categorical ones. The package's mean KL
(:func:`sb3_trpo_plus.surrogate.mean_kl`) averages all those entries, so its per-state measure
is the joint KL divided by the number of action dimensions d. :func:`per_state_kl` gives that
measure by default (so :func:`kl_max` is the same measure as the mean KL, reduced by max instead
of mean), and the joint KL, the one Theorem 1 is about, with ``joint=True``. For Categorical and
MultiCategorical policies (one KL per state) the two agree.

Per-state total variation D_TV(p, q) = sup_A |p(A) - q(A)| (half the L1 distance):

- Categorical: exact, 1/2 sum_a |p_a - q_a|.
- MultiCategorical and Bernoulli (products of independent components): exact by enumerating the
  joint outcomes when there are at most :data:`MAX_JOINT_OUTCOMES` of them; otherwise the
  coupling bound D_TV(prod p_i, prod q_i) <= 1 - prod_i (1 - D_TV(p_i, q_i)) (couple every
  component maximally and independently; the joint draws differ only if one component does),
  which is at most sum_i D_TV(p_i, q_i) and at least max_i D_TV(p_i, q_i).
- Diagonal Gaussian (also squashed by tanh, a bijection that changes neither the KL nor the total
  variation, and state-dependent noise, a Gaussian per state): exact for one action dimension by
  the closed form of :func:`gaussian_tv`; for several dimensions the smallest of two upper bounds,
  the coupling bound above on the exact per-dimension values and Pinsker's inequality
  sqrt(KL_joint / 2) (with the smaller of the two KL directions, the total variation being
  symmetric). :func:`tv_is_exact` tells which case a distribution is in.

Because the bound only gets weaker as alpha grows, an upper bound on D_TV^max keeps the lower
bound valid.
"""

from __future__ import annotations

import math

import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
    kl_divergence,
)
from torch.distributions import Normal

MAX_JOINT_OUTCOMES = 4096
_GAUSSIAN_CLASSES = (DiagGaussianDistribution, StateDependentNoiseDistribution)  # the squashed one subclasses the first


# --------------------------------------------------------------------------- KL


def per_state_kl(first: Distribution, second: Distribution, joint: bool = False) -> th.Tensor:
    """
    KL(first(.|s) || second(.|s)) for every state of the batch, shape (n_states,).

    Theorem 1's D_KL^max takes the KL from the old policy to the new one:
    ``per_state_kl(pi_old, pi_new, joint=True)``. The package's trust region measures the other
    direction, KL(pi_theta || pi_old), as sb3-contrib does (:func:`sb3_trpo_plus.surrogate.mean_kl`).

    :param first: the first argument of the KL, a distribution over a batch of states
    :param second: the second argument, of the same class, on the same states
    :param joint: False: SB3's per-state measure, the KL of the joint distribution divided by the
        number of action dimensions for Gaussian and Bernoulli policies (the per-state values whose
        mean is the package's mean KL); True: the KL of the joint action distribution
    :return: one KL per state
    """
    kl = kl_divergence(first, second)
    if kl.dim() == 1:
        return kl
    flat = kl.reshape(kl.shape[0], -1)
    return flat.sum(dim=1) if joint else flat.mean(dim=1)


def kl_max(first: Distribution, second: Distribution, joint: bool = False) -> th.Tensor:
    """
    The largest per-state KL(first(.|s) || second(.|s)) over the batch (a 0-d tensor): the
    batch's D_KL^max. See :func:`per_state_kl` for ``joint``.

    :param first: the first argument of the KL (pi_old for Theorem 1)
    :param second: the second argument (pi_new for Theorem 1)
    :param joint: False: SB3's per-state measure (the same as the package's mean KL, reduced by
        max instead of mean); True: the KL of the joint action distribution
    :return: max over states of the per-state KL
    """
    return per_state_kl(first, second, joint=joint).max()


# --------------------------------------------------------------------------- total variation, on parameters


def categorical_tv(probs_p: th.Tensor, probs_q: th.Tensor) -> th.Tensor:
    """
    Exact total variation between categorical distributions: 1/2 sum_a |p_a - q_a| over the last
    dimension.

    :param probs_p: probabilities of p, the last dimension over the actions
    :param probs_q: probabilities of q, the same shape
    :return: the total variations, shape of the inputs without their last dimension
    """
    return 0.5 * (probs_p - probs_q).abs().sum(dim=-1)


def gaussian_tv(mean_p: th.Tensor, std_p: th.Tensor, mean_q: th.Tensor, std_q: th.Tensor) -> th.Tensor:
    """
    Exact total variation between one-dimensional Gaussians N(mean_p, std_p^2) and N(mean_q, std_q^2),
    elementwise.

    With equal standard deviations s it is erf(|mean_p - mean_q| / (2 sqrt(2) s)). Otherwise the
    two densities cross at the two roots x1 < x2 of log p(x) = log q(x), a quadratic in x, and the
    total variation is |(F_p(x2) - F_p(x1)) - (F_q(x2) - F_q(x1))|, F the distribution functions
    (the narrower density is the larger one exactly between the roots). The roots are taken in the
    cancellation-free form, so one of them goes to infinity, and its distribution functions to 0
    or 1, as the standard deviations become equal.

    :param mean_p: means of p
    :param std_p: standard deviations of p (> 0)
    :param mean_q: means of q, broadcastable with those of p
    :param std_q: standard deviations of q (> 0)
    :return: the total variations, in [0, 1]
    """
    var_p, var_q = std_p * std_p, std_q * std_q
    a = 0.5 / var_q - 0.5 / var_p
    b = mean_p / var_p - mean_q / var_q
    c = 0.5 * mean_q * mean_q / var_q - 0.5 * mean_p * mean_p / var_p + th.log(std_q / std_p)
    equal = a == 0
    safe_a = th.where(equal, th.ones_like(a), a)
    root_disc = th.sqrt(th.clamp(b * b - 4.0 * safe_a * c, min=0.0))
    sign_b = th.where(b >= 0, th.ones_like(b), -th.ones_like(b))
    half = -0.5 * (b + sign_b * root_disc)  # never 0 when the variances differ: the discriminant is then > 0
    safe_half = th.where(half == 0, th.ones_like(half), half)
    root_1, root_2 = half / safe_a, c / safe_half
    low, high = th.minimum(root_1, root_2), th.maximum(root_1, root_2)
    p, q = Normal(mean_p, std_p), Normal(mean_q, std_q)
    unequal = ((p.cdf(high) - p.cdf(low)) - (q.cdf(high) - q.cdf(low))).abs()
    same_width = th.erf((mean_p - mean_q).abs() / (2.0 * math.sqrt(2.0) * std_p))
    return th.where(equal, same_width, unequal)


def coupling_bound(component_tv: th.Tensor) -> th.Tensor:
    """
    Upper bound on the total variation of products of independent components from the
    components' total variations (last dimension): 1 - prod_i (1 - D_TV,i). It is at most
    sum_i D_TV,i and 1, at least max_i D_TV,i, and exact for one component.

    :param component_tv: per-component total variations, the last dimension over the components
    :return: the bound, shape of the input without its last dimension
    """
    return 1.0 - th.prod(1.0 - component_tv, dim=-1)


def _joint_probs(components: list[th.Tensor]) -> th.Tensor:
    """Probabilities of every joint outcome of independent categoricals (one (n, k_i) tensor each): (n, prod k_i)."""
    joint = components[0]
    for probs in components[1:]:
        joint = (joint.unsqueeze(2) * probs.unsqueeze(1)).reshape(joint.shape[0], -1)
    return joint


def _product_tv(components_p: list[th.Tensor], components_q: list[th.Tensor]) -> th.Tensor:
    """
    Total variation of products of independent categoricals: exact up to MAX_JOINT_OUTCOMES joint
    outcomes, else the coupling bound.
    """
    if math.prod(probs.shape[1] for probs in components_p) <= MAX_JOINT_OUTCOMES:
        return categorical_tv(_joint_probs(components_p), _joint_probs(components_q))
    per_component = th.stack([categorical_tv(p, q) for p, q in zip(components_p, components_q, strict=True)], dim=1)
    return coupling_bound(per_component)


def _bernoulli_components(distribution: BernoulliDistribution) -> list[th.Tensor]:
    probs = distribution.distribution.probs.reshape(distribution.distribution.probs.shape[0], -1)
    return [th.stack([1.0 - probs[:, i], probs[:, i]], dim=1) for i in range(probs.shape[1])]


# --------------------------------------------------------------------------- total variation, on SB3 distributions


def _check_same_class(first: Distribution, second: Distribution) -> None:
    if type(first) is not type(second):
        raise TypeError(f"both distributions must be of one class, got {type(first).__name__} and {type(second).__name__}")


def per_state_tv(first: Distribution, second: Distribution) -> th.Tensor:
    """
    Total variation between first(.|s) and second(.|s) for every state of the batch, shape
    (n_states,): exact or an upper bound as the module's docstring says (:func:`tv_is_exact`).

    :param first: a distribution over a batch of states
    :param second: a distribution of the same class on the same states
    :return: one total variation (or upper bound on it) per state, in [0, 1]
    :raises TypeError: for distributions of different classes or of a class not listed above
    """
    _check_same_class(first, second)
    if isinstance(first, CategoricalDistribution):
        assert isinstance(second, CategoricalDistribution)
        return categorical_tv(first.distribution.probs, second.distribution.probs)
    if isinstance(first, MultiCategoricalDistribution):
        assert isinstance(second, MultiCategoricalDistribution)
        return _product_tv([d.probs for d in first.distribution], [d.probs for d in second.distribution])
    if isinstance(first, BernoulliDistribution):
        assert isinstance(second, BernoulliDistribution)
        return _product_tv(_bernoulli_components(first), _bernoulli_components(second))
    if isinstance(first, _GAUSSIAN_CLASSES):
        p, q = first.distribution, second.distribution
        assert isinstance(p, Normal) and isinstance(q, Normal)
        n_states = p.mean.shape[0]
        per_dimension = gaussian_tv(p.mean, p.stddev, q.mean, q.stddev).reshape(n_states, -1)
        if per_dimension.shape[1] == 1:
            return per_dimension[:, 0]
        kl = th.minimum(per_state_kl(first, second, joint=True), per_state_kl(second, first, joint=True))
        pinsker = th.sqrt(0.5 * th.clamp(kl, min=0.0))
        return th.minimum(coupling_bound(per_dimension), pinsker)
    raise TypeError(f"no total variation for {type(first).__name__}")


def tv_is_exact(distribution: Distribution) -> bool:
    """
    Whether :func:`per_state_tv` is exact for distributions like this one (True) or an upper
    bound (False: Gaussians over several action dimensions, and products of more than
    :data:`MAX_JOINT_OUTCOMES` joint outcomes).

    :param distribution: an SB3 distribution with its parameters set
    :return: True when the total variation is computed exactly
    """
    if isinstance(distribution, CategoricalDistribution):
        return True
    if isinstance(distribution, MultiCategoricalDistribution):
        return math.prod(d.probs.shape[1] for d in distribution.distribution) <= MAX_JOINT_OUTCOMES
    if isinstance(distribution, BernoulliDistribution):
        return 2 ** len(_bernoulli_components(distribution)) <= MAX_JOINT_OUTCOMES
    if isinstance(distribution, _GAUSSIAN_CLASSES):
        normal = distribution.distribution
        assert isinstance(normal, Normal)
        return normal.mean[0].numel() == 1
    raise TypeError(f"no total variation for {type(distribution).__name__}")


def tv_max(first: Distribution, second: Distribution) -> th.Tensor:
    """
    The largest per-state total variation over the batch (a 0-d tensor): the batch's D_TV^max,
    alpha in Theorem 1 (an upper bound on it where :func:`tv_is_exact` is False).

    :param first: a distribution over a batch of states (pi_old)
    :param second: a distribution of the same class on the same states (pi_new)
    :return: max over states of the per-state total variation
    """
    return per_state_tv(first, second).max()


# --------------------------------------------------------------------------- the bound


def bound_epsilon(advantages: th.Tensor) -> float:
    """
    eps = max |A| over the batch's advantages (Theorem 1 takes the maximum over all states and
    actions).

    :param advantages: the batch's advantage estimates (any shape, at least one element)
    :return: the largest absolute advantage
    :raises ValueError: when ``advantages`` is empty
    """
    if advantages.numel() == 0:
        raise ValueError("bound_epsilon needs at least one advantage, got an empty tensor")
    return float(advantages.detach().abs().max())


def penalty_coefficient(epsilon: float, gamma: float) -> float:
    """
    Theorem 1's penalty coefficient C = 4 eps gamma / (1 - gamma)^2.

    :param epsilon: eps, the largest absolute advantage (>= 0)
    :param gamma: the discount factor, in [0, 1) (C is infinite at gamma = 1)
    :return: C
    :raises ValueError: for gamma outside [0, 1) or a negative or non-finite epsilon
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1) for the penalty coefficient 4 eps gamma / (1 - gamma)^2, got {gamma}")
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon (the largest absolute advantage) must be finite and >= 0, got {epsilon}")
    return 4.0 * epsilon * gamma / (1.0 - gamma) ** 2


def lower_bound(surrogate_gain: float, c: float, kl_max: float) -> float:
    """
    Theorem 1's guaranteed improvement: surrogate gain minus C times D_KL^max, i.e.
    L_pi(pi~) - eta(pi) - C * D_KL^max(pi, pi~), a lower bound on eta(pi~) - eta(pi). With
    (D_TV^max)^2 in place of ``kl_max`` it is the theorem's total-variation form.

    Mind the normalisation: the paper's L sums over the unnormalised discounted state
    distribution rho_pi (total mass 1 / (1 - gamma)), while a batch mean such as the package's
    surrogate estimates the expectation over the normalised one, (1 - gamma) times the paper's
    gain. Pass the paper's gain (the batch mean divided by 1 - gamma), or equivalently multiply
    both the gain and C by 1 - gamma.

    :param surrogate_gain: L_pi(pi~) - L_pi(pi) = L_pi(pi~) - eta(pi), the surrogate's
        improvement in the paper's normalisation
    :param c: the penalty coefficient (:func:`penalty_coefficient`)
    :param kl_max: D_KL^max(pi, pi~) (:func:`kl_max`, with ``joint=True`` for the theorem's measure)
    :return: the lower bound on the improvement of eta
    """
    return float(surrogate_gain) - float(c) * float(kl_max)
