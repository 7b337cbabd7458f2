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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from torch.distributions import Bernoulli, Categorical, Normal

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
    allowed = {"max_weight"} if callable(q) else _ALLOWED_KWARGS[q]  # type: ignore[index]
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"q_kwargs has keys {sorted(unknown)} that q={q!r} does not take; allowed: {sorted(allowed)}")
    if "max_weight" in kwargs and not (isinstance(kwargs["max_weight"], (int, float)) and kwargs["max_weight"] > 1):
        raise ValueError(f"q_kwargs['max_weight'] must be a number > 1, got {kwargs['max_weight']!r}")
    if q == "scaled":
        for key in ("std_scale", "temperature"):
            value = kwargs.get(key, 2.0)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 1):
                raise ValueError(f"q_kwargs['{key}'] must be a finite number > 1 for q='scaled', got {value!r}")
    if q == "mixture":
        eps = kwargs.get("eps", 0.2)
        if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
            raise ValueError(f"q_kwargs['eps'] must be in (0, 1] for q='mixture', got {eps!r}")
    if action_space is None:
        return
    if not isinstance(action_space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        raise ValueError(f"q supports Box, Discrete, MultiDiscrete and MultiBinary action spaces, got {action_space}")
    if q in ("uniform", "mixture") and isinstance(action_space, spaces.Box) and not action_space.is_bounded("both"):
        raise ValueError(f"q={q!r} needs an action space with finite bounds, got {action_space}")


def make_q(q: str | Callable[..., Any], q_kwargs: dict[str, Any] | None, action_space: spaces.Space) -> SamplingDistribution:
    """
    The sampling distribution named by ``q`` (validated against ``action_space``).

    :raises ValueError: for a bad ``q`` or ``q_kwargs``
    """
    validate_q(q, q_kwargs, "vine", action_space)
    kwargs = dict(q_kwargs or {})
    max_weight = kwargs.pop("max_weight", None)
    if callable(q):
        return SamplingDistribution(action_space, "callable", max_weight, user=q)
    return SamplingDistribution(action_space, q, max_weight, **kwargs)


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
        """q on the states where ``pi_old`` (SB3's distribution, batch of N states) was evaluated."""
        if self.kind == "callable":
            assert self.user is not None
            return ActionSampler(self.user(pi_old, observations), self.action_space)
        parts = _torch_parts(pi_old)
        n_states = parts[0].batch_shape[0]
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

    def __init__(self, distribution: Any, action_space: spaces.Space) -> None:
        self.distribution = distribution
        self.action_space = action_space

    def sample(self, n_per_state: int) -> th.Tensor:
        actions = self.distribution.sample((n_per_state,))
        actions = actions.transpose(0, 1)
        if isinstance(self.action_space, (spaces.Discrete, spaces.MultiDiscrete)):
            return actions.long()
        return actions.float()

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        swapped = actions.transpose(0, 1)
        if isinstance(self.action_space, spaces.MultiDiscrete) and isinstance(self.distribution, _Product):
            swapped = swapped.long()
        return self.distribution.log_prob(swapped).transpose(0, 1)
