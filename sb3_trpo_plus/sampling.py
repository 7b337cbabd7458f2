"""
Single-path sampling (Schulman et al. 2015, section 5.1): run pi_old in the training
environment and keep every (s, a) pair with log pi_old(a|s) and log q(a|s) = log pi_old(a|s).

The collection loop keeps every semantic of SB3's ``OnPolicyAlgorithm.collect_rollouts``
(callbacks called once per step with the same local variables, timeouts bootstrapped with the
value function, episode statistics, gSDE noise resampling, action clipping or unscaling); it is
faster because the policy is frozen during a rollout: for the standard MLP policies it is
evaluated by :class:`NumpyActor`, which reads the weights through NumPy views of their memory and
draws its noise from torch's random generator exactly as SB3's distributions do, so a seed gives
the same action stream. Every other policy, and any policy with a module hook or a method
replaced on an instance, goes through :class:`TorchActor`. User code that runs during a rollout
(callbacks) may still change the policy: the NumPy actor is checked before every use and built
again (or replaced by the torch one) when it no longer computes what torch would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from types import FunctionType, MethodType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from threadpoolctl import ThreadpoolController
from torch import nn
from torch.nn.modules import module as module_globals

from sb3_trpo_plus.buffers import QRolloutBuffer

if TYPE_CHECKING:
    from sb3_trpo_plus.trpo_plus import TRPOPlus

_ACTIVATIONS: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray]] = {
    nn.Tanh: np.tanh,
    nn.ReLU: lambda x: np.maximum(x, 0.0, out=x),
    nn.Identity: lambda x: x,
}
_LOG_SQRT_2PI = 0.5 * float(np.log(2.0 * np.pi))
_BLAS: ThreadpoolController | None = None


def single_blas_thread() -> Any:
    """
    A context in which NumPy's BLAS uses one thread. The fast paths multiply small matrices, for
    which a multi-threaded BLAS only adds synchronisation: on a loaded multi-core machine it
    made them tens of times slower. The controller is built once (inspecting the loaded
    libraries takes a fraction of a millisecond; entering the limit, microseconds).
    """
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _array(tensor: th.Tensor) -> np.ndarray:
    """
    A NumPy view of a CPU tensor's memory (so the fast paths see any later in-place edit of it, by
    ``param.data`` included), a copy for a tensor on another device.
    """
    tensor = tensor.detach()
    return tensor.numpy() if tensor.device.type == "cpu" else tensor.cpu().numpy()


def _shadowed_methods(obj: Any) -> list[str]:
    """Names of methods of ``obj``'s class replaced on the instance itself (``obj.forward = ...``)."""
    cls = type(obj)
    return [name for name in vars(obj) if isinstance(getattr(cls, name, None), (FunctionType, MethodType))]


_GLOBAL_MODULE_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def global_module_hooks() -> list[dict]:
    """torch's global module hooks (``nn.modules.module.register_module_forward_hook`` and the like)."""
    return [getattr(module_globals, name) for name in _GLOBAL_MODULE_HOOKS if hasattr(module_globals, name)]


def plain_modules(objects: list[Any], backward: bool = False) -> bool:
    """
    Whether ``objects`` (modules and other objects a fast path reads) behave as their classes
    say: no forward hook or pre-hook (backward ones too with ``backward=True``), module-level or
    global, and no method replaced on an instance. A fast path that reimplements the classes'
    arithmetic must not serve objects that are not plain: the generic torch path honours all this.
    """
    if any(global_module_hooks()[: 4 if backward else 2]):
        return False
    for obj in objects:
        if _shadowed_methods(obj):
            return False
        if isinstance(obj, nn.Module):
            if obj._forward_hooks or obj._forward_pre_hooks:
                return False
            if backward and (obj._backward_hooks or obj._backward_pre_hooks):
                return False
    return True


