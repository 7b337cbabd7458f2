"""
Fitting the value function (the baseline of the advantages): minibatch regression of V(s) on
the empirical returns, several passes over the batch, with the policy's own optimizer.

The critic never moves a parameter the action distribution depends on: the KL constraint of
the policy step would otherwise be broken behind its back.

The fit receives its data explicitly, as :class:`ValueTargets` (flattened observations and
returns, built from a rollout buffer in either of its layouts), and :func:`fit_critic` chooses
between three implementations with the same semantics (same minibatches drawn from NumPy's global
generator, as SB3's ``RolloutBuffer.get`` draws them, same mean-squared loss, same optimizer
step on the same parameters):

- :func:`fit_critic_torch`, the generic loop through autograd and ``policy.optimizer``;
- :class:`sb3_trpo_plus.fast.FusedMlpCritic`, for the standard MLP critic trained with Adam
  (unless ``fast_paths=False``): the whole regression runs on flat float32 arrays, then
  parameters and the optimizer's state are written back;
- :func:`fit_critic_cached_features`, when the critic's features extractor is frozen (an actor
  parameter, as SB3's CnnPolicy and MultiInputPolicy share it by default) and plain (unless
  ``fast_paths=False``): its features are computed once per fit, without autograd, and every
  minibatch regresses the critic's head on them instead of running the extractor forward and
  backward again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from torch import nn
from torch.nn import functional as F

from sb3_trpo_plus import observations as batches
from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.fast import FusedMlpCritic, plain_modules


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
        return cls(batches.apply(buffer.observations, flatten), flatten(buffer.returns).reshape(-1))

    def extended(self, more_observations: np.ndarray | dict[str, np.ndarray], returns: np.ndarray) -> ValueTargets:
        """These targets followed by more (e.g. the vine branches' returns), in this batch's dtypes."""

        def append(mine: np.ndarray, more: Any) -> np.ndarray:
            return np.concatenate([mine, np.asarray(more, dtype=mine.dtype).reshape(-1, *mine.shape[1:])])

        merged = batches.combine(self.observations, more_observations, append)
        return ValueTargets(merged, np.concatenate([self.returns, np.asarray(returns, dtype=self.returns.dtype).reshape(-1)]))

    def minibatch(self, indices: np.ndarray | slice, device: th.device) -> tuple[Any, th.Tensor]:
        """Observations and returns at ``indices`` as tensors on ``device`` (copies, as ``RolloutBuffer`` makes them)."""
        batch = batches.apply(self.observations, lambda value: th.tensor(value[indices], device=device))
        return batch, th.tensor(self.returns[indices], device=device)


def value_targets(rollout_buffer: RolloutBuffer, batch: Any) -> ValueTargets | None:
    """
    What the critic is regressed on: the trunk's returns and, for a vine batch that recorded
    them, the branches'; None when a return is not finite (regressing on it would make the
    critic, and every later advantage, non-finite).
    """
    targets = ValueTargets.from_buffer(rollout_buffer)
    if isinstance(batch, VineBatch) and batch.critic_observations is not None and batch.critic_returns is not None:
        targets = targets.extended(batch.critic_observations, batch.critic_returns)
    return targets if bool(np.isfinite(targets.returns).all()) else None


def rebootstrapped(policy: ActorCriticPolicy, batch: VineBatch) -> VineBatch:
    """The vine batch with its cut and truncated branches completed by the (refitted) critic."""
    if batch.bootstrap_observations is None:
        return batch
    with th.no_grad():
        values = policy.predict_values(batches.to_tensor(batch.bootstrap_observations, policy.device))
    return batch.rebootstrapped(values)


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
    ``fast_paths`` and the fused fit moves no ``frozen`` parameter), on features computed once
    when the critic's features extractor is frozen and plain (when ``fast_paths``,
    :func:`cacheable_features`), through autograd otherwise.

    :param policy: the policy, whose ``optimizer`` makes the steps
    :param targets: the regression data
    :param n_epochs: passes over the batch
    :param batch_size: minibatch size
    :param frozen: the parameters the fit must not move (the actor's); their gradients are dropped
    :param fast_paths: whether the fused and cached-features fits may serve the policy
    :return: the loss of every minibatch
    """
    fused = FusedMlpCritic.from_policy(policy) if fast_paths else None
    frozen_ids = {id(p) for p in frozen}
    if fused is not None and not any(id(p) in frozen_ids for p in fused.params):
        return fused.fit(targets.observations, targets.returns, n_epochs, batch_size)  # type: ignore[arg-type]
    if fast_paths and cacheable_features(policy, frozen):
        return fit_critic_cached_features(policy, targets, n_epochs, batch_size, frozen)
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

    def predict(minibatch: np.ndarray) -> tuple[th.Tensor, th.Tensor]:
        observations, returns = targets.minibatch(minibatch, policy.device)
        return policy.predict_values(observations), returns

    return _regress(policy, len(targets.returns), n_epochs, batch_size, frozen, predict)


def _regress(
    policy: ActorCriticPolicy,
    n_samples: int,
    n_epochs: int,
    batch_size: int,
    frozen: Sequence[nn.Parameter],
    predict: Callable[[np.ndarray], tuple[th.Tensor, th.Tensor]],
) -> list[float]:
    """
    The minibatch loop both torch fits share: ``n_epochs`` passes of shuffled minibatches (one
    ``np.random.permutation`` per pass, as ``RolloutBuffer.get`` draws them), each an optimizer
    step of ``policy.optimizer`` on the mean-squared error, the ``frozen`` gradients dropped.

    :param predict: the values and the returns of a minibatch's indices
    :return: the loss of every minibatch
    """
    losses = []
    for _ in range(n_epochs):
        indices = np.random.permutation(n_samples)
        for start in range(0, n_samples, batch_size):
            values_pred, returns = predict(indices[start : start + batch_size])
            value_loss = F.mse_loss(returns, values_pred.flatten())
            losses.append(value_loss.item())
            policy.optimizer.zero_grad()
            value_loss.backward()
            for param in frozen:
                param.grad = None
            policy.optimizer.step()
    return losses


