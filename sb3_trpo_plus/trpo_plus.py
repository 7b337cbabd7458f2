"""
TRPOPlus: Trust Region Policy Optimization (Schulman et al. 2015) for Stable-Baselines3.

The algorithm box of the paper, as :meth:`TRPOPlus.learn` runs it:

1. Collect state-action pairs with pi_old (:meth:`collect_rollouts`, by the collector of
   :mod:`sb3_trpo_plus.sampling`) and estimate their advantages (GAE on a learned value function).
2. Build the importance-sampled surrogate L(theta) = mean[pi_theta(a|s) / q(a|s) * A] and the
   constraint mean KL(pi_theta || pi_old) <= delta from those samples (:meth:`_surrogate`); the
   KL is measured in that direction as sb3-contrib measures it (the paper writes
   KL(pi_old || pi_theta): the same Hessian at theta_old, the Fisher matrix, so the same step).
3. Approximately solve the constrained problem: natural-gradient direction by conjugate
   gradient on Fisher-vector products, maximal step, backtracking line search
   (:meth:`_policy_step`, built on :mod:`sb3_trpo_plus.trust_region`).
4. Fit the value function by minibatch regression, never moving a parameter the policy
   depends on (:meth:`_fit_critic`, :mod:`sb3_trpo_plus.critic`).

Everything else lives in the rooms below: argument checks (:mod:`sb3_trpo_plus.validation`),
logged keys (:mod:`sb3_trpo_plus.recording`), the actor's parameters
(:mod:`sb3_trpo_plus.actor_parameters`), the NumPy fast paths (:mod:`sb3_trpo_plus.fast`).
"""

from __future__ import annotations

import io
import math
import pathlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ProgressBarCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from sb3_trpo_plus.actor_parameters import find_actor_parameters
from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.critic import ValueTargets, fit_critic
from sb3_trpo_plus.distributions import detach_exploration_noise
from sb3_trpo_plus.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trpo_plus.policy_step import (
    StepSettings,
    Surrogate,
    index_obs,
    single_path_surrogate,
    trust_region_step,
    vine_and_trunk_surrogate,
    vine_surrogate,
)
from sb3_trpo_plus.q import SamplingDistribution, SamplingSettings
from sb3_trpo_plus.recording import record_branching, record_iteration
from sb3_trpo_plus.sampling import collect_single_path
from sb3_trpo_plus.trust_region import StepResult
from sb3_trpo_plus.validation import InvalidArgumentError as InvalidArgumentError  # re-exported: users catch it
from sb3_trpo_plus.validation import check_batch_size, validate_arguments
from sb3_trpo_plus.vine import VineSampler

SelfTRPOPlus = TypeVar("SelfTRPOPlus", bound="TRPOPlus")


def _advance_progress_bars(callback: BaseCallback, steps: int) -> None:
    """
    Move SB3's progress bars (``progress_bar=True``, or a ``ProgressBarCallback`` among the
    callbacks) on by ``steps`` environment steps taken outside ``callback.on_step`` (vine branches),
    so that the bar counts the whole budget, as ``num_timesteps`` does.
    """
    pending = [callback]
    while pending:
        current = pending.pop()
        if isinstance(current, CallbackList):
            pending.extend(current.callbacks)
        elif isinstance(current, ProgressBarCallback) and getattr(current, "pbar", None) is not None:
            current.pbar.update(steps)


