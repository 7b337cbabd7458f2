"""
Rollout buffers that keep, beside pi_old's log-probability of every action, its log-probability
under the sampling distribution q that drew it. The surrogate's importance weights are
pi_theta / q; the KL constraint is always taken against pi_old.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.vec_env import VecNormalize


class QRolloutBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    log_q: th.Tensor


class DictQRolloutBufferSamples(NamedTuple):
    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    log_q: th.Tensor


class _LogQMixin:
    """
    Adds log q(a|s), the log-probability of each action under the distribution that sampled
    it, to an SB3 rollout buffer. When ``add`` is called without it (q = pi_old), it equals the
    stored log pi_old(a|s).
    """

    log_q: np.ndarray
    log_probs: np.ndarray
    buffer_size: int
    n_envs: int
    pos: int
    generator_ready: bool
    _samples_type: type

    def reset(self) -> None:
        self.log_q = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        super().reset()  # type: ignore[misc]

    def add(self, *args: Any, log_q: th.Tensor | None = None, **kwargs: Any) -> None:
        """Same arguments as the base buffer's ``add``, plus the optional keyword ``log_q``."""
        pos = self.pos
        super().add(*args, **kwargs)  # type: ignore[misc]
        if log_q is None:
            self.log_q[pos] = self.log_probs[pos]
        else:
            self.log_q[pos] = log_q.reshape(-1).cpu().numpy()

    def get(self, batch_size: int | None = None) -> Generator[Any, None, None]:
        if not self.generator_ready:
            self.log_q = self.swap_and_flatten(self.log_q)  # type: ignore[attr-defined]
        return super().get(batch_size)  # type: ignore[misc]

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> Any:
        base = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        log_q = self.to_torch(self.log_q[batch_inds].flatten())  # type: ignore[attr-defined]
        return self._samples_type(*base, log_q=log_q)


class QRolloutBuffer(_LogQMixin, RolloutBuffer):
    """:class:`~stable_baselines3.common.buffers.RolloutBuffer` that also keeps log q(a|s)."""

    _samples_type = QRolloutBufferSamples


class DictQRolloutBuffer(_LogQMixin, DictRolloutBuffer):
    """:class:`~stable_baselines3.common.buffers.DictRolloutBuffer` that also keeps log q(a|s)."""

    _samples_type = DictQRolloutBufferSamples


def default_buffer_class(observation_space: spaces.Space) -> type[RolloutBuffer]:
    """The q-aware buffer matching an observation space (dict or not)."""
    return DictQRolloutBuffer if isinstance(observation_space, spaces.Dict) else QRolloutBuffer


@dataclass
class VineBatch:
    """
    What one vine iteration gives the surrogate: for N rollout-set states and K actions each,
    rows ordered state by state (row n * K + k is action k of state n).

    :param observations: the state of every row (each rollout-set state repeated K times)
    :param actions: a_{n,k}, in the format the policy's distribution takes
    :param log_q: log q(a_{n,k} | s_n) (zeros when every action of a finite space is branched)
    :param q_values: the branch estimates of Q(s_n, a_{n,k})
    :param group: n, the rollout-set state of every row
    :param n_states: N
    :param all_actions: whether the K actions are the whole finite action space (exact sum estimator)
    """

    observations: th.Tensor | TensorDict
    actions: th.Tensor
    log_q: th.Tensor
    q_values: th.Tensor
    group: th.Tensor
    n_states: int
    all_actions: bool
