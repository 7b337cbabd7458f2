"""
Everything that knows SB3's action distributions (in the spirit of modular_rl's ``ProbType``):
one :class:`Family` subclass per SB3 distribution class, found with :func:`family_of`.

A family gives, for a distribution of its class on a batch of states:

- its parameters in which the Fisher information is known in closed form
  (:meth:`Family.parameters`), that Fisher metric (:meth:`Family.metric`) and a copy cut from
  the autograd graph (:meth:`Family.detach`), for the trust-region step;
- its torch distributions and pi_old widened (:meth:`Family.parts`, :meth:`Family.scaled`), for
  the sampling distributions q;
- NumPy sampling: by inverse transform of a NumPy generator's noise (:meth:`Family.sample_numpy`,
  the vine's branches with common random numbers), and with torch's random generator making the
  calls SB3's distributions make (:meth:`Family.sample_torch_noise`, the NumPy actor), with stable
  NumPy log-probabilities from logits (:func:`log_softmax`, :func:`bernoulli_log_prob`,
  :func:`gaussian_log_prob`).

Supporting one more SB3 distribution is one subclass, decorated with :func:`register_family`.
Squashed (tanh) Gaussians have a family whose density is not that of the raw action
(:meth:`Family.raw_density`): q and the NumPy actor refuse them.

:func:`enumerate_actions` lists every action of a small finite space (the vine's "branch every
action" mode and its exact-sum estimator).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from torch.distributions import Bernoulli, Categorical, Normal

MAX_ENUMERATED_ACTIONS = 64
_LOG_SQRT_2PI = 0.5 * float(np.log(2.0 * np.pi))


# --------------------------------------------------------------------------- NumPy log-probabilities


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Normalised log-probabilities of categorical logits (rows), as torch's Categorical keeps them."""
    # the ufuncs' reductions called directly: what ndarray.max and ndarray.sum compute, without their wrappers
    shifted = logits - np.maximum.reduce(logits, axis=1, keepdims=True)
    return shifted - np.log(np.add.reduce(np.exp(shifted), axis=1, keepdims=True))


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow or loss of precision for any x."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def bernoulli_log_prob(logits: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """
    log-probability of 0/1 ``actions`` under independent Bernoulli with these logits, summed over
    the last axis: log p = -softplus(-logit), log(1 - p) = -softplus(logit). Computing it from the
    probabilities instead rounds p to 1 in float32 for a logit above about 16.6, giving NaN.
    """
    return -np.sum(softplus(np.where(actions > 0.5, -logits, logits)), axis=-1)


def gaussian_log_prob(actions: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """
    Diagonal Gaussian log-density of ``actions``, summed over the last axis, with torch's Normal's
    formula (from the action itself, so the ratio pi_theta / pi_old is 1 at theta_old to rounding).
    """
    var = std * std
    return np.sum(-((actions - mean) ** 2) / (2 * var) - np.log(std) - _LOG_SQRT_2PI, axis=-1)


# --------------------------------------------------------------------------- Fisher metric


class FisherMetric:
    """
    A per-sample Fisher metric M, applied to a list of tangent tensors.

    :param factors: one tensor per distribution parameter: the diagonal of M ("diagonal"), or
        the probabilities p defining M = diag(p) - p p^T row by row ("categorical")
    :param kind: "diagonal" or "categorical"
    """

    def __init__(self, factors: Sequence[th.Tensor], kind: str) -> None:
        self.factors = list(factors)
        self.kind = kind

    def __call__(self, tangents: Sequence[th.Tensor]) -> list[th.Tensor]:
        if self.kind == "diagonal":
            return [factor * tangent for factor, tangent in zip(self.factors, tangents, strict=True)]
        return [
            probs * tangent - probs * (probs * tangent).sum(dim=-1, keepdim=True)
            for probs, tangent in zip(self.factors, tangents, strict=True)
        ]


# --------------------------------------------------------------------------- families


class IndependentParts:
    """
    Independent torch distributions as one distribution over whole actions (in the format SB3's
    ``Distribution.log_prob`` takes): one Gaussian or Bernoulli over a vector (``summed``: the
    log-density is summed over the last axis), or categoricals side by side (``stacked``: one
    column of the action each).
    """

    def __init__(self, parts: list[Any], stacked: bool = False, summed: bool = False) -> None:
        self.parts = parts
        self.stacked = stacked
        self.summed = summed

    def sample(self, shape: tuple[int, ...]) -> th.Tensor:
        if self.stacked:
            return th.stack([part.sample(shape) for part in self.parts], dim=-1)
        return self.parts[0].sample(shape)

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        if self.stacked:
            return sum(part.log_prob(actions[..., i]) for i, part in enumerate(self.parts))  # type: ignore[return-value]
        log_prob = self.parts[0].log_prob(actions)
        return log_prob.sum(dim=-1) if self.summed else log_prob


class Family:
    """
    What the package needs to know about one SB3 distribution class (``sb3_class``, and its
    subclasses that have no family of their own). A new family is one subclass of this, decorated
    with :func:`register_family`.

    Class flags: ``gaussian`` (a Gaussian whose standard deviation comes from the policy's
    ``log_std``), ``state_dependent`` (gSDE's noise: the NumPy actor and the vine's branches
    follow its exploration matrices instead of calling :meth:`sample_torch_noise` or
    :meth:`sample_numpy`).
    """

    sb3_class: ClassVar[type[Distribution]]
    gaussian: ClassVar[bool] = False
    state_dependent: ClassVar[bool] = False

    # ------------------------------------------------------------------ torch side

    def parameters(self, distribution: Any) -> list[th.Tensor]:
        """The parameters in which the Fisher information is known in closed form (see :meth:`metric`)."""
        raise NotImplementedError

    def detach(self, distribution: Any) -> Any:
        """
        A copy of ``distribution`` cut from the autograd graph, value for value (see
        :func:`detached_torch`): its torch distribution, or each one of a list of them.
        """
        old = copy.copy(distribution)
        inner = distribution.distribution
        old.distribution = [detached_torch(part) for part in inner] if isinstance(inner, list) else detached_torch(inner)
        return old

    def metric(self, distribution: Any) -> FisherMetric:
        """The Fisher information in the parameters of :meth:`parameters` (from detached probabilities)."""
        raise NotImplementedError

    def raw_density(self, distribution: Any) -> bool:
        """Whether ``log_prob`` is the density of the raw (unsquashed) action, as q needs."""
        return True

    def parts(self, distribution: Any) -> list[Any]:
        """The torch distributions of ``distribution``."""
        return [distribution.distribution]

    def product(self, parts: list[Any]) -> IndependentParts:
        """``parts`` (of :meth:`parts` or :meth:`scaled`) as a distribution over whole actions."""
        return IndependentParts(parts)

    def scaled(self, distribution: Any, std_scale: float, temperature: float) -> list[Any]:
        """The parts widened: a Gaussian's std times ``std_scale``, logits divided by ``temperature``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ NumPy side

    def numpy_supported(self, distribution: Any) -> bool:
        """Whether the NumPy actor can sample ``distribution`` exactly as SB3 does."""
        return True

    def sample_numpy(self, params: list[np.ndarray], noise_rng: np.random.Generator, common: bool) -> np.ndarray:
        """
        One action per row of the parameters ``params`` (:meth:`parameters` as arrays), by inverse
        transform of ``noise_rng``'s standard noise; with ``common=True`` every row uses the same
        noise (common random numbers).
        """
        raise NotImplementedError

    def sample_torch_noise(
        self, distribution: Any, head: np.ndarray, std: np.ndarray | None, noise: TorchNoise | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Actions and their log-probabilities from the action head's output ``head`` (means or
        logits), with torch's global random generator making the calls SB3's distribution makes,
        so that a seed gives SB3's action stream.

        :param std: the standard deviations of a Gaussian (None for other families)
        :param noise: tensors to draw into, kept between calls (None: new ones)
        """
        raise NotImplementedError


FamilyClass = TypeVar("FamilyClass", bound=type[Family])
_FAMILIES: dict[type[Distribution], Family] = {}


def register_family(cls: FamilyClass) -> FamilyClass:
    """Make a :class:`Family` subclass the family of its ``sb3_class`` (a class decorator)."""
    _FAMILIES[cls.sb3_class] = cls()
    return cls


def find_family(distribution: Any) -> Family | None:
    """The family of an SB3 distribution (that of its nearest registered class), or None."""
    for cls in type(distribution).__mro__:
        family = _FAMILIES.get(cls)
        if family is not None:
            return family
    return None


def family_of(distribution: Any, needed_for: str = "") -> Family:
    """
    The family of an SB3 distribution.

    :param needed_for: what the family is needed for, named in the error ("" for nothing in particular)
    :raises TypeError: for a distribution without a family
    """
    family = find_family(distribution)
    if family is None:
        purpose = f" ({needed_for})" if needed_for else ""
        raise TypeError(f"No distribution family for {type(distribution).__name__}{purpose}")
    return family


def multinomial_one(probs: np.ndarray) -> np.ndarray:
    """
    One draw per row of ``probs``, the draw ``th.multinomial(th.from_numpy(probs), 1, True)`` makes
    (SB3's ``Categorical.sample``), at a third of its cost on small batches. For a single sample
    torch races exponential clocks: q ~ Exp(1) from its global generator in the shape of
    ``probs``, then argmax(probs / q) per row; this does the same, the division and the argmax
    in NumPy (the same float32 arithmetic, ties to the first index as in torch). Probabilities
    torch would reject (not finite, or negative) go to ``th.multinomial``, which raises its error.
    """
    if probs.dtype != np.float32 or not (probs.min() >= 0.0 and probs.max() < np.inf):  # NaN fails both
        return th.multinomial(th.from_numpy(probs), 1, True).numpy()[:, 0]
    return _race(probs, th.empty(probs.shape, dtype=th.float32).exponential_(1.0).numpy())


def _race(probs: np.ndarray, clocks: np.ndarray) -> np.ndarray:
    """The winner of each row's race of exponential ``clocks`` (:func:`multinomial_one`): argmax(probs / q)."""
    return np.argmax(probs / clocks, axis=1)


class TorchNoise:
    """
    Draws from torch's global random generator into tensors kept from one call to the next: the
    values ``th.randn(shape)`` and ``th.empty(shape).exponential_()`` would return (the same
    calls on tensors of the same shape and type), without a new tensor and NumPy view per step.
    The arrays returned are overwritten by the next draw of the same kind and shape.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], th.dtype], tuple[th.Tensor, np.ndarray]] = {}

    def _buffer(self, kind: str, shape: tuple[int, ...], dtype: th.dtype) -> tuple[th.Tensor, np.ndarray]:
        key = (kind, shape, dtype)
        entry = self._buffers.get(key)
        if entry is None:
            tensor = th.empty(shape, dtype=dtype)
            entry = self._buffers[key] = (tensor, tensor.numpy())
        return entry

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normal noise, as ``th.randn(shape)`` (torch's default dtype)."""
        tensor, array = self._buffer("normal", shape, th.get_default_dtype())
        tensor.normal_()
        return array

    def exponential(self, shape: tuple[int, ...]) -> np.ndarray:
        """Exp(1) noise in float32, as ``th.empty(shape, dtype=th.float32).exponential_(1.0)``."""
        tensor, array = self._buffer("exponential", shape, th.float32)
        tensor.exponential_(1.0)
        return array


class ExplorationRedraw:
    """
    gSDE's exploration matrices drawn again, as SB3's ``policy.reset_noise(n_envs)`` draws them,
    during a rollout in which the policy does not change (the lean rollout: nothing but the
    environment runs between two steps). ``sample_weights`` builds and validates a new
    ``Normal(0, std)`` for every draw, the same distribution as long as log_std stays put, and
    samples it twice by the reparametrisation ``loc + eps * scale`` with eps from ``normal_`` on
    a new tensor. This keeps the distribution the rollout's first draw built (``weights_dist``)
    and draws eps into kept tensors of the same shapes: the same calls on torch's generator, so
    the same matrices (new tensors each draw) and generator state, at a fifth of the cost.
    Build it with :meth:`for_policy` right after a draw by SB3's own method.
    """

    def __init__(self, distribution: StateDependentNoiseDistribution, weights: Normal) -> None:
        self.distribution = distribution
        self.weights = weights
        self._eps: dict[int, tuple[th.Tensor, th.Tensor]] = {}

    @classmethod
    def for_policy(cls, policy: Any) -> ExplorationRedraw | None:
        """
        The redraw of ``policy``'s gSDE matrices, or None where the draw is not SB3's standard one
        (another policy or distribution class, an overridden or patched ``reset_noise`` or
        ``sample_weights``, a subclass of ``Normal``, a traced graph) or no draw was made yet.
        """
        from stable_baselines3.common.policies import ActorCriticPolicy

        distribution = getattr(policy, "action_dist", None)
        weights = getattr(distribution, "weights_dist", None)
        standard = (
            isinstance(policy, ActorCriticPolicy)
            and getattr(type(policy), "reset_noise", None) is ActorCriticPolicy.reset_noise
            and "reset_noise" not in vars(policy)
            and type(distribution) is StateDependentNoiseDistribution
            and "sample_weights" not in vars(distribution)
            and type(weights) is Normal
            and not th._C._get_tracing_state()
        )
        return cls(distribution, weights) if standard else None  # type: ignore[arg-type]

    def __call__(self, n_envs: int) -> None:
        """New ``exploration_mat`` and ``exploration_matrices`` (one per environment), as ``reset_noise(n_envs)``."""
        loc, scale = self.weights.loc, self.weights.scale
        single, batched = self._eps.get(n_envs) or self._eps.setdefault(
            n_envs,
            (
                th.empty(loc.shape, dtype=loc.dtype, device=loc.device),
                th.empty((n_envs, *loc.shape), dtype=loc.dtype, device=loc.device),
            ),
        )
        with th.no_grad():
            self.distribution.exploration_mat = loc + single.normal_() * scale
            self.distribution.exploration_matrices = loc + batched.normal_() * scale


def _sample_categoricals(
    head: np.ndarray, dims: list[int], noise: TorchNoise | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """
    One choice per row and block of logits, drawn as SB3's Categorical draws (:func:`multinomial_one`).
    With ``noise``, the exponential clocks are drawn into its kept tensors, and the validity of the
    probabilities is checked once at the end: exp of log-softmax is in [0, 1] unless the logits
    hold a NaN or an infinity, and then the whole row, and so its log-probability, is NaN; the
    probabilities then go to :func:`multinomial_one`, which raises torch's error.
    """
    blocks = [head] if len(dims) == 1 else np.split(head, np.cumsum(dims)[:-1], axis=1)
    columns, log_prob = [], np.zeros(len(head), dtype=np.float32)
    rows = np.arange(len(head))
    for logits in blocks:
        log_p = log_softmax(logits)
        probs = np.exp(log_p)
        if noise is None or probs.dtype != np.float32:
            choice = multinomial_one(probs)
        else:
            choice = _race(probs, noise.exponential(probs.shape))
        columns.append(choice)
        log_prob += log_p[rows, choice]
    if noise is not None and np.isnan(np.add.reduce(log_prob)):
        for logits in blocks:
            multinomial_one(np.exp(log_softmax(logits)))  # raises torch's error for the invalid block
    return columns, log_prob


def _inverse_cdf(params: list[np.ndarray], noise_rng: np.random.Generator, draws: int) -> list[np.ndarray]:
    columns = []
    for logits in params:
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
        uniform = noise_rng.random((draws, 1))
        columns.append(np.minimum((cdf < uniform).sum(axis=1), logits.shape[1] - 1))
    return columns


@register_family
class DiagGaussianFamily(Family):
    """Diagonal Gaussian, parameters (mean, std)."""

    sb3_class: ClassVar[type[Distribution]] = DiagGaussianDistribution
    gaussian = True

    def parameters(self, distribution: Any) -> list[th.Tensor]:
        return [distribution.distribution.loc, distribution.distribution.scale]

    def metric(self, distribution: Any) -> FisherMetric:
        """diag(1 / std^2) and diag(2 / std^2), divided by the number of action dimensions."""
        scale = distribution.distribution.scale
        inv_var = scale.detach() ** -2 / scale.shape[-1]
        return FisherMetric([inv_var, 2.0 * inv_var], kind="diagonal")

    def product(self, parts: list[Any]) -> IndependentParts:
        return IndependentParts(parts, summed=True)

    def scaled(self, distribution: Any, std_scale: float, temperature: float) -> list[Any]:
        dist = distribution.distribution
        return [Normal(dist.loc, dist.scale * std_scale, validate_args=False)]

    def sample_numpy(self, params: list[np.ndarray], noise_rng: np.random.Generator, common: bool) -> np.ndarray:
        mean, std = params
        draws = 1 if common else len(mean)
        return (mean + std * noise_rng.standard_normal((draws, mean.shape[1]))).astype(np.float32)

    def sample_torch_noise(
        self, distribution: Any, head: np.ndarray, std: np.ndarray | None, noise: TorchNoise | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        assert std is not None
        standard = th.randn(head.shape).numpy() if noise is None else noise.normal(head.shape)
        actions = head + standard * std
        return actions, gaussian_log_prob(actions, head, std)


@register_family
class SquashedDiagGaussianFamily(DiagGaussianFamily):
    """A diagonal Gaussian squashed by tanh: its density is not that of the raw action."""

    sb3_class: ClassVar[type[Distribution]] = SquashedDiagGaussianDistribution

    def raw_density(self, distribution: Any) -> bool:
        return False

    def numpy_supported(self, distribution: Any) -> bool:
        return False


@register_family
class StateDependentNoiseFamily(DiagGaussianFamily):
    """
    gSDE: a diagonal Gaussian whose noise is latent features times an exploration matrix (the
    NumPy actor and the vine's branches follow the matrices, see ``state_dependent``); squashed
    when it has a bijector.
    """

    sb3_class: ClassVar[type[Distribution]] = StateDependentNoiseDistribution
    state_dependent = True

    def raw_density(self, distribution: Any) -> bool:
        return distribution.bijector is None

    def numpy_supported(self, distribution: Any) -> bool:
        return distribution.bijector is None and not distribution.learn_features


@register_family
class CategoricalFamily(Family):
    """Categorical, parameters: logits."""

    sb3_class: ClassVar[type[Distribution]] = CategoricalDistribution

    def parameters(self, distribution: Any) -> list[th.Tensor]:
        return [distribution.distribution.logits]

    def metric(self, distribution: Any) -> FisherMetric:
        """diag(p) - p p^T."""
        return FisherMetric([part.probs.detach() for part in self.parts(distribution)], kind="categorical")

    def scaled(self, distribution: Any, std_scale: float, temperature: float) -> list[Any]:
        return [Categorical(logits=part.logits / temperature, validate_args=False) for part in self.parts(distribution)]

    def sample_numpy(self, params: list[np.ndarray], noise_rng: np.random.Generator, common: bool) -> np.ndarray:
        return _inverse_cdf(params, noise_rng, 1 if common else len(params[0]))[0]

    def sample_torch_noise(
        self, distribution: Any, head: np.ndarray, std: np.ndarray | None, noise: TorchNoise | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        columns, log_prob = _sample_categoricals(head, [head.shape[1]], noise)
        return columns[0], log_prob


@register_family
class MultiCategoricalFamily(CategoricalFamily):
    """Categoricals side by side (MultiDiscrete), parameters: the logits of each, block by block."""

    sb3_class: ClassVar[type[Distribution]] = MultiCategoricalDistribution

    def parameters(self, distribution: Any) -> list[th.Tensor]:
        return [part.logits for part in distribution.distribution]

    def parts(self, distribution: Any) -> list[Any]:
        return list(distribution.distribution)

    def product(self, parts: list[Any]) -> IndependentParts:
        return IndependentParts(parts, stacked=True)

    def sample_numpy(self, params: list[np.ndarray], noise_rng: np.random.Generator, common: bool) -> np.ndarray:
        return np.stack(_inverse_cdf(params, noise_rng, 1 if common else len(params[0])), axis=1)

    def sample_torch_noise(
        self, distribution: Any, head: np.ndarray, std: np.ndarray | None, noise: TorchNoise | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        columns, log_prob = _sample_categoricals(head, list(distribution.action_dims), noise)
        return np.stack(columns, axis=1), log_prob


@register_family
class BernoulliFamily(Family):
    """Independent Bernoulli (MultiBinary), parameters: logits."""

    sb3_class: ClassVar[type[Distribution]] = BernoulliDistribution

    def parameters(self, distribution: Any) -> list[th.Tensor]:
        return [distribution.distribution.logits]

    def metric(self, distribution: Any) -> FisherMetric:
        """diag(p (1 - p)), divided by the number of action dimensions."""
        probs = distribution.distribution.probs.detach()
        return FisherMetric([probs * (1.0 - probs) / probs.shape[-1]], kind="diagonal")

    def product(self, parts: list[Any]) -> IndependentParts:
        return IndependentParts(parts, summed=True)

    def scaled(self, distribution: Any, std_scale: float, temperature: float) -> list[Any]:
        return [Bernoulli(logits=distribution.distribution.logits / temperature, validate_args=False)]

    def sample_numpy(self, params: list[np.ndarray], noise_rng: np.random.Generator, common: bool) -> np.ndarray:
        draws = 1 if common else len(params[0])
        with np.errstate(over="ignore"):  # exp(-logit) = inf for a logit below -88 gives p = 0, as it should
            probs = 1.0 / (1.0 + np.exp(-params[0]))
        return (noise_rng.random((draws, probs.shape[1])) < probs).astype(np.float32)

    def sample_torch_noise(
        self, distribution: Any, head: np.ndarray, std: np.ndarray | None, noise: TorchNoise | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        # probabilities by torch's sigmoid, so that th.bernoulli draws exactly what SB3's would
        actions = th.bernoulli(th.sigmoid(th.from_numpy(head))).numpy()
        return actions, bernoulli_log_prob(head, actions)


# --------------------------------------------------------------------------- by distribution


TorchDistribution = TypeVar("TorchDistribution", bound=th.distributions.Distribution)


def detached_torch(distribution: TorchDistribution) -> TorchDistribution:
    """
    A copy of a torch distribution whose tensors are cut from the autograd graph, value for value.
    Building a new ``Categorical(logits=...)`` instead would normalise the already normalised
    logits a second time and move them by about 1e-8, enough to make KL(pi_old || pi_old) non-zero.
    """
    old = copy.copy(distribution)
    for name, value in vars(distribution).items():
        if isinstance(value, th.Tensor):
            setattr(old, name, value.detach())
    return old


def detached(distribution: Distribution) -> Distribution:
    """
    A copy of an SB3 action distribution cut from the autograd graph: pi_old, taken from the
    same forward pass that gives pi_theta at theta = theta_old (no second forward pass).
    SB3 policies reuse one distribution object between calls, so the copy is also what keeps
    pi_old alive when the policy is evaluated again.
    """
    return family_of(distribution, "to detach it").detach(distribution)


@contextlib.contextmanager
def preserved_state(distribution: Distribution) -> Iterator[None]:
    """
    Evaluations of a policy inside the block leave its SB3 distribution object (``policy.action_dist``)
    as they found it, attribute for attribute, even on an exception. SB3 keeps the last torch
    distribution a forward pass built on that object (``distribution``, and ``_latent_sde`` for
    gSDE), attached to the autograd graph of that pass when it ran with gradients: left there, it
    keeps the pass's activations alive and makes ``copy.deepcopy`` and ``pickle`` of the policy
    fail until the next forward pass replaces it.

    :param distribution: the policy's action distribution object
    """
    saved = dict(vars(distribution))
    try:
        yield
    finally:
        vars(distribution).clear()
        vars(distribution).update(saved)


def detach_exploration_noise(distribution: Distribution) -> None:
    """
    gSDE: cut the exploration matrices and the distribution they were drawn from
    (``exploration_mat``, ``exploration_matrices``, ``weights_dist``) from the graph of log_std,
    in place, value for value, no random number drawn. SB3 draws them with gradients (when it
    builds the policy, and when it loads a model), which leaves log_std's graph on the policy.
    Only sampling reads them; no gradient is ever taken through them. Other distributions: nothing.

    :param distribution: the policy's action distribution object
    """
    if not isinstance(distribution, StateDependentNoiseDistribution):
        return
    for name in ("exploration_mat", "exploration_matrices"):
        value = getattr(distribution, name, None)
        if isinstance(value, th.Tensor):
            setattr(distribution, name, value.detach())
    weights = getattr(distribution, "weights_dist", None)
    if isinstance(weights, Normal):
        distribution.weights_dist = detached_torch(weights)


def distribution_parameters(distribution: Distribution) -> list[th.Tensor]:
    """
    The parameters of an SB3 action distribution in which its Fisher information is known in
    closed form: (mean, std) for Gaussians (gSDE included), logits for categorical, multi-
    categorical and Bernoulli distributions. See :func:`distribution_metric`.
    """
    return family_of(distribution, "analytic Fisher information").parameters(distribution)


def distribution_metric(distribution: Distribution) -> FisherMetric:
    """
    The Fisher information M of the distribution in the parameters returned by
    :func:`distribution_parameters`, as a per-sample linear map on tangents:

    - Gaussian in (mean, std): diag(1 / std^2) and diag(2 / std^2);
    - categorical in logits: diag(p) - p p^T (block by block for a multi-categorical);
    - Bernoulli in logits: diag(p (1 - p)).

    The map uses the detached probabilities of ``distribution``, which is pi_old when the
    product is formed at theta_old. Gaussian and Bernoulli metrics are divided by the number of
    action dimensions, so that M is the Hessian of :func:`~sb3_trpo_plus.surrogate.mean_kl`'s
    per-dimension measure.
    """
    return family_of(distribution, "analytic Fisher information").metric(distribution)


def sample_with_noise(distribution: Any, params: list[np.ndarray], noise_rng: np.random.Generator, common: bool) -> np.ndarray:
    """
    Draw one action per row of pi_old's distribution ``params`` (see
    :func:`distribution_parameters`) by inverse transform of standard noise; with ``common=True``
    every row uses the same noise (common random numbers).
    """
    return family_of(distribution).sample_numpy(params, noise_rng, common)


# --------------------------------------------------------------------------- action spaces


def enumerate_actions(action_space: spaces.Space, max_actions: int = MAX_ENUMERATED_ACTIONS) -> th.Tensor:
    """
    Every action of a small finite action space, for branching every action with the exact-sum
    surrogate (:func:`~sb3_trpo_plus.surrogate.exact_sum_surrogate`).

    The actions are in the format SB3's ``Distribution.log_prob`` takes: shape (M,) long indices
    for Discrete, (M, n) long vectors for MultiDiscrete, (M, n) float 0/1 vectors for
    MultiBinary, with indices from 0 as SB3 policies act (a Discrete space's ``start`` is not
    applied). Products are in row-major order (the last component varies fastest). The count is
    checked before anything is allocated.

    :param action_space: a Discrete, one-dimensional MultiDiscrete or MultiBinary space
    :param max_actions: the largest number of actions accepted
    :return: the M actions of the space
    :raises ValueError: for another kind of space, or a space with more than ``max_actions`` actions
    """
    if isinstance(action_space, spaces.Discrete):
        sizes = [int(action_space.n)]
    elif isinstance(action_space, spaces.MultiDiscrete) and action_space.nvec.ndim == 1:
        sizes = [int(n) for n in action_space.nvec]
    elif isinstance(action_space, spaces.MultiBinary) and len(action_space.shape) == 1:
        sizes = [2] * int(action_space.shape[0])
    else:
        raise ValueError(
            f"enumerating actions needs a Discrete, one-dimensional MultiDiscrete or MultiBinary space, got {action_space}"
        )
    count = math.prod(sizes)
    if count > max_actions:
        raise ValueError(f"enumerating actions needs at most {max_actions} actions, the space {action_space} has {count}")
    if isinstance(action_space, spaces.Discrete):
        return th.arange(count, dtype=th.long)
    grids = th.meshgrid(*[th.arange(size, dtype=th.long) for size in sizes], indexing="ij")
    actions = th.stack([grid.reshape(-1) for grid in grids], dim=-1)
    return actions.float() if isinstance(action_space, spaces.MultiBinary) else actions


def action_shape(action_space: spaces.Space) -> tuple[int, ...]:
    """The shape of one action in the format SB3's ``Distribution.log_prob`` takes."""
    if isinstance(action_space, spaces.Discrete):
        return ()
    if isinstance(action_space, spaces.MultiDiscrete):
        return (len(action_space.nvec.ravel()),)
    return (int(np.prod(action_space.shape or ())),)


def actions_for_log_prob(actions: th.Tensor, action_space: spaces.Space) -> th.Tensor:
    """Buffer actions in the shape SB3's ``Distribution.log_prob`` takes (flat indices for Discrete)."""
    if isinstance(action_space, spaces.Discrete):
        return actions.long().flatten()
    return actions
