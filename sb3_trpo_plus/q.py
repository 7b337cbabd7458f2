"""
Sampling distributions q for the importance-sampled surrogate (Schulman et al. 2015, eq. 14).

The vine scheme draws K actions a_k ~ q(.|s_n) at each rollout-set state; the surrogate weights
them by pi_theta(a_k|s_n) / q(a_k|s_n). Any q whose support covers pi_old's gives a consistent
estimator. The paper found q = pi_old good for continuous control and q = uniform good for
small discrete action spaces (it explores better).

- ``"policy"``: q = pi_old (the only choice in single-path mode, where the states and actions
  come from pi_old's own trajectories);
- ``"uniform"``: uniform over the action space (Discrete, MultiDiscrete, MultiBinary, Box with
  finite bounds). On a Box it covers only the box: pi_old's mass outside the bounds (actions the
  environment clips) is not sampled, so prefer ``"mixture"`` or ``"scaled"`` there;
- ``"scaled"``: pi_old widened: a Gaussian's std times ``std_scale`` > 1, categorical or
  Bernoulli logits divided by ``temperature`` > 1;
- ``"mixture"``: (1 - eps) pi_old + eps uniform, ``eps`` in (0, 1] (finite action spaces or
  Box with finite bounds);
- a callable ``q(pi_old, observations) -> torch.distributions.Distribution``: ``pi_old`` is
  SB3's :class:`~stable_baselines3.common.distributions.Distribution` on the N rollout-set
  states, ``observations`` the (preprocessed-as-stored) observation tensor of those states. The
  returned distribution must have batch shape (N,): ``sample((K,))`` gives K actions per state
  with shape (K, N, *action shape) in the format SB3's ``Distribution.log_prob`` takes (long
  indices for Discrete, integer vectors for MultiDiscrete, 0/1 floats for MultiBinary, floats for
  Box), and ``log_prob(actions)`` one log-density per (action, state), shape (K, N), summed over
  action dimensions.

``q_kwargs`` may also hold ``max_weight`` (> 1): importance weights are truncated at that value
(less variance, some bias), for every q. It is a setting of the surrogate, not of q
(:class:`~sb3_trpo_plus.settings.SurrogateSettings`); the one builder of both from the
arguments is :func:`sb3_trpo_plus.settings.build_q`.

Pi_old must be one of SB3's unsquashed distributions (diagonal Gaussian, gSDE without
``squash_output``, categorical, multi-categorical, Bernoulli). For a Box, SB3 policies act in the
raw action space: a Gaussian's samples are clipped before the environment, but the log-densities
(pi_old's and q's alike) are of the unclipped action, which is what the importance weights need.

The vine's "branch every action" mode and its exact-sum estimator use no q at all (see
:func:`sb3_trpo_plus.distributions.enumerate_actions`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution

from sb3_trpo_plus.distributions import IndependentParts, action_shape, find_family


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_callable_signature(q: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(q)
    except (TypeError, ValueError):  # some builtins and C extensions have no signature: checked when called
        return
    try:
        signature.bind(None, None)
    except TypeError as error:
        raise ValueError(
            f"a callable q must take two positional arguments (pi_old, observations) and return a "
            f"torch.distributions.Distribution; {q!r} has signature {signature}"
        ) from error


# --------------------------------------------------------------------------- the q classes

Q_REGISTRY: dict[str, type[Q]] = {}
"""The named q: ``q=<name>`` builds ``Q_REGISTRY[name]`` from ``q_kwargs`` (see :func:`register_q`)."""

QClass = TypeVar("QClass", bound="type[Q]")


def register_q(cls: QClass) -> QClass:
    """Make a :class:`Q` subclass available as ``q=cls.name`` (a class decorator)."""
    Q_REGISTRY[cls.name] = cls
    return cls


class PiOld:
    """
    pi_old on the N rollout-set states, with what a q is built from: its torch distributions
    (``parts``), the product of them (:meth:`product`, pi_old itself), the uniform distribution
    over the action space (:meth:`uniform`) and pi_old widened (:meth:`scaled`).

    :param distribution: SB3's distribution of pi_old on the N states
    :param action_space: the environment's action space
    """

    def __init__(self, distribution: Distribution, action_space: spaces.Space) -> None:
        family = find_family(distribution)
        if family is not None and not family.raw_density(distribution):
            raise TypeError(
                "q needs pi_old's density in the raw action space; squashed (tanh) Gaussian policies "
                "(squash_output=True) are not supported"
            )
        if family is None:
            raise TypeError(f"q supports Gaussian, categorical and Bernoulli policies, got {type(distribution).__name__}")
        self.family = family
        self.distribution = distribution
        self.action_space = action_space
        self.parts = family.parts(distribution)
        self.n_states = int(self.parts[0].batch_shape[0])

    def product(self) -> IndependentParts:
        """pi_old as a distribution over whole actions."""
        return self.family.product(self.parts)

    def scaled(self, std_scale: float, temperature: float) -> IndependentParts:
        """pi_old widened: a Gaussian's std times ``std_scale``, logits divided by ``temperature``."""
        return self.family.product(self.family.scaled(self.distribution, std_scale, temperature))

    def uniform(self) -> Any:
        """The uniform distribution over the action space, on the N states."""
        return _uniform(self.action_space, self.n_states, self.family.parameters(self.distribution)[0].device)


