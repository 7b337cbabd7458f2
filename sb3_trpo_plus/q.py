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
(less variance, some bias), for every q.

Pi_old must be one of SB3's unsquashed distributions (diagonal Gaussian, gSDE without
``squash_output``, categorical, multi-categorical, Bernoulli). For a Box, SB3 policies act in the
raw action space: a Gaussian's samples are clipped before the environment, but the log-densities
(pi_old's and q's alike) are of the unclipped action, which is what the importance weights need.

The vine's "branch every action" mode and its exact-sum estimator use no q at all (see
:func:`sb3_trpo_plus.distributions.enumerate_actions`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    Distribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from torch.distributions import Bernoulli, Categorical, Normal

from sb3_trpo_plus.distributions import action_shape

Q_NAMES = ("policy", "uniform", "scaled", "mixture")
_ALLOWED_KWARGS = {
    "policy": {"max_weight"},
    "uniform": {"max_weight"},
    "scaled": {"std_scale", "temperature", "max_weight"},
    "mixture": {"eps", "max_weight"},
}


def validate_q(
    q: str | Callable[..., Any],
    q_kwargs: dict[str, Any] | None,
    sampling: str,
    action_space: spaces.Space | None = None,
) -> None:
    """
    Check the ``q`` and ``q_kwargs`` arguments of :class:`~sb3_trpo_plus.TRPOPlus` (against the
    action space when it is known).

    :param q: "policy", "uniform", "scaled", "mixture" or a callable (see :func:`make_q`)
    :param q_kwargs: ``std_scale`` and ``temperature`` (> 1, "scaled"), ``eps`` (in (0, 1],
        "mixture"), ``max_weight`` (> 1, any q)
    :param sampling: "single_path" (only q="policy" is allowed) or "vine"
    :param action_space: the environment's action space; None skips the checks that need it
    :raises ValueError: naming the argument and what is allowed
    """
    kwargs = dict(q_kwargs or {})
    if not (callable(q) or q in Q_NAMES):
        raise ValueError(f"q must be one of {Q_NAMES} or a callable, got {q!r}")
    if q != "policy" and sampling == "single_path":
        raise ValueError(
            f"q={q!r} needs sampling='vine': in single-path mode the states come from pi_old's own "
            "trajectories, so only q='policy' gives an unbiased surrogate"
        )
    if callable(q):
        _check_callable_signature(q)
    allowed = {"max_weight"} if callable(q) else _ALLOWED_KWARGS[q]  # type: ignore[index]
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"q_kwargs has keys {sorted(unknown)} that q={q!r} does not take; allowed: {sorted(allowed)}")
    if "max_weight" in kwargs and not (_is_number(kwargs["max_weight"]) and kwargs["max_weight"] > 1):
        raise ValueError(f"q_kwargs['max_weight'] must be a number > 1, got {kwargs['max_weight']!r}")
    if q == "scaled":
        for key in ("std_scale", "temperature"):
            value = kwargs.get(key, 2.0)
            if not (_is_number(value) and math.isfinite(value) and value > 1):
                raise ValueError(f"q_kwargs['{key}'] must be a finite number > 1 for q='scaled', got {value!r}")
    if q == "mixture":
        eps = kwargs.get("eps", 0.2)
        if not (_is_number(eps) and 0 < eps <= 1):
            raise ValueError(f"q_kwargs['eps'] must be in (0, 1] for q='mixture', got {eps!r}")
    if action_space is None:
        return
    if not isinstance(action_space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        raise ValueError(f"q supports Box, Discrete, MultiDiscrete and MultiBinary action spaces, got {action_space}")
    if q in ("uniform", "mixture") and isinstance(action_space, spaces.Box) and not action_space.is_bounded("both"):
        raise ValueError(f"q={q!r} needs an action space with finite bounds, got {action_space}")


def make_q(q: str | Callable[..., Any], q_kwargs: dict[str, Any] | None, action_space: spaces.Space) -> SamplingDistribution:
    """
    The sampling distribution named by ``q``, validated against ``action_space``.

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

    :param q: "policy" (pi_old), "uniform", "scaled", "mixture" or a callable as above
    :param q_kwargs: ``std_scale`` (> 1, Gaussian pi_old, default 2), ``temperature`` (> 1,
        categorical and Bernoulli logits, default 2), ``eps`` (in (0, 1], "mixture", default 0.2),
        ``max_weight`` (> 1, truncation of the importance weights, any q)
    :param action_space: the environment's action space ("uniform" and "mixture" need a finite
        space or a Box with finite bounds)
    :return: the rule that builds q from pi_old on each batch of states
    :raises ValueError: for a bad ``q`` or ``q_kwargs``, naming the argument and what is allowed
    """
    validate_q(q, q_kwargs, "vine", action_space)
    kwargs = dict(q_kwargs or {})
    max_weight = kwargs.pop("max_weight", None)
    if callable(q):
        return SamplingDistribution(action_space, "callable", max_weight, user=q)
    return SamplingDistribution(action_space, q, max_weight, **kwargs)


def _is_number(value: Any) -> bool:
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


class SamplingDistribution:
    """
    A rule that turns pi_old's distribution on the rollout-set states into q.

    :param action_space: the environment's action space
    :param kind: "policy", "uniform", "scaled", "mixture" or "callable"
    :param max_weight: truncation of the importance weights (None: no truncation)
    :param std_scale: for "scaled" Gaussians
    :param temperature: for "scaled" categorical and Bernoulli distributions
    :param eps: weight of the uniform component of "mixture"
    :param user: the user's callable for "callable"
    """

    def __init__(
        self,
        action_space: spaces.Space,
        kind: str,
        max_weight: float | None = None,
        std_scale: float = 2.0,
        temperature: float = 2.0,
        eps: float = 0.2,
        user: Callable[..., Any] | None = None,
    ) -> None:
        self.action_space = action_space
        self.kind = kind
        self.max_weight = max_weight
        self.std_scale = std_scale
        self.temperature = temperature
        self.eps = eps
        self.user = user

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
        if isinstance(pi_old, SquashedDiagGaussianDistribution) or (
            isinstance(pi_old, StateDependentNoiseDistribution) and pi_old.bijector is not None
        ):
            raise TypeError(
                "q needs pi_old's density in the raw action space; squashed (tanh) Gaussian policies "
                "(squash_output=True) are not supported"
            )
        parts = _torch_parts(pi_old)
        if not all(isinstance(part, (Normal, Categorical, Bernoulli)) for part in parts):
            raise TypeError(f"q supports Gaussian, categorical and Bernoulli policies, got {type(pi_old).__name__}")
        n_states = parts[0].batch_shape[0]
        if self.kind == "callable":
            assert self.user is not None
            user_q = self.user(pi_old, observations)
            if not (callable(getattr(user_q, "sample", None)) and callable(getattr(user_q, "log_prob", None))):
                raise ValueError(
                    f"a callable q must return a torch.distributions.Distribution (with sample and log_prob), "
                    f"got {type(user_q).__name__}"
                )
            return ActionSampler(user_q, self.action_space, check_states=n_states)
        if self.kind == "policy":
            return ActionSampler(_Product(parts, self.action_space), self.action_space)
        if self.kind == "scaled":
            return ActionSampler(_Product([self._scaled(part) for part in parts], self.action_space), self.action_space)
        uniform = _uniform(self.action_space, n_states, parts[0])
        if self.kind == "uniform":
            return ActionSampler(uniform, self.action_space)
        return ActionSampler(_Mixture(_Product(parts, self.action_space), uniform, self.eps), self.action_space)

    def _scaled(self, part: Any) -> Any:
        if isinstance(part, Normal):
            return Normal(part.loc, part.scale * self.std_scale, validate_args=False)
        if isinstance(part, Categorical):
            return Categorical(logits=part.logits / self.temperature, validate_args=False)
        return Bernoulli(logits=part.logits / self.temperature, validate_args=False)


def _torch_parts(pi_old: Distribution) -> list[Any]:
    dist = pi_old.distribution
    return list(dist) if isinstance(dist, list) else [dist]


class _Product:
    """Independent action dimensions: a Gaussian or Bernoulli over a vector, or categoricals side by side."""

    def __init__(self, parts: list[Any], action_space: spaces.Space) -> None:
        self.parts = parts
        self.stacked = isinstance(action_space, spaces.MultiDiscrete)

    def sample(self, shape: tuple[int, ...]) -> th.Tensor:
        if self.stacked:
            return th.stack([part.sample(shape) for part in self.parts], dim=-1)
        return self.parts[0].sample(shape)

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        if self.stacked:
            return sum(part.log_prob(actions[..., i]) for i, part in enumerate(self.parts))  # type: ignore[return-value]
        log_prob = self.parts[0].log_prob(actions)
        return log_prob if isinstance(self.parts[0], Categorical) else log_prob.sum(dim=-1)


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


def _uniform(action_space: spaces.Space, n_states: int, reference: Any) -> Any:
    device = reference.logits.device if hasattr(reference, "logits") else reference.loc.device
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

    def __init__(self, policy: _Product, uniform: Any, eps: float) -> None:
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
        if isinstance(self.action_space, spaces.MultiDiscrete) and isinstance(self.distribution, _Product):
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
                "log-densities summed over action dimensions); see sb3_trpo_plus.q.make_q for the protocol"
            )