# Modules of a features extractor whose forward is deterministic and the same in training and
# evaluation mode: SB3's own extractors and the torch layers they (or a plain custom network of
# the same kind inside them) are made of. Dropout, batch normalisation and any other class send
# the fit to the generic path.
_PLAIN_EXTRACTOR_MODULES: frozenset[type[nn.Module]] = frozenset(
    {
        NatureCNN,
        FlattenExtractor,
        CombinedExtractor,
        nn.Sequential,
        nn.ModuleDict,
        nn.ModuleList,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.Linear,
        nn.Flatten,
        nn.Identity,
        nn.ReLU,
        nn.Tanh,
        nn.ELU,
        nn.LeakyReLU,
        nn.SiLU,
        nn.GELU,
        nn.Sigmoid,
        nn.MaxPool2d,
        nn.AvgPool2d,
    }
)


def cacheable_features(policy: ActorCriticPolicy, frozen: Sequence[nn.Parameter]) -> bool:
    """
    Whether the critic's input features can be computed once per fit (:func:`fit_critic_cached_features`)
    with the result of :func:`fit_critic_torch`: ``policy.predict_values`` is SB3's (features of
    ``vf_features_extractor`` through ``BaseModel.extract_features``, then ``forward_critic`` and
    ``value_net``), every parameter of that extractor is ``frozen`` (so the fit never moves it:
    the default CnnPolicy and MultiInputPolicy, whose extractor is shared with the actor, not
    ``share_features_extractor=False``, whose critic trains its own), the extractor is made of
    SB3's extractors and deterministic torch layers only (:data:`_PLAIN_EXTRACTOR_MODULES`), and
    no hook (forward or backward, on a module, a parameter or globally) or instance patch would
    see the extractor's per-minibatch passes that the cached fit leaves out.

    :param policy: the policy whose critic is fitted
    :param frozen: the parameters the fit must not move
    """
    extractor = policy.vf_features_extractor
    if type(policy).predict_values is not ActorCriticPolicy.predict_values:
        return False
    # ActorCriticPolicy.predict_values calls super().extract_features: BaseModel's unless a class
    # between them in the method resolution order overrides it
    extract = getattr(super(ActorCriticPolicy, policy).extract_features, "__func__", None)  # type: ignore[misc]
    if extract is not BaseModel.extract_features or not isinstance(extractor, nn.Module):
        return False
    modules = [*extractor.modules()]
    if any(type(module) not in _PLAIN_EXTRACTOR_MODULES for module in modules):
        return False
    if not plain_modules([policy, *modules], backward=True):
        return False
    frozen_ids = {id(p) for p in frozen}
    params = [*extractor.parameters()]
    return all(
        id(p) in frozen_ids and not p._backward_hooks and not getattr(p, "_post_accumulate_grad_hooks", None) for p in params
    )


def critic_features(policy: ActorCriticPolicy, targets: ValueTargets, chunk_size: int) -> th.Tensor:
    """
    The input features of the critic's head (``mlp_extractor.forward_critic``) for every
    observation of ``targets``, as ``policy.predict_values`` computes them (preprocessing included),
    without autograd, in chunks of ``chunk_size`` observations to bound the memory of the
    extractor's activations.

    :param policy: the policy
    :param targets: the regression data
    :param chunk_size: observations per forward pass of the extractor
    :return: the features, shape (N, features_dim), on the policy's device
    """
    n_samples = len(targets.returns)
    chunks = []
    with th.no_grad():
        for start in range(0, n_samples, chunk_size):
            observations, _ = targets.minibatch(slice(start, start + chunk_size), policy.device)
            chunks.append(BaseModel.extract_features(policy, observations, policy.vf_features_extractor))
    return th.cat(chunks)


def fit_critic_cached_features(
    policy: ActorCriticPolicy,
    targets: ValueTargets,
    n_epochs: int,
    batch_size: int,
    frozen: Sequence[nn.Parameter],
) -> list[float]:
    """
    :func:`fit_critic_torch` for a critic whose features extractor the fit never moves
    (:func:`cacheable_features`): the features of the whole batch are computed once
    (:func:`critic_features`, in minibatch-sized chunks), and every minibatch (the same
    ``np.random.permutation`` draws) regresses ``value_net(mlp_extractor.forward_critic(features))``
    on its returns, with the same loss and optimizer step.

    :param policy: the policy, whose ``optimizer`` makes the steps
    :param targets: the regression data
    :param n_epochs: passes over the batch
    :param batch_size: minibatch size (and chunk size of the features' computation)
    :param frozen: the parameters the fit must not move (the actor's); their gradients are dropped
    :return: the loss of every minibatch
    """
    features = critic_features(policy, targets, batch_size)

    def predict(minibatch: np.ndarray) -> tuple[th.Tensor, th.Tensor]:
        returns = th.tensor(targets.returns[minibatch], device=policy.device)
        latent_vf = policy.mlp_extractor.forward_critic(features[th.as_tensor(minibatch, device=features.device)])
        return policy.value_net(latent_vf), returns

    return _regress(policy, len(targets.returns), n_epochs, batch_size, frozen, predict)