class Watch:
    """
    A cheap fingerprint of what a forward-only fast path copied or trusts: the number of forward
    hooks and instance attributes of every object (a new hook or an instance patch adds one), and
    the storage and (with ``versions``) version counter of every parameter (an in-place edit
    under ``no_grad``, an optimizer step or ``load_state_dict`` bumps the version;
    ``param.data = ...`` changes the storage). Compare :meth:`signature` before and after user
    code ran.
    """

    def __init__(self, objects: list[Any], params: Sequence[th.Tensor], versions: bool = True) -> None:
        self.dicts: list[dict] = [*global_module_hooks()[:2]]
        for obj in objects:
            self.dicts.append(vars(obj))
            if isinstance(obj, nn.Module):
                self.dicts += [obj._forward_hooks, obj._forward_pre_hooks]
        self.params = params
        self.versions = versions  # not needed by a reader of NumPy views, which sees in-place edits
        self.pointers = [p.data_ptr for p in params]  # bound once: this runs every step
        self.initial = self.signature()

    def signature(self) -> tuple:
        return (
            sum(map(len, self.dicts)),
            [p._version for p in self.params] if self.versions else None,
            [pointer() for pointer in self.pointers],
        )

    def changed(self) -> bool:
        return self.signature() != self.initial


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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Normalised log-probabilities of categorical logits (rows), as torch's Categorical keeps them."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


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


def _standard_methods(policy: ActorCriticPolicy, names: tuple[str, ...]) -> bool:
    """Whether ``policy`` computes these methods as SB3's ActorCriticPolicy does (a subclass may override them)."""
    return all(getattr(type(policy), name) is getattr(ActorCriticPolicy, name) for name in names)


def _forward(layers: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]], x: np.ndarray) -> np.ndarray:
    for weight, bias, activation in layers:
        x = activation(x @ weight + bias)
    return x


