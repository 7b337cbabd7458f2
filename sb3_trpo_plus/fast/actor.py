"""
The NumPy actor: a NumPy copy of a standard MLP actor-critic policy that evaluates it during a
rollout (the policy is frozen then), reading the weights through NumPy views of their memory and
drawing its noise from torch's random generator exactly as SB3's distributions do, so a seed gives
the same action stream. :meth:`NumpyActor.from_policy` returns ``None`` for any policy it does
not compute exactly (then the generic torch actor is used); user code that runs during a rollout
(callbacks) may still change the policy, which :meth:`NumpyActor.stale` notices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from torch import nn

from sb3_trpo_plus.distributions import TorchNoise, family_of, find_family, gaussian_log_prob
from sb3_trpo_plus.fast.plain import Watch, plain_modules

_ACTIVATIONS: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray]] = {  # in place: on a new array
    nn.Tanh: lambda x: np.tanh(x, out=x),
    nn.ReLU: lambda x: np.maximum(x, 0.0, out=x),
    nn.Identity: lambda x: x,
}


def _array(tensor: th.Tensor) -> np.ndarray:
    """
    A NumPy view of a CPU tensor's memory (so the fast paths see any later in-place edit of it, by
    ``param.data`` included), a copy for a tensor on another device.
    """
    tensor = tensor.detach()
    return tensor.numpy() if tensor.device.type == "cpu" else tensor.cpu().numpy()


def _numpy_layers(module: nn.Module) -> list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]] | None:
    """(weight^T, bias, activation) of a Sequential of Linear layers and known activations, or None."""
    modules = list(module) if isinstance(module, nn.Sequential) else [module]
    layers: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]] = []
    for layer in modules:
        if type(layer) is nn.Linear:
            if layer.bias is None:
                return None
            layers.append((_array(layer.weight).T, _array(layer.bias), _ACTIVATIONS[nn.Identity]))
        elif type(layer) in _ACTIVATIONS and layers:
            weight, bias, _ = layers[-1]
            layers[-1] = (weight, bias, _ACTIVATIONS[type(layer)])
        else:
            return None
    return layers


def _standard_methods(policy: ActorCriticPolicy, names: tuple[str, ...]) -> bool:
    """Whether ``policy`` computes these methods as SB3's ActorCriticPolicy does (a subclass may override them)."""
    return all(getattr(type(policy), name) is getattr(ActorCriticPolicy, name) for name in names)


def _forward(layers: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]], x: np.ndarray) -> np.ndarray:
    for weight, bias, activation in layers:
        x = x @ weight
        x += bias  # the sum x @ weight + bias computes, without a second array
        x = activation(x)
    return x