@dataclass(frozen=True)
class Q:
    """
    A sampling distribution q: a rule that builds q from pi_old on each batch of rollout-set
    states. Its ``q_kwargs`` are the dataclass fields, checked once in ``__post_init__`` (the
    errors name ``q_kwargs['key']``).

    A new q is one subclass: a ``name``, its settings as fields (with defaults), their checks in
    ``__post_init__`` (calling ``super().__post_init__()``) and :meth:`distribution`; decorate it
    with :func:`register_q` to make ``q=<name>`` available.
    """

    name: ClassVar[str] = ""
    #: ``q_kwargs`` keys every q accepts that are settings of something else (the surrogate's
    #: truncation of the weights), dropped before the q is built
    SHARED_KEYS: ClassVar[tuple[str, ...]] = ("max_weight",)

    def __post_init__(self) -> None:
        """The checks of the fields (none here; subclasses check theirs and call this)."""

    @classmethod
    def create(cls, q: Any, q_kwargs: dict[str, Any]) -> Q:
        """
        The q of ``q_kwargs`` (``q``: the user's argument, for the error message).

        :raises ValueError: for a key the class does not take, or a bad value
        """
        cls._check_keys(q, q_kwargs)
        return cls(**cls._own(q_kwargs))

    @classmethod
    def _own(cls, q_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in q_kwargs.items() if key not in cls.SHARED_KEYS}

    @classmethod
    def _check_keys(cls, q: Any, q_kwargs: dict[str, Any]) -> None:
        allowed = {field.name for field in dataclasses.fields(cls) if field.name != "user"} | set(cls.SHARED_KEYS)
        unknown = set(q_kwargs) - allowed
        if unknown:
            raise ValueError(f"q_kwargs has keys {sorted(unknown)} that q={q!r} does not take; allowed: {sorted(allowed)}")

    def check_action_space(self, action_space: spaces.Space) -> None:
        """
        The checks that need the environment's action space.

        :raises ValueError: for an action space this q cannot sample
        """
        if not isinstance(action_space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
            raise ValueError(f"q supports Box, Discrete, MultiDiscrete and MultiBinary action spaces, got {action_space}")

    def distribution(self, pi_old: PiOld, observations: Any) -> Any:
        """
        q on the states where ``pi_old`` was evaluated: an object with ``sample((K,))`` (shape
        (K, N, *action shape)) and ``log_prob(actions)`` (shape (K, N), summed over action dimensions).
        """
        raise NotImplementedError

    def sampler(self, pi_old: PiOld, observations: Any) -> ActionSampler:
        """q on the states where ``pi_old`` was evaluated, as an :class:`ActionSampler`."""
        return ActionSampler(self.distribution(pi_old, observations), pi_old.action_space)


@register_q
@dataclass(frozen=True)
class PolicyQ(Q):
    """q = pi_old."""

    name: ClassVar[str] = "policy"

    def distribution(self, pi_old: PiOld, observations: Any) -> Any:
        return pi_old.product()


class _BoundedQ(Q):
    """A q with a uniform component: a finite action space or a Box with finite bounds."""

    def check_action_space(self, action_space: spaces.Space) -> None:
        super().check_action_space(action_space)
        if isinstance(action_space, spaces.Box) and not action_space.is_bounded("both"):
            raise ValueError(f"q={self.name!r} needs an action space with finite bounds, got {action_space}")


def mass_outside_box(pi_old: PiOld) -> float:
    """
    The mean over pi_old's states of the probability that a Gaussian pi_old draws an action
    outside the Box's bounds (0 for any other policy or action space).
    """
    space, part = pi_old.action_space, pi_old.parts[0]
    if not isinstance(space, spaces.Box) or not isinstance(part, th.distributions.Normal):
        return 0.0
    with th.no_grad():
        low = th.as_tensor(space.low, dtype=part.loc.dtype, device=part.loc.device).flatten()
        high = th.as_tensor(space.high, dtype=part.loc.dtype, device=part.loc.device).flatten()
        loc, scale = part.loc.reshape(len(part.loc), -1), part.scale.reshape(len(part.loc), -1)
        inside = th.special.ndtr((high - loc) / scale) - th.special.ndtr((low - loc) / scale)
        return float((1.0 - inside.prod(dim=-1)).mean())


#: the share of pi_old's mass outside a Box above which q="uniform" warns (its support does not cover pi_old's)
UNIFORM_UNCOVERED_MASS_WARNING = 0.01


@register_q
@dataclass(frozen=True)
class UniformQ(_BoundedQ):
    """
    Uniform over the action space. On a Box, a Gaussian pi_old has mass outside the bounds that
    q never samples: the estimator then does not converge to pi_old's gradient (the log-std's
    gradient can take the wrong sign). The first time the rollout set's pi_old puts more than
    :data:`UNIFORM_UNCOVERED_MASS_WARNING` of its mass there, a ``UserWarning`` names it (once).
    """

    name: ClassVar[str] = "uniform"

    def distribution(self, pi_old: PiOld, observations: Any) -> Any:
        if not getattr(self, "_warned", False):
            outside = mass_outside_box(pi_old)
            if outside > UNIFORM_UNCOVERED_MASS_WARNING:
                object.__setattr__(self, "_warned", True)  # once per q
                warnings.warn(
                    f"q='uniform' does not cover pi_old: {outside:.1%} of pi_old's mass lies outside the Box "
                    f"action space's bounds, where q never samples, so the vine estimator is biased (the "
                    f"log-std's gradient can take the wrong sign); use q='mixture' or q='scaled' on a Box",
                    UserWarning,
                    stacklevel=2,
                )
        return pi_old.uniform()


@register_q
@dataclass(frozen=True)
class ScaledQ(Q):
    """
    pi_old widened.

    :param std_scale: a Gaussian's std times this, > 1
    :param temperature: categorical and Bernoulli logits divided by this, > 1
    """

    name: ClassVar[str] = "scaled"
    std_scale: float = 2.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("std_scale", "temperature"):
            value = getattr(self, key)
            if not (is_number(value) and math.isfinite(value) and value > 1):
                raise ValueError(f"q_kwargs['{key}'] must be a finite number > 1 for q='scaled', got {value!r}")

    def distribution(self, pi_old: PiOld, observations: Any) -> Any:
        return pi_old.scaled(self.std_scale, self.temperature)


@register_q
@dataclass(frozen=True)
class MixtureQ(_BoundedQ):
    """
    (1 - eps) pi_old + eps uniform.

    :param eps: the weight of the uniform component, in (0, 1]
    """

    name: ClassVar[str] = "mixture"
    eps: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (is_number(self.eps) and 0 < self.eps <= 1):
            raise ValueError(f"q_kwargs['eps'] must be in (0, 1] for q='mixture', got {self.eps!r}")

    def distribution(self, pi_old: PiOld, observations: Any) -> Any:
        return _Mixture(pi_old.product(), pi_old.uniform(), self.eps)


@dataclass(frozen=True)
class CallableQ(Q):
    """
    The user's callable ``q(pi_old, observations) -> torch.distributions.Distribution`` (see
    :class:`SamplingDistribution` for the protocol, checked on every call).

    :param user: the callable
    """

    user: Callable[..., Any] | None = None

    @classmethod
    def create(cls, q: Any, q_kwargs: dict[str, Any]) -> Q:
        _check_callable_signature(q)
        cls._check_keys(q, q_kwargs)
        return cls(user=q, **cls._own(q_kwargs))

    def sampler(self, pi_old: PiOld, observations: Any) -> ActionSampler:
        assert self.user is not None
        user_q = self.user(pi_old.distribution, observations)
        if not (callable(getattr(user_q, "sample", None)) and callable(getattr(user_q, "log_prob", None))):
            raise ValueError(
                f"a callable q must return a torch.distributions.Distribution (with sample and log_prob), "
                f"got {type(user_q).__name__}"
            )
        return ActionSampler(user_q, pi_old.action_space, check_states=pi_old.n_states)


@dataclass(frozen=True)
class SamplingDistribution:
    """
    A q bound to the action space: the rule that turns pi_old's distribution on the rollout-set
    states into q.

    A callable ``q`` must follow this protocol::

        q(pi_old: stable_baselines3.common.distributions.Distribution,
          observations: torch.Tensor | dict[str, torch.Tensor]) -> torch.distributions.Distribution

    ``pi_old`` is SB3's action distribution on a batch of N states and ``observations`` the
    observations of those states as the policy takes them. The returned distribution has batch
    shape (N,) and

    - ``sample((K,))`` gives K actions per state, shape (K, N, *a), in the format SB3's
      ``Distribution.log_prob`` takes: a = () and integer indices for Discrete, a = (n,) integer
      vectors for MultiDiscrete, a = (n,) 0/1 values for MultiBinary, a = (d,) floats in the raw
      (unclipped) action space for Box;
    - ``log_prob(actions)`` on such a (K, N, *a) tensor gives one log-density per action and
      state, shape (K, N), summed over action dimensions (use
      ``torch.distributions.Independent`` for a factorised vector density).

    Its support must cover pi_old's, or the estimator is biased. The shapes are checked on every
    call (a ValueError names the protocol).

    :param q: the validated q (see :func:`sb3_trpo_plus.settings.build_q`)
    :param action_space: the environment's action space
    """

    q: Q
    action_space: spaces.Space

    def build(self, pi_old: Distribution, observations: Any) -> ActionSampler:
        """
        q on the states where ``pi_old`` was evaluated.

        :param pi_old: SB3's action distribution of the old policy on a batch of N states
        :param observations: the observations of those N states, as the policy takes them
            (passed to a callable q; the built-in q ignore them)
        :return: q on those states: ``sample(K)`` gives (N, K, *action shape) actions,
            ``log_prob`` their (N, K) log-densities
        :raises TypeError: for a squashed or otherwise unsupported pi_old
        """
        return self.q.sampler(PiOld(pi_old, self.action_space), observations)


class _UniformFinite:
    """Uniform over a Discrete, MultiDiscrete or MultiBinary space."""

    def __init__(self, sizes: list[int], n_states: int, device: th.device, vector: bool) -> None:
        self.sizes = sizes
        self.n_states = n_states
        self.device = device
        self.vector = vector
        self.log_density = -float(np.sum(np.log(sizes)))

    def sample(self, shape: tuple[int, ...]) -> th.Tensor:
        columns = [th.randint(0, size, (*shape, self.n_states), device=self.device) for size in self.sizes]
        return th.stack(columns, dim=-1) if self.vector else columns[0]

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        batch = actions.shape[:-1] if self.vector else actions.shape
        return th.full(batch, self.log_density, device=actions.device)


class _UniformBox:
    """Uniform over a Box with finite bounds (density zero outside)."""

    def __init__(self, low: th.Tensor, high: th.Tensor, n_states: int) -> None:
        self.low, self.high, self.n_states = low, high, n_states
        self.log_density = -float(th.log(high - low).sum())

    def sample(self, shape: tuple[int, ...]) -> th.Tensor:
        unit = th.rand((*shape, self.n_states, len(self.low)), device=self.low.device)
        return self.low + unit * (self.high - self.low)

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        inside = ((actions >= self.low) & (actions <= self.high)).all(dim=-1)
        return th.where(inside, self.log_density, -math.inf)


def _uniform(action_space: spaces.Space, n_states: int, device: th.device) -> Any:
    if isinstance(action_space, spaces.Discrete):
        return _UniformFinite([int(action_space.n)], n_states, device, vector=False)
    if isinstance(action_space, spaces.MultiDiscrete):
        return _UniformFinite([int(n) for n in action_space.nvec.ravel()], n_states, device, vector=True)
    if isinstance(action_space, spaces.MultiBinary):
        return _UniformFinite([2] * int(np.prod(action_space.shape)), n_states, device, vector=True)
    assert isinstance(action_space, spaces.Box)
    low = th.as_tensor(action_space.low.ravel(), dtype=th.float32, device=device)
    high = th.as_tensor(action_space.high.ravel(), dtype=th.float32, device=device)
    return _UniformBox(low, high, n_states)


class _Mixture:
    """(1 - eps) pi_old + eps uniform."""

    def __init__(self, policy: IndependentParts, uniform: Any, eps: float) -> None:
        self.policy, self.uniform, self.eps = policy, uniform, eps

    def sample(self, shape: tuple[int, ...]) -> th.Tensor:
        from_policy = self.policy.sample(shape)
        from_uniform = self.uniform.sample(shape).to(from_policy.dtype)
        pick = th.rand(from_policy.shape[: len(shape) + 1], device=from_policy.device) < self.eps
        pick = pick.reshape(*pick.shape, *([1] * (from_policy.dim() - pick.dim())))
        return th.where(pick, from_uniform, from_policy)

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        log_policy_weight = math.log1p(-self.eps) if self.eps < 1 else -math.inf
        return th.logaddexp(
            log_policy_weight + self.policy.log_prob(actions), math.log(self.eps) + self.uniform.log_prob(actions)
        )


class ActionSampler:
    """
    q on a batch of N states: ``sample(K)`` gives actions of shape (N, K, *action shape) in the
    format SB3's ``Distribution.log_prob`` takes, ``log_prob`` their log-densities, shape (N, K).
    """

    def __init__(self, distribution: Any, action_space: spaces.Space, check_states: int | None = None) -> None:
        self.distribution = distribution
        self.action_space = action_space
        self.check_states = check_states
        self.action_shape = action_shape(action_space)

    def sample(self, n_per_state: int) -> th.Tensor:
        """
        :param n_per_state: K, the number of actions per state
        :return: K actions from q at each of the N states, shape (N, K, *action shape): long
            indices for Discrete and MultiDiscrete, floats for MultiBinary and Box
        """
        actions = self.distribution.sample((n_per_state,))
        if self.check_states is not None:
            self._check(actions.shape, (n_per_state, self.check_states, *self.action_shape), "sample((K,))")
        actions = actions.transpose(0, 1)
        if isinstance(self.action_space, (spaces.Discrete, spaces.MultiDiscrete)):
            return actions.long()
        return actions.float()

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        """
        :param actions: shape (N, K, *action shape), as :meth:`sample` gives them
        :return: log q(a_{n,k} | s_n), shape (N, K), summed over action dimensions
        """
        swapped = actions.transpose(0, 1)
        if isinstance(self.action_space, spaces.MultiDiscrete) and isinstance(self.distribution, IndependentParts):
            swapped = swapped.long()
        log_q = self.distribution.log_prob(swapped)
        if self.check_states is not None:
            self._check(log_q.shape, tuple(swapped.shape[:2]), "log_prob(actions)")
        return log_q.transpose(0, 1)

    def _check(self, shape: th.Size, expected: tuple[int, ...], call: str) -> None:
        if tuple(shape) != expected:
            raise ValueError(
                f"the distribution returned by the callable q gave shape {tuple(shape)} from {call}, expected "
                f"{expected} (K actions, N states, then the action shape {self.action_shape} in SB3's format; "
                "log-densities summed over action dimensions); see sb3_trpo_plus.q.SamplingDistribution for the protocol"
            )