class TorchActor:
    """
    Evaluates any SB3 actor-critic policy through its own ``forward`` (the generic path).

    :param policy: the policy, frozen for the duration of the rollout
    """

    def __init__(self, policy: ActorCriticPolicy) -> None:
        self.policy = policy

    def act(self, obs: Any, obs_tensor: Any) -> tuple[np.ndarray, th.Tensor, th.Tensor]:
        """Actions (numpy), values and log-probabilities (tensors) for a batch of observations."""
        with th.no_grad():
            actions, values, log_probs = self.policy(obs_tensor)
        return actions.cpu().numpy(), values, log_probs

    def values(self, obs: Any) -> th.Tensor:
        """State values for a batch of observations (numpy or dict of numpy arrays)."""
        with th.no_grad():
            return self.policy.predict_values(obs_as_tensor(obs, self.policy.device))


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
        self.std: np.ndarray | None = None
        self.gsde_std: np.ndarray | None = None
        self.gsde_matrices: tuple[Any, np.ndarray, np.ndarray] | None = None
        params = list(policy.parameters())
        self.watch = Watch([*policy.modules(), self.dist], params, versions=any(p.device.type != "cpu" for p in params))
        # Parameters read through views are always current; those the copy computes from (the
        # fused first layer, the standard deviations) are kept as bytes to compare with (cheaper
        # than np.array_equal on small arrays).
        sources = [actor[0][0], critic[0][0], actor[0][1], critic[0][1]] if self.split else []
        if hasattr(policy, "log_std") and isinstance(self.dist, (DiagGaussianDistribution, StateDependentNoiseDistribution)):
            sources.append(_array(policy.log_std))
        self.derived_sources = [source.tobytes for source in sources]
        self.derived = [tobytes() for tobytes in self.derived_sources]
        if isinstance(self.dist, StateDependentNoiseDistribution):
            with th.no_grad():
                self.gsde_std = self.dist.get_std(policy.log_std).cpu().numpy().astype(np.float32)
        elif isinstance(self.dist, DiagGaussianDistribution):
            with th.no_grad():  # exp in torch: the scale torch's Normal would hold, to the bit
                self.std = policy.log_std.exp().cpu().numpy().astype(np.float32)

    @classmethod
    def from_policy(cls, policy: ActorCriticPolicy) -> NumpyActor | None:
        """The NumPy actor of ``policy``, or None when ``policy`` is not of the supported form."""
        supported_dist = (
            DiagGaussianDistribution,
            StateDependentNoiseDistribution,
            CategoricalDistribution,
            MultiCategoricalDistribution,
            BernoulliDistribution,
        )
        dist: Any = policy.action_dist
        if (
            not _standard_methods(policy, ("forward", "extract_features", "_get_action_dist_from_latent", "predict_values"))
            or type(dist) not in supported_dist
            or (isinstance(dist, StateDependentNoiseDistribution) and (dist.bijector is not None or dist.learn_features))
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
        copied): then build the rollout's actor again with :func:`make_actor`.
        """
        return self.watch.changed() or [tobytes() for tobytes in self.derived_sources] != self.derived

    def _features(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
        return _forward(self.shared, x) if self.shared else x

    def act(self, obs: np.ndarray, obs_tensor: Any = None) -> tuple[np.ndarray, th.Tensor, th.Tensor]:
        """
        Actions (numpy, in SB3's format), values and log-probabilities (tensors). Call it inside
        :func:`single_blas_thread` (the collector holds it for the whole rollout).
        """
        features = self._features(obs)
        if self.split:
            weight, bias, activation = self.first
            hidden = activation(features @ weight + bias)
            latent = _forward(self.actor[1:], hidden[:, : self.split])
            values = _forward(self.critic[1:], hidden[:, self.split :])
        else:
            latent = _forward(self.actor, features)
            values = _forward(self.critic, features)
        params = _forward(self.head, latent)
        if self.gsde_std is not None:
            actions, log_prob = self._gsde(params, latent)
        elif self.std is not None:
            noise = th.randn(params.shape).numpy()
            actions = params + noise * self.std
            log_prob = gaussian_log_prob(actions, params, self.std)
        elif isinstance(self.dist, BernoulliDistribution):
            # probabilities by torch's sigmoid, so that th.bernoulli draws exactly what SB3's would
            actions = th.bernoulli(th.sigmoid(th.from_numpy(params))).numpy()
            log_prob = bernoulli_log_prob(params, actions)
        else:
            dims = [params.shape[1]] if isinstance(self.dist, CategoricalDistribution) else list(self.dist.action_dims)  # type: ignore[attr-defined]
            columns, log_prob = [], np.zeros(len(params), dtype=np.float32)
            for logits in np.split(params, np.cumsum(dims)[:-1], axis=1):
                log_p = log_softmax(logits)
                choice = th.multinomial(th.from_numpy(np.exp(log_p)), 1, True).numpy()[:, 0]
                columns.append(choice)
                log_prob += log_p[np.arange(len(choice)), choice]
            actions = columns[0] if isinstance(self.dist, CategoricalDistribution) else np.stack(columns, axis=1)
        actions = actions.reshape((-1, *self.policy.action_space.shape))  # type: ignore[misc, arg-type]
        return actions, th.from_numpy(values), th.from_numpy(np.asarray(log_prob, dtype=np.float32))

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
        assert self.gsde_std is not None
        std = np.sqrt((latent * latent) @ (self.gsde_std * self.gsde_std) + dist.epsilon)
        actions = mean + noise
        return actions, gaussian_log_prob(actions, mean, std)

    def values(self, obs: np.ndarray) -> th.Tensor:
        """State values for a batch of observations."""
        return th.from_numpy(_forward(self.critic, self._features(obs)).astype(np.float32))


def make_actor(policy: ActorCriticPolicy) -> NumpyActor | TorchActor:
    """The fastest exact evaluator of ``policy`` for a rollout."""
    return NumpyActor.from_policy(policy) or TorchActor(policy)


def current_actor(actor: NumpyActor | TorchActor) -> NumpyActor | TorchActor:
    """``actor``, or a new one if user code (a callback) changed the policy under the NumPy copy."""
    if isinstance(actor, NumpyActor) and actor.stale():
        return make_actor(actor.policy)
    return actor


def collect_single_path(
    algo: TRPOPlus,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    before_step: Callable[[Any, np.ndarray], None] | None = None,
) -> bool:
    """
    Fill ``rollout_buffer`` with ``n_rollout_steps`` steps per environment of pi_old, exactly as
    SB3's ``OnPolicyAlgorithm.collect_rollouts`` does (same callbacks and local names, same
    timeout bootstrapping and episode statistics), with the policy evaluated by
    :func:`make_actor`.

    :param before_step: called with the current observations and episode-start flags before
        every environment step (the vine scheme keeps its rollout set there)
    :return: False if a callback stopped the rollout early, True otherwise
    """
    assert algo._last_obs is not None, "No previous observation was provided"
    algo.policy.set_training_mode(False)
    n_steps = 0
    rollout_buffer.reset()
    if algo.use_sde:
        algo.policy.reset_noise(env.num_envs)
    actor = make_actor(algo.policy)
    fast_add = type(rollout_buffer) is QRolloutBuffer
    action_space = algo.action_space
    clip_low: np.ndarray | None = None
    clip_high: np.ndarray | None = None
    if isinstance(action_space, spaces.Box) and not algo.policy.squash_output:
        clip_low, clip_high = action_space.low, action_space.high

    # the NumPy actor multiplies small matrices: one BLAS thread for the rollout (see single_blas_thread)
    blas_limit = single_blas_thread() if isinstance(actor, NumpyActor) else contextlib.nullcontext()
    with blas_limit:
        callback.on_rollout_start()

        while n_steps < n_rollout_steps:
            if algo.use_sde and algo.sde_sample_freq > 0 and n_steps % algo.sde_sample_freq == 0:
                algo.policy.reset_noise(env.num_envs)

            if before_step is not None:
                before_step(algo._last_obs, algo._last_episode_starts)  # type: ignore[arg-type]
            obs_tensor = obs_as_tensor(algo._last_obs, algo.device)  # type: ignore[arg-type]
            actor = current_actor(actor)  # the last callback may have edited, hooked or patched the policy
            actions, values, log_probs = actor.act(algo._last_obs, obs_tensor)  # type: ignore[arg-type]

            clipped_actions = actions
            if clip_low is not None and clip_high is not None:
                clipped_actions = np.minimum(np.maximum(actions, clip_low), clip_high)
            elif isinstance(action_space, spaces.Box):
                clipped_actions = algo.policy.unscale_action(clipped_actions)

            new_obs, rewards, dones, infos = env.step(clipped_actions)

            algo.num_timesteps += env.num_envs

            # Give access to local variables
            callback.update_locals(locals())
            if not callback.on_step():
                return False

            algo._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)

            # Bootstrap truncated episodes with the value of their last observation
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = infos[idx]["terminal_observation"]
                    actor = current_actor(actor)
                    if isinstance(actor, NumpyActor):
                        terminal_value = actor.values(terminal_obs[None])[0]
                    else:
                        with th.no_grad():
                            terminal_value = algo.policy.predict_values(algo.policy.obs_to_tensor(terminal_obs)[0])[0]  # type: ignore[arg-type]
                    rewards[idx] += algo.gamma * terminal_value.item()

            if fast_add:
                _fast_add(rollout_buffer, algo._last_obs, actions, rewards, algo._last_episode_starts, values, log_probs)  # type: ignore[arg-type]
            else:
                rollout_buffer.add(algo._last_obs, actions, rewards, algo._last_episode_starts, values, log_probs)  # type: ignore[arg-type]
            algo._last_obs = new_obs  # type: ignore[assignment]
            algo._last_episode_starts = dones

        values = current_actor(actor).values(new_obs)  # type: ignore[arg-type]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())
    callback.on_rollout_end()
    return True


def _fast_add(
    buffer: RolloutBuffer,
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    episode_starts: np.ndarray,
    values: th.Tensor,
    log_probs: th.Tensor,
) -> None:
    """``RolloutBuffer.add`` for CPU tensors and arrays without intermediate copies."""
    pos = buffer.pos
    buffer.observations[pos] = obs.reshape(buffer.observations.shape[1:])
    buffer.actions[pos] = actions.reshape(buffer.actions.shape[1:])
    buffer.rewards[pos] = rewards
    buffer.episode_starts[pos] = episode_starts
    # .cpu() is free for the NumPy actor's tensors and needed for the torch actor's on a GPU
    buffer.values[pos] = values.detach().cpu().numpy().reshape(-1)
    buffer.log_probs[pos] = buffer.log_q[pos] = log_probs.detach().cpu().numpy().reshape(-1)  # type: ignore[attr-defined]
    buffer.pos += 1
    if buffer.pos == buffer.buffer_size:
        buffer.full = True
