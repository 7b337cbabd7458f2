"""
Fitting the value function (the baseline of the advantages): minibatch regression of V(s) on
the empirical returns, several passes over the batch, with the policy's own optimizer.

The critic never moves a parameter the action distribution depends on: the KL constraint of
the policy step would otherwise be broken behind its back.

The fit receives its data explicitly, as :class:`ValueTargets` (flattened observations and
returns, built from a rollout buffer in either of its layouts), and :func:`fit_critic` chooses
between two implementations with the same semantics (same minibatches drawn from NumPy's global
generator, as SB3's ``RolloutBuffer.get`` draws them, same mean-squared loss, same Adam update):

- :func:`fit_critic_torch`, the generic loop through autograd and ``policy.optimizer``;
- :class:`sb3_trpo_plus.fast.FusedMlpCritic`, for the standard MLP critic trained with Adam
  (unless ``fast_paths=False``): the whole regression runs on flat float32 arrays, then
  parameters and the optimizer's state are written back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from torch.nn import functional as F

from sb3_trpo_plus.fast import FusedMlpCritic


@dataclass(frozen=True)
class ValueTargets:
    """
    The regression data of the value function.

    :param observations: observations of the batch, flattened to shape (N, ...) (a dict of such
        arrays for dict observations), in the order ``RolloutBuffer.get`` indexes them
    :param returns: the empirical returns, shape (N,)
    """

    observations: np.ndarray | dict[str, np.ndarray]
    returns: np.ndarray

    @classmethod
    def from_buffer(cls, buffer: RolloutBuffer) -> ValueTargets:
        """
        The targets of a full rollout buffer, flattened as ``RolloutBuffer.get`` flattens them
        (environment-major), whether or not the buffer itself has already been flattened; the
        buffer is left as it is.
        """
        assert buffer.full, "the rollout buffer is not full"
        flatten: Any = (lambda array: array) if buffer.generator_ready else buffer.swap_and_flatten
        observations: Any = buffer.observations
        if isinstance(observations, dict):
            observations = {key: flatten(value) for key, value in observations.items()}
        else:
            observations = flatten(observations)
        return cls(observations, flatten(buffer.returns).reshape(-1))

    def extended(self, observations: np.ndarray | dict[str, np.ndarray], returns: np.ndarray) -> ValueTargets:
        """These targets followed by more (e.g. the vine branches' returns), in this batch's dtypes."""
        if isinstance(self.observations, dict):
            assert isinstance(observations, dict)
            merged: Any = {
                key: np.concatenate([value, np.asarray(observations[key], dtype=value.dtype).reshape(-1, *value.shape[1:])])
                for key, value in self.observations.items()
            }
        else:
            mine = self.observations
            merged = np.concatenate([mine, np.asarray(observations, dtype=mine.dtype).reshape(-1, *mine.shape[1:])])
        return ValueTargets(merged, np.concatenate([self.returns, np.asarray(returns, dtype=self.returns.dtype).reshape(-1)]))

    def minibatch(self, indices: np.ndarray, device: th.device) -> tuple[Any, th.Tensor]:
        """Observations and returns at ``indices`` as tensors on ``device`` (copies, as ``RolloutBuffer`` makes them)."""
        if isinstance(self.observations, dict):
            observations: Any = {key: th.tensor(value[indices], device=device) for key, value in self.observations.items()}
        else:
            observations = th.tensor(self.observations[indices], device=device)
        return observations, th.tensor(self.returns[indices], device=device)


def fit_critic(
    policy: ActorCriticPolicy,
    targets: ValueTargets,
    n_epochs: int,
    batch_size: int,
    frozen: Sequence[nn.Parameter],
    fast_paths: bool = True,
) -> list[float]:
    """
    Regress the value function on ``targets``: fused for the standard MLP critic with Adam (when
    ``fast_paths`` and the fused fit moves no ``frozen`` parameter), through autograd otherwise.

    :return: the loss of every minibatch
    """
    fused = FusedMlpCritic.from_policy(policy) if fast_paths else None
    frozen_ids = {id(p) for p in frozen}
    if fused is not None and not any(id(p) in frozen_ids for p in fused.params):
        return fused.fit(targets.observations, targets.returns, n_epochs, batch_size)  # type: ignore[arg-type]
    return fit_critic_torch(policy, targets, n_epochs, batch_size, frozen)


def fit_critic_torch(
    policy: ActorCriticPolicy,
    targets: ValueTargets,
    n_epochs: int,
    batch_size: int,
    frozen: Sequence[nn.Parameter],
) -> list[float]:
    """
    Generic value regression: ``n_epochs`` passes of shuffled minibatches of ``targets`` (one
    ``np.random.permutation`` per pass, as ``RolloutBuffer.get`` draws them), each an optimizer
    step of ``policy.optimizer`` on the mean-squared error, with the gradients of the ``frozen``
    (actor) parameters dropped before the step.

    :return: the loss of every minibatch
    """
    n_samples = len(targets.returns)
    losses = []
    for _ in range(n_epochs):
        indices = np.random.permutation(n_samples)
        for start in range(0, n_samples, batch_size):
            observations, returns = targets.minibatch(indices[start : start + batch_size], policy.device)
            values_pred = policy.predict_values(observations)
            value_loss = F.mse_loss(returns, values_pred.flatten())
            losses.append(value_loss.item())
            policy.optimizer.zero_grad()
            value_loss.backward()
            for param in frozen:
                param.grad = None
            policy.optimizer.step()
    return losses