class TRPOPlus(OnPolicyAlgorithm):
    """
    Trust Region Policy Optimization with a general importance-sampled surrogate and an exact,
    instrumented trust-region step. A drop-in replacement for ``sb3_contrib.TRPO``: every
    argument of it keeps its name, meaning and default.

    Paper: https://arxiv.org/abs/1502.05477

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy, or a class)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate of the value function's optimizer, it can be a
        function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (the batch is n_steps * n_envs and must be greater than 1 with advantage normalisation)
    :param batch_size: Minibatch size for the value function regression
    :param gamma: Discount factor
    :param cg_max_steps: maximum number of conjugate-gradient iterations
    :param cg_damping: damping c of the Fisher-vector product (F + c I) v
    :param line_search_shrinking_factor: step-size reduction factor of the backtracking
        line search, in (0, 1) (``theta_new = theta + alpha^i * step``)
    :param line_search_max_iter: maximum number of candidate steps of the line search
    :param n_critic_updates: number of passes of value-function regression per policy update
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        (-1: only at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically
        selected (SB3's ``RolloutBuffer`` or ``DictRolloutBuffer``; single path needs no log q:
        q = pi_old).
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param normalize_advantage: Whether to normalize the advantage
    :param target_kl: The trust-region radius delta: bound on the mean KL(pi_theta || pi_old)
        between the new and the old policy (sb3-contrib's measure, see
        :func:`sb3_trpo_plus.surrogate.mean_kl`)
    :param sub_sampling_factor: Use every k-th sample of the batch for the policy step
        (see p40-42 of John Schulman's thesis)
    :param stats_window_size: Window size for the rollout logging (episodes averaged)
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: the verbosity level: 0 no output, 1 info, 2 debug
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
    :param sampling: "single_path" (every (s, a) of pi_old's trajectories, q = pi_old) or "vine"
        (Q-values from branch rollouts at a rollout set of saved states, see :mod:`sb3_trpo_plus.vine`;
        the environment's state must be restorable, see :mod:`sb3_trpo_plus.env_state`)
    :param vine_kwargs: settings of the vine scheme (the keys and defaults of
        :class:`sb3_trpo_plus.settings.VineSettings`);
        only with "vine"
    :param q: sampling distribution of the branch actions: "policy" (q = pi_old), "uniform",
        "scaled", "mixture" or a callable (see :mod:`sb3_trpo_plus.q`); anything but "policy" needs "vine"
    :param q_kwargs: settings of ``q`` (``std_scale``, ``temperature``, ``eps``, ``max_weight``)
    :param fisher: how Fisher-vector products are computed: "analytic" (F = J^T M J with the
        distribution's closed-form Fisher M) or "kl_hessian" (double backprop through the mean KL)
    :param fvp_subsample: fraction of the batch, in (0, 1], on which Fisher-vector products
        are computed (the gradient always uses the whole batch)
    :param fast_paths: whether the NumPy fast paths may serve the policies they compute exactly
        (the NumPy actor during rollouts, the fused critic fit; see :mod:`sb3_trpo_plus.fast`);
        ``False`` runs the generic torch paths only (same results up to float rounding, slower)
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: ActorCriticPolicy

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        cg_max_steps: int = 15,
        cg_damping: float = 0.1,
        line_search_shrinking_factor: float = 0.8,
        line_search_max_iter: int = 10,
        n_critic_updates: int = 10,
        gae_lambda: float = 0.95,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = True,
        target_kl: float = 0.01,
        sub_sampling_factor: int = 1,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        sampling: str = "single_path",
        vine_kwargs: dict[str, Any] | None = None,
        q: str | Callable[..., Any] = "policy",
        q_kwargs: dict[str, Any] | None = None,
        fisher: str = "analytic",
        fvp_subsample: float = 1.0,
        fast_paths: bool = True,
        _init_setup_model: bool = True,
    ):
        validate_arguments(dict(locals()))  # every constructor argument, by name
        # q and the vine settings, validated once (their action-space checks follow once the env is known)
        settings = SamplingSettings.from_arguments(sampling, q, q_kwargs, vine_kwargs)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,  # TRPO has no entropy bonus
            vf_coef=0.0,  # the value function is fitted separately
            max_grad_norm=0.0,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        self.normalize_advantage = normalize_advantage
        if self.env is not None:
            check_batch_size(self.env.num_envs, self.n_steps, batch_size, normalize_advantage)
        self.batch_size = batch_size
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.line_search_shrinking_factor = line_search_shrinking_factor
        self.line_search_max_iter = line_search_max_iter
        self.target_kl = target_kl
        self.n_critic_updates = n_critic_updates
        self.sub_sampling_factor = sub_sampling_factor
        self.sampling = sampling
        self.vine_kwargs = dict(vine_kwargs or {})
        self.q = q
        self.q_kwargs = dict(q_kwargs or {})
        self.fisher = fisher
        self.fvp_subsample = fvp_subsample
        self.fast_paths = fast_paths
        self.n_rejected_steps = 0
        self._vine: VineSampler | None = None
        self._vine_batch: VineBatch | None = None  # set by collect_rollouts in vine mode
        self._sampling_settings = settings if settings.vine is None else settings.checked(self.action_space)

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        detach_exploration_noise(self.policy.action_dist)  # SB3 drew gSDE's first matrices with log_std's graph
        self._actor_params = self._find_actor_parameters()
        self._setup_vine()

    def _setup_vine(self) -> None:
        """Build the vine sampler on the current training env (checks that it can be branched)."""
        if self._vine is not None:
            self._vine.close()
            self._vine = None
        if self.sampling == "vine" and self.env is not None:
            settings = self._settings()
            assert settings.vine is not None
            q = SamplingDistribution(settings.q, self.action_space)
            self._vine = VineSampler(settings.vine, q, self.env, self.policy, self.gamma, self.seed, self.sde_sample_freq)

    def _settings(self) -> SamplingSettings:
        """
        The typed q and vine settings of the arguments ``sampling``, ``q``, ``q_kwargs`` and
        ``vine_kwargs`` (those plain arguments are what is saved with a model). Built and validated
        once, by the constructor; again only when those arguments changed since (a loaded model,
        or an attribute the user set).
        """
        arguments = (self.sampling, self.q, self.q_kwargs, self.vine_kwargs)
        if not self._sampling_settings.built_from(*arguments):
            self._sampling_settings = SamplingSettings.from_arguments(*arguments).checked(self.action_space)
        return self._sampling_settings

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        if self.sampling == "vine" and self.policy is not None:
            self._setup_vine()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_actor_params", "_vine", "_vine_batch", "_sampling_settings"]

    def _find_actor_parameters(self) -> list[nn.Parameter]:
        """The parameters the action distribution depends on (:func:`sb3_trpo_plus.actor_parameters.find_actor_parameters`)."""
        return find_actor_parameters(self.policy, self.observation_space)

    # ------------------------------------------------------------------ step 1: sampling

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """
        Run pi_old from the trunk's last observations and store every (s, a) pair with its
        advantage (single path, :func:`sb3_trpo_plus.sampling.collect_single_path`). In vine mode
        that run is the trunk; its rollout set is then branched to estimate Q-values.
        """
        before_step = None
        self._vine_batch = None  # the batch of this iteration only
        if self.sampling == "vine":
            if self._vine is None:  # loaded without an environment, then given one
                self._setup_vine()
            assert self._vine is not None
            self._vine.start_trunk(n_rollout_steps * env.num_envs)
            before_step = self._vine.before_trunk_step
        trunk_start = self.num_timesteps
        assert self._last_obs is not None, "No previous observation was provided"
        completed = collect_single_path(
            env,
            self.policy,
            callback,
            rollout_buffer,
            n_rollout_steps,
            self._last_obs,
            self._last_episode_starts,  # type: ignore[arg-type]
            gamma=self.gamma,
            use_sde=self.use_sde,
            sde_sample_freq=self.sde_sample_freq,
            count_steps=self._count_steps,
            end_step=self._end_step,
            fast_paths=self.fast_paths,
            before_step=before_step,
        )
        if not completed or self._vine is None:
            return completed
        self._vine_batch, branch_steps = self._vine.branch()
        self.num_timesteps += branch_steps
        _advance_progress_bars(callback, branch_steps)
        trunk_steps = self.num_timesteps - branch_steps - trunk_start
        record_branching(self.logger, branch_steps, trunk_steps, self._vine.stats)
        return True

    def _count_steps(self, n_steps: int) -> None:
        self.num_timesteps += n_steps

    def _end_step(self, new_obs: Any, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """A step the callbacks let pass: episode statistics, and the trunk moves on."""
        self._update_info_buffer(infos, dones)
        self._last_obs = new_obs
        self._last_episode_starts = dones

    # ------------------------------------------------------------------ step 2: surrogate

    @property
    def max_weight(self) -> float | None:
        """``q_kwargs['max_weight']``: the truncation of every importance weight, min(w, c) (None: none)."""
        return None if (value := self._settings().q.max_weight) is None else float(value)

    def _policy_batch(self) -> Any:
        """All samples of the rollout, every ``sub_sampling_factor``-th one."""
        batch: Any = next(iter(self.rollout_buffer.get(batch_size=None)))
        if self.sub_sampling_factor > 1:
            every = slice(None, None, self.sub_sampling_factor)
            batch = batch._replace(
                observations=index_obs(batch.observations, every),
                actions=batch.actions[every],
                old_log_prob=batch.old_log_prob[every],
                advantages=batch.advantages[every],
            )
        return batch

    def _iteration_batch(self) -> Any:
        """
        The batch this iteration's policy step works on: in vine mode the
        :class:`~sb3_trpo_plus.buffers.VineBatch` the last :meth:`collect_rollouts` branched, in
        single-path mode the rollout's samples (:meth:`_policy_batch`). The rollout is read in both
        modes, as it always was: reading it flattens the buffer for the critic fit and draws SB3's
        sample permutation from NumPy's global generator.

        :raises RuntimeError: in vine mode, when no vine batch was collected for this iteration
        """
        if self.sampling == "vine" and self._vine_batch is None:
            raise RuntimeError("sampling='vine' but no vine batch was collected for this iteration (no fallback)")
        trunk = self._policy_batch()
        return replace(self._vine_batch, trunk=trunk) if self._vine_batch is not None else trunk

    def _surrogate(self, batch: Any) -> Surrogate:
        """The single-path surrogate mean[pi_theta / pi_old * A] (:func:`~sb3_trpo_plus.policy_step.single_path_surrogate`)."""
        return single_path_surrogate(batch, self.action_space, self.normalize_advantage, self.max_weight)

    def _vine_surrogate(self, batch: VineBatch) -> Surrogate:
        """
        The vine surrogate on the rollout set, combined with the trunk's as ``vine_kwargs`` says
        (:func:`~sb3_trpo_plus.policy_step.vine_and_trunk_surrogate`; without the trunk's samples,
        :func:`~sb3_trpo_plus.policy_step.vine_surrogate` alone).
        """
        vine = self._settings().vine
        if batch.trunk is None or vine is None:
            return vine_surrogate(batch, self.action_space, self.max_weight)
        return vine_and_trunk_surrogate(
            batch,
            batch.trunk,
            self.policy,
            self._actor_params,
            self.action_space,
            self.normalize_advantage,
            self.max_weight,
            vine.estimator,
            vine.trust_region_states,
        )

    # ------------------------------------------------------------------ step 3: trust region

    def _policy_step(
        self, obs: PyTorchObs, objective: Callable[[Distribution], th.Tensor], constraint_obs: PyTorchObs | None = None
    ) -> StepResult:
        """
        Maximise the surrogate under the KL constraint (:func:`~sb3_trpo_plus.policy_step.trust_region_step`):
        natural-gradient direction by conjugate gradient, maximal step, backtracking line search;
        a rejected step leaves the policy exactly as it was.
        """
        settings = StepSettings(
            self.target_kl,
            self.cg_max_steps,
            self.cg_damping,
            self.line_search_shrinking_factor,
            self.line_search_max_iter,
            self.fisher,
            self.fvp_subsample,
        )
        return trust_region_step(self.policy, self._actor_params, obs, objective, settings, constraint_obs)

    # ------------------------------------------------------------------ step 4: critic

    def _fit_critic(self, targets: ValueTargets) -> list[float]:
        """
        Regress the value function on the returns (:func:`sb3_trpo_plus.critic.fit_critic`): fused
        for the standard MLP critic with Adam, through autograd otherwise. Parameters the policy
        depends on (shared feature extractors included) are never moved.
        """
        return fit_critic(self.policy, targets, self.n_critic_updates, self.batch_size, self._actor_params, self.fast_paths)

    def _update_critic(self, batch: Any) -> list[float] | None:
        """
        Fit the critic on the trunk's returns and, in vine mode, the branches' (when recorded);
        skipped (None) when a return is not finite: regressing on it would make the critic, and
        every later advantage, non-finite.
        """
        targets = ValueTargets.from_buffer(self.rollout_buffer)
        if isinstance(batch, VineBatch) and batch.critic_observations is not None and batch.critic_returns is not None:
            targets = targets.extended(batch.critic_observations, batch.critic_returns)
        if not bool(np.isfinite(targets.returns).all()):
            return None
        return self._fit_critic(targets)

    def _rebootstrapped(self, batch: VineBatch) -> VineBatch:
        """The vine batch with its cut and truncated branches completed by the (refitted) critic."""
        if batch.bootstrap_observations is None:
            return batch
        with th.no_grad():
            values = self.policy.predict_values(obs_as_tensor(batch.bootstrap_observations, self.device))  # type: ignore[arg-type]
        return batch.rebootstrapped(values)

    # ------------------------------------------------------------------ one iteration

    def train(self) -> None:
        """
        Update the policy with one trust-region step on the collected batch, then fit the value
        function (vine, by default: fit the value function first, on the trunk's and the
        branches' returns, and complete the branches' Q-values with it).
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        batch = self._iteration_batch()
        vine = self._settings().vine
        critic_first = isinstance(batch, VineBatch) and vine is not None and vine.refit_critic_first
        if critic_first:
            value_losses = self._update_critic(batch)
            batch = self._rebootstrapped(batch)
        surrogate = self._vine_surrogate(batch) if isinstance(batch, VineBatch) else self._surrogate(batch)
        if surrogate.invalid:
            step = StepResult(False, surrogate.invalid, 0.0, 0.0, 0.0, 0, math.nan, 0, 0.0)
        else:
            step = self._policy_step(surrogate.observations, surrogate.objective, surrogate.constraint_observations)
        if not critic_first:
            value_losses = self._update_critic(batch)
        if value_losses is None:
            self.logger.record("train/critic_fit_skipped", 1)
        self._n_updates += 1
        self._record(step, value_losses or [], surrogate)

    def _record(self, step: StepResult, value_losses: list[float], surrogate: Surrogate) -> None:
        if not step.accepted:
            self.n_rejected_steps += 1
            if self.verbose >= 1:
                print(f"TRPOPlus: trust-region step rejected ({step.reason}); policy parameters kept")
        with th.no_grad():
            ess = surrogate.ess(self.policy.get_distribution(surrogate.observations))
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        std = th.exp(self.policy.log_std).mean().item() if hasattr(self.policy, "log_std") else None
        record_iteration(self.logger, step, value_losses, ess, explained_var, self.n_rejected_steps, self._n_updates, std)
        for key, value in surrogate.stats.items():
            self.logger.record(f"train/{key}", value)

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfTRPOPlus],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfTRPOPlus:
        """
        SB3's ``load``; SB3 draws a gSDE model's exploration matrices again once the parameters
        are loaded, with log_std's graph, which is cut here (same values, see
        :func:`~sb3_trpo_plus.distributions.detach_exploration_noise`).
        """
        model = super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        detach_exploration_noise(model.policy.action_dist)
        return model

    def learn(
        self: SelfTRPOPlus,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "TRPOPlus",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfTRPOPlus:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