class NumpyActor:
    """
    A NumPy copy of a standard MLP actor-critic policy (flattened Box observations, an
    ``MlpExtractor`` of Linear layers with Tanh/ReLU activations, linear heads, a Gaussian
    without gSDE, categorical, multi-categorical or Bernoulli action distribution), built with
    :meth:`from_policy`, which returns ``None`` for any other policy.

    Noise is drawn from torch's global generator with the calls SB3's distributions make
    (``randn`` for Gaussians, ``multinomial`` for categoricals, ``bernoulli`` for Bernoulli), so
    the random stream, and thus the actions for a given seed, are those of SB3's own path.
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        shared: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]],
        actor: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]],
        head: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]],
        critic: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]],
    ) -> None:
        self.policy = policy
        self.device = policy.device  # fixed while the copy is current (a move makes it stale)
        self.shared = shared
        self.actor = actor  # hidden layers: their output is latent_pi (gSDE's noise features)
        self.head = head  # action_net
        self.critic = critic
        # The first layers of actor and critic read the same features: one matmul for both.
        self.split = 0
        if actor and len(critic) > 1 and actor[0][2] is critic[0][2]:
            self.split = actor[0][0].shape[1]
            self.first = (
                np.concatenate([actor[0][0], critic[0][0]], axis=1),
                np.concatenate([actor[0][1], critic[0][1]]),
                actor[0][2],
            )
        self.dist = policy.action_dist
        self.family = family_of(self.dist)
        self.noise = TorchNoise()  # the tensors torch's generator draws into, kept for the rollout
        self.action_shape = (-1, *policy.action_space.shape)  # type: ignore[misc]
        self.std: np.ndarray | None = None
        self.gsde_std: np.ndarray | None = None
        self.gsde_var: np.ndarray | None = None
        self.gsde_matrices: tuple[Any, np.ndarray, np.ndarray] | None = None
        params = list(policy.parameters())
        self.watch = Watch([*policy.modules(), self.dist], params, versions=any(p.device.type != "cpu" for p in params))
        # Parameters read through views are always current; those the copy computes from (the
        # fused first layer, the standard deviations) are kept as bytes to compare with (cheaper
        # than np.array_equal on small arrays).
        sources = [actor[0][0], critic[0][0], actor[0][1], critic[0][1]] if self.split else []
        if hasattr(policy, "log_std") and self.family.gaussian:
            sources.append(_array(policy.log_std))
        self.derived_sources = [source.tobytes for source in sources]
        self.derived = [tobytes() for tobytes in self.derived_sources]
        if self.family.state_dependent:
            with th.no_grad():
                self.gsde_std = self.dist.get_std(policy.log_std).cpu().numpy().astype(np.float32)  # type: ignore[attr-defined]
            self.gsde_var = self.gsde_std * self.gsde_std
        elif self.family.gaussian:
            with th.no_grad():  # exp in torch: the scale torch's Normal would hold, to the bit
                self.std = policy.log_std.exp().cpu().numpy().astype(np.float32)

    @classmethod
    def from_policy(cls, policy: ActorCriticPolicy) -> NumpyActor | None:
        """The NumPy actor of ``policy``, or None when ``policy`` is not of the supported form."""
        dist: Any = policy.action_dist
        family = find_family(dist)
        if (
            not _standard_methods(policy, ("forward", "extract_features", "_get_action_dist_from_latent", "predict_values"))
            or family is None
            or type(dist) is not family.sb3_class  # a subclass may sample otherwise
            or not family.numpy_supported(dist)
            or not isinstance(policy.observation_space, spaces.Box)
            or is_image_space(policy.observation_space)
            or type(policy.pi_features_extractor) is not FlattenExtractor
            or type(policy.vf_features_extractor) is not FlattenExtractor
            or type(policy.mlp_extractor) is not MlpExtractor
            or policy.squash_output
            or not plain_modules([*policy.modules(), dist])
        ):
            return None
        extractor: Any = policy.mlp_extractor
        shared = _numpy_layers(extractor.shared_net) if hasattr(extractor, "shared_net") else []
        actor = _numpy_layers(extractor.policy_net)
        head = _numpy_layers(policy.action_net)
        critic = _numpy_layers(nn.Sequential(*extractor.value_net, policy.value_net))
        if shared is None or actor is None or head is None or critic is None:
            return None
        return cls(policy, shared, actor, head, critic)

    def stale(self) -> bool:
        """
        Whether the policy changed since this copy was made in a way its NumPy views do not follow
        (a hook, an instance patch, a replaced or edited parameter, an edited weight that was
        copied): then build the rollout's actor again with :func:`sb3_trpo_plus.sampling.make_actor`.
        """
        return self.watch.changed() or [tobytes() for tobytes in self.derived_sources] != self.derived

    def _features(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
        return _forward(self.shared, x) if self.shared else x

    def act(self, obs: np.ndarray, obs_tensor: Any = None) -> tuple[np.ndarray, th.Tensor, th.Tensor]:
        """
        Actions (numpy, in SB3's format), values and log-probabilities (tensors, as SB3's policy
        returns them). Call it inside :func:`sb3_trpo_plus.fast.blas.single_blas_thread` (the
        collector holds it for the whole rollout).
        """
        actions, values, log_prob = self.act_arrays(obs)
        return actions, th.from_numpy(values), th.from_numpy(log_prob)

    def act_arrays(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`act` with values and log-probabilities as float32 arrays (no tensor is made)."""
        features = self._features(obs)
        if self.split:
            hidden = _forward([self.first], features)
            latent = _forward(self.actor[1:], hidden[:, : self.split])
            values = _forward(self.critic[1:], hidden[:, self.split :])
        else:
            latent = _forward(self.actor, features)
            values = _forward(self.critic, features)
        params = _forward(self.head, latent)
        if self.gsde_std is not None:
            actions, log_prob = self._gsde(params, latent)
        else:  # torch's random calls as SB3's distribution makes them (sb3_trpo_plus.distributions)
            actions, log_prob = self.family.sample_torch_noise(self.dist, params, self.std, self.noise)
        return actions.reshape(self.action_shape), values, np.asarray(log_prob, dtype=np.float32)

    def _gsde(self, mean: np.ndarray, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """gSDE: noise = latent_pi times the current exploration matrix (no random draw per step, as in SB3)."""
        dist: Any = self.dist
        if self.gsde_matrices is None or self.gsde_matrices[0] is not dist.exploration_matrices:
            matrices = dist.exploration_matrices
            self.gsde_matrices = (matrices, dist.exploration_mat.detach().cpu().numpy(), matrices.detach().cpu().numpy())
        _, single, batched = self.gsde_matrices
        if len(latent) == 1 or len(latent) != len(batched):
            noise = latent @ single
        else:
            noise = np.einsum("bi,bij->bj", latent, batched)
        assert self.gsde_var is not None
        std = np.sqrt((latent * latent) @ self.gsde_var + dist.epsilon)
        actions = mean + noise
        return actions, gaussian_log_prob(actions, mean, std)

    def values(self, obs: np.ndarray) -> th.Tensor:
        """State values for a batch of observations."""
        return th.from_numpy(_forward(self.critic, self._features(obs)).astype(np.float32))
