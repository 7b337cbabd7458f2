"""
Fitting the value function (the baseline of the advantages): minibatch regression of V(s) on
the empirical returns, several passes over the batch, with the policy's own optimizer.

The critic never moves a parameter the action distribution depends on: the KL constraint of
the policy step would otherwise be broken behind its back.

Two implementations with the same semantics (same minibatches drawn from NumPy's global
generator, as SB3's ``RolloutBuffer.get`` draws them, same mean-squared loss, same Adam update):

- :func:`fit_critic_torch`, the generic loop through autograd and ``policy.optimizer``;
- :class:`sb3_trpo_plus.fast.FusedMlpCritic`, for the standard MLP critic trained with Adam: the whole regression
  runs on flat float32 arrays (forward, hand-derived backward of the MLP, Adam on one
  contiguous vector), then parameters and the optimizer's state are written back. This removes
  the per-minibatch framework overhead that dominates small networks.
"""

from __future__ import annotations

from collections.abc import Sequence

from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from torch.nn import functional as F


def fit_critic_torch(
    policy: ActorCriticPolicy,
    rollout_buffer: RolloutBuffer,
    n_epochs: int,
    batch_size: int,
    frozen: Sequence[nn.Parameter],
) -> list[float]:
    """
    Generic value regression: ``n_epochs`` passes of minibatches from ``rollout_buffer``, each an
    optimizer step of ``policy.optimizer`` on the mean-squared error, with the gradients of the
    ``frozen`` (actor) parameters dropped before the step.

    :return: the loss of every minibatch
    """
    losses = []
    for _ in range(n_epochs):
        for rollout_data in rollout_buffer.get(batch_size):
            values_pred = policy.predict_values(rollout_data.observations)
            value_loss = F.mse_loss(rollout_data.returns, values_pred.flatten())
            losses.append(value_loss.item())
            policy.optimizer.zero_grad()
            value_loss.backward()
            for param in frozen:
                param.grad = None
            policy.optimizer.step()
    return losses
