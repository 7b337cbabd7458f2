"""
Single-path sampling (Schulman et al. 2015, section 5.1): run pi_old in the training
environment and keep every (s, a) pair with log pi_old(a|s) (q = pi_old: no separate log q).
The collector sits below the algorithm: it receives the environment, the policy, the buffer, the
callback and the trunk's last observations, and reports every step back through two hooks.

The collection loop keeps every semantic of SB3's ``OnPolicyAlgorithm.collect_rollouts``
(callbacks called once per step with the same local variables, timeouts bootstrapped with the
value function, episode statistics, gSDE noise resampling, action clipping or unscaling); it is
faster because the policy is frozen during a rollout: for the standard MLP policies it is
evaluated by :class:`sb3_trpo_plus.fast.NumpyActor` (unless ``fast_paths=False``), which reads
the weights through NumPy views of their memory and draws its noise from torch's random
generator exactly as SB3's distributions do, so a seed gives the same action stream. Every
other policy, and any policy with a module hook or a method replaced on an instance, goes
through :class:`TorchActor`. User code that runs during a rollout (callbacks) may still change
the policy: the NumPy actor is checked before every use and built again (or replaced by the
torch one) when it no longer computes what torch would.

The per-step work follows what the user attached: without callbacks (``learn`` given none,
and no progress bar), no user code runs between two steps and nothing reads the step's locals, so
the NumPy actor is used as built, with arrays only: no observation tensor, no value and
log-probability tensors, no ``update_locals`` and no staleness check per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback, ProgressBarCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_plus import observations as batches
from sb3_trpo_plus.distributions import ExplorationRedraw
from sb3_trpo_plus.fast import NumpyActor, single_blas_thread


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
            return self.policy.predict_values(batches.to_tensor(obs, self.policy.device))


def make_actor(policy: ActorCriticPolicy, fast_paths: bool = True) -> NumpyActor | TorchActor:
    """The fastest exact evaluator of ``policy`` for a rollout (the torch one with ``fast_paths=False``)."""
    return (NumpyActor.from_policy(policy) if fast_paths else None) or TorchActor(policy)


def _device(actor: NumpyActor | TorchActor) -> th.device:
    """
    The policy's device (``policy.device`` walks every module: a large share of a small policy's
    step). The NumPy actor keeps it from its construction: moving the policy replaces the storage
    of its parameters, which makes the actor stale, and a stale actor is replaced before use.
    """
    return actor.device if isinstance(actor, NumpyActor) else actor.policy.device


def current_actor(actor: NumpyActor | TorchActor) -> NumpyActor | TorchActor:
    """``actor``, or a new one if user code (a callback) changed the policy under the NumPy copy."""
    if isinstance(actor, NumpyActor) and actor.stale():
        return make_actor(actor.policy)
    return actor


def reset_noise(policy: ActorCriticPolicy, n_envs: int) -> None:
    """
    Draw new gSDE exploration matrices, as SB3's ``policy.reset_noise`` does, without gradient
    tracking: the same values, but SB3 would draw them through log_std's graph and leave that
    graph on the policy's distribution object (``weights_dist``, ``exploration_mat``,
    ``exploration_matrices``) for the whole rollout, where it makes ``copy.deepcopy`` and ``pickle``
    of the policy fail. Only sampling reads the matrices; no gradient is taken through them.

    :param policy: the policy (gSDE)
    :param n_envs: the number of environments, one matrix each
    """
    with th.no_grad():
        policy.reset_noise(n_envs)


def collect_single_path(
    env: VecEnv,
    policy: ActorCriticPolicy,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    last_obs: Any,
    last_episode_starts: np.ndarray,
    *,
    gamma: float,
    use_sde: bool,
    sde_sample_freq: int,
    count_steps: Callable[[int], None],
    end_step: Callable[[Any, np.ndarray, list[dict[str, Any]]], None],
    fast_paths: bool = True,
    before_step: Callable[[Any, np.ndarray], None] | None = None,
) -> bool:
    """
    Fill ``rollout_buffer`` with ``n_rollout_steps`` steps per environment of pi_old from
    ``last_obs``, exactly as SB3's ``OnPolicyAlgorithm.collect_rollouts`` does (same callbacks and
    local names, same timeout bootstrapping), with the policy evaluated by :func:`make_actor`.
    The algorithm's state is reported through the two hooks, at the points SB3 updates it:

    :param count_steps: called with ``env.num_envs`` after every environment step, before the
        callbacks see it (the algorithm's ``num_timesteps``)
    :param end_step: called with the new observations, the done flags and the infos of every step
        the callbacks let pass (the algorithm's episode statistics and trunk position)
    :param fast_paths: whether the NumPy actor may evaluate the policy (see :mod:`sb3_trpo_plus.fast`)
    :param before_step: called with the current observations and episode-start flags before
        every environment step (the vine scheme keeps its rollout set there)
    :return: False if a callback stopped the rollout early, True otherwise
    """
    policy.set_training_mode(False)
    n_steps = 0
    rollout_buffer.reset()
    if use_sde:
        reset_noise(policy, env.num_envs)
    actor = make_actor(policy, fast_paths)
    # Without callbacks nothing reads the step's locals and no user code runs between two steps:
    # the NumPy actor is then used as built, with arrays only (no tensor, no staleness check),
    # and gSDE's matrices are drawn again from the distribution the first draw built.
    lean = not has_callbacks(callback)
    redraw = ExplorationRedraw.for_policy(policy) if use_sde and lean and fast_paths else None
    fast_add = type(rollout_buffer) is RolloutBuffer
    action_space = policy.action_space
    clip_low: np.ndarray | None = None
    clip_high: np.ndarray | None = None
    if isinstance(action_space, spaces.Box) and not policy.squash_output:
        clip_low, clip_high = action_space.low, action_space.high

    # the NumPy actor multiplies small matrices: one BLAS thread for the rollout (see single_blas_thread)
    blas_limit = single_blas_thread() if isinstance(actor, NumpyActor) else contextlib.nullcontext()
    with blas_limit:
        callback.on_rollout_start()

        while n_steps < n_rollout_steps:
            if use_sde and sde_sample_freq > 0 and n_steps % sde_sample_freq == 0:
                if redraw is not None:
                    redraw(env.num_envs)
                else:
                    reset_noise(policy, env.num_envs)

            if before_step is not None:
                before_step(last_obs, last_episode_starts)
            values: th.Tensor | np.ndarray
            log_probs: th.Tensor | np.ndarray
            if lean and isinstance(actor, NumpyActor):
                actions, values, log_probs = actor.act_arrays(last_obs)
            else:
                actor = current_actor(actor)  # the last callback may have edited, hooked or patched the policy
                obs_tensor = batches.to_tensor(last_obs, _device(actor))
                actions, values, log_probs = actor.act(last_obs, obs_tensor)

            clipped_actions = actions
            if clip_low is not None and clip_high is not None:
                clipped_actions = np.minimum(np.maximum(actions, clip_low), clip_high)
            elif isinstance(action_space, spaces.Box):
                clipped_actions = policy.unscale_action(clipped_actions)

            new_obs, rewards, dones, infos = env.step(clipped_actions)

            count_steps(env.num_envs)

            # Give access to local variables
            if not lean:
                callback.update_locals(locals())
            if not callback.on_step():
                return False

            end_step(new_obs, dones, infos)
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
                            terminal_value = policy.predict_values(policy.obs_to_tensor(terminal_obs)[0])[0]  # type: ignore[arg-type]
                    rewards[idx] += gamma * terminal_value.item()

            if fast_add:
                _fast_add(rollout_buffer, last_obs, actions, rewards, last_episode_starts, values, log_probs)
            else:
                rollout_buffer.add(last_obs, actions, rewards, last_episode_starts, _tensor(values), _tensor(log_probs))
            last_obs = new_obs
            last_episode_starts = dones

        values = current_actor(actor).values(new_obs)  # type: ignore[arg-type]
        if fast_add:
            returns_and_advantage(rollout_buffer, last_values=values, dones=dones)
        else:
            rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())
    callback.on_rollout_end()
    return True


def has_callbacks(callback: BaseCallback) -> bool:
    """
    Whether ``callback`` holds any callback: False only for SB3's stand-ins for none, a
    ``ConvertCallback`` of ``None`` (what ``learn`` builds when given no callback and no progress
    bar) and ``CallbackList`` objects of nothing else, nested or not.
    """
    return not all(
        type(node) is CallbackList or (type(node) is ConvertCallback and node.callback is None)
        for node in _callback_tree(callback)
    )


def _callback_tree(callback: BaseCallback) -> Iterator[BaseCallback]:
    """``callback`` and, through ``CallbackList`` objects (subclasses included), every callback it holds."""
    pending = [callback]
    while pending:
        current = pending.pop()
        yield current
        if isinstance(current, CallbackList):
            pending.extend(current.callbacks)


def _array(values: th.Tensor | np.ndarray) -> np.ndarray:
    """The values as an array: as they are, or a tensor's (``.cpu()`` is free on the CPU, needed on a GPU)."""
    return values if isinstance(values, np.ndarray) else values.detach().cpu().numpy()


def _tensor(values: th.Tensor | np.ndarray) -> th.Tensor:
    """The values as a tensor (sharing an array's memory)."""
    return th.from_numpy(values) if isinstance(values, np.ndarray) else values


def _fast_add(
    buffer: RolloutBuffer,
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    episode_starts: np.ndarray,
    values: th.Tensor | np.ndarray,
    log_probs: th.Tensor | np.ndarray,
) -> None:
    """``RolloutBuffer.add`` for CPU tensors or arrays without intermediate copies."""
    pos = buffer.pos
    buffer.observations[pos] = obs.reshape(buffer.observations.shape[1:])
    buffer.actions[pos] = actions.reshape(buffer.actions.shape[1:])
    buffer.rewards[pos] = rewards
    buffer.episode_starts[pos] = episode_starts
    buffer.values[pos] = _array(values).reshape(-1)
    buffer.log_probs[pos] = _array(log_probs).reshape(-1)
    buffer.pos += 1
    if buffer.pos == buffer.buffer_size:
        buffer.full = True


def returns_and_advantage(buffer: RolloutBuffer, last_values: th.Tensor, dones: np.ndarray) -> None:
    """
    ``RolloutBuffer.compute_returns_and_advantage``, the same numbers: SB3's loop computes, step
    by step backwards, the TD error and the GAE coefficient of each step, which depend on no
    other step; here they are computed for all steps at once (the same operations on each
    element, so the same float32 values) and the loop keeps only the recursion
    A_t = delta_t + (gamma lambda nonterminal_t) A_{t+1}. Values other than float32, or a gamma or
    lambda that is not a Python float (whose type promotion could differ), go to SB3's method.
    """
    last = last_values.clone().cpu().numpy().flatten()
    gamma, gae_lambda = buffer.gamma, buffer.gae_lambda
    if last.dtype != np.float32 or type(gamma) is not float or type(gae_lambda) is not float:
        buffer.compute_returns_and_advantage(last_values, dones)
        return
    next_non_terminal = np.empty_like(buffer.episode_starts)
    next_non_terminal[:-1] = 1.0 - buffer.episode_starts[1:]
    next_non_terminal[-1] = 1.0 - dones.astype(np.float32)
    next_values = np.empty_like(buffer.values)
    next_values[:-1] = buffer.values[1:]
    next_values[-1] = last
    delta = buffer.rewards + gamma * next_values * next_non_terminal - buffer.values
    coefficient = gamma * gae_lambda * next_non_terminal
    last_gae_lam: Any = 0
    for step in range(buffer.buffer_size - 1, -1, -1):
        last_gae_lam = delta[step] + coefficient[step] * last_gae_lam
        buffer.advantages[step] = last_gae_lam
    buffer.returns = buffer.advantages + buffer.values


def advance_progress_bars(callback: BaseCallback, steps: int) -> None:
    """
    Move SB3's progress bars (``progress_bar=True``, or a ``ProgressBarCallback`` among the
    callbacks) on by ``steps`` environment steps taken outside ``callback.on_step`` (vine branches),
    so that the bar counts the whole budget, as ``num_timesteps`` does.
    """
    for node in _callback_tree(callback):
        if isinstance(node, ProgressBarCallback) and getattr(node, "pbar", None) is not None:
            node.pbar.update(steps)
