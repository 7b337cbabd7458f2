"""
TRPOPlus: Trust Region Policy Optimization (Schulman et al. 2015) for Stable-Baselines3.

The algorithm box of the paper, as :meth:`TRPOPlus.train` reads:

1. Collect state-action pairs with pi_old and their advantages or Q-values (:meth:`collect_rollouts`:
   :mod:`sb3_trpo_plus.sampling`, and :mod:`sb3_trpo_plus.vine` in vine mode).
2. Build the surrogate L(theta) from them (:meth:`_surrogate`, :mod:`sb3_trpo_plus.estimators`).
3. Maximise it under the constraint mean KL(pi_theta || pi_old) <= delta, measured in the
   direction sb3-contrib measures it (the paper writes KL(pi_old || pi_theta): the same Hessian
   at theta_old, so the same step) (:meth:`_policy_step`, :mod:`sb3_trpo_plus.step`): natural
   gradient by conjugate gradient on Fisher-vector products, maximal step, line search.
4. Fit the value function, never moving a parameter the policy depends on (:mod:`sb3_trpo_plus.critic`).

The settings of the arguments are built once (:mod:`sb3_trpo_plus.settings`); every argument is
described in docs/arguments.md.
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
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_plus.actor_parameters import find_actor_parameters
from sb3_trpo_plus.buffers import VineBatch, every_kth
from sb3_trpo_plus.critic import ValueTargets, fit_critic, rebootstrapped, value_targets
from sb3_trpo_plus.distributions import detach_exploration_noise
from sb3_trpo_plus.estimators import Surrogate, iteration_surrogate
from sb3_trpo_plus.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trpo_plus.q import SamplingDistribution
from sb3_trpo_plus.recording import record_bound, record_branching, record_iteration
from sb3_trpo_plus.sampling import advance_progress_bars, collect_single_path
from sb3_trpo_plus.settings import Sampling, Settings, on_policy_arguments
from sb3_trpo_plus.step import PolicyStep, check_step_names
from sb3_trpo_plus.trust_region import StepResult
from sb3_trpo_plus.validation import InvalidArgumentError as InvalidArgumentError  # re-exported: users catch it
from sb3_trpo_plus.validation import check_batch_size, validate_arguments
from sb3_trpo_plus.vine import VineSampler

SelfTRPOPlus = TypeVar("SelfTRPOPlus", bound="TRPOPlus")


class TRPOPlus(OnPolicyAlgorithm):
    """
    Trust Region Policy Optimization with a general importance-sampled surrogate and an exact,
    instrumented trust-region step. A drop-in replacement for ``sb3_contrib.TRPO``: every
    argument of it keeps its name, meaning and default.

    Paper: https://arxiv.org/abs/1502.05477. Every argument, its default and what it allows:
    docs/arguments.md.

    :param policy: the policy model (MlpPolicy, CnnPolicy, MultiInputPolicy, or a class)
    :param env: the environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate of the value function's optimizer, or a schedule
    :param n_steps: steps per environment per update (the batch is n_steps * n_envs)
    :param batch_size: minibatch size of the value-function regression
    :param gamma: discount factor
    :param cg_max_steps: maximum conjugate-gradient iterations
    :param cg_damping: damping c of the Fisher-vector products (F + c I) v
    :param line_search_shrinking_factor: step-size reduction factor of the line search, in (0, 1)
    :param line_search_max_iter: maximum candidate steps of the line search
    :param n_critic_updates: passes of value-function regression per policy update
    :param gae_lambda: lambda of Generalized Advantage Estimation
    :param use_sde: use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: with gSDE, sample a new noise matrix every n steps (-1: once per rollout)
    :param rollout_buffer_class: rollout buffer class (None: SB3's default for the observations)
    :param rollout_buffer_kwargs: keyword arguments of the rollout buffer
    :param normalize_advantage: whether to normalize the advantages
    :param target_kl: the trust-region radius delta, bound on the mean KL(pi_theta || pi_old)
    :param sub_sampling_factor: the policy step uses every k-th sample of the batch
    :param stats_window_size: episodes averaged in the rollout logs
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments of the policy
    :param verbose: the verbosity level: 0 no output, 1 info, 2 debug
    :param seed: seed of the pseudo random generators
    :param device: device (cpu, cuda, ...) of the policy
    :param sampling: "single_path" or "vine" (:mod:`sb3_trpo_plus.vine`)
    :param vine_kwargs: vine settings (:class:`sb3_trpo_plus.settings.VineSettings`), only with "vine"
    :param q: sampling distribution of the branch actions (:mod:`sb3_trpo_plus.q`)
    :param q_kwargs: settings of ``q``, and ``max_weight`` (truncation of the importance weights)
    :param fisher: Fisher-vector products: "analytic", "kl_hessian" or "empirical" (the covariance
        of the per-sample score gradients)
    :param fvp_subsample: share of the batch, in (0, 1], of the Fisher-vector products
    :param fast_paths: let the NumPy fast paths serve the policies they compute exactly
    :param step: the step rule: "trust_region" (TRPO), "natural_gradient" (a fixed ``step_size``
        along F^-1 g) or "theory_penalty" (the paper's Algorithm 1)
    :param kl_constraint: the trust region's KL over the states: "mean" or "max"
    :param step_size: the fixed step length of ``step="natural_gradient"`` (> 0; None otherwise)
    :param _init_setup_model: whether to build the network at the creation of the instance
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
        step: str = "trust_region",
        kl_constraint: str = "mean",
        step_size: float | None = None,
        _init_setup_model: bool = True,
    ):
        arguments = dict(locals())  # every constructor argument, by name
        validate_arguments(arguments)
        check_step_names(step, kl_constraint)
        # every settings object, built once (the checks that need the action space follow once the env is known)
        settings = Settings.from_arguments(arguments)
        policy_step = PolicyStep(settings.step)
        super().__init__(policy, env, **on_policy_arguments(arguments))
        if self.env is not None:
            check_batch_size(self.env.num_envs, self.n_steps, batch_size, normalize_advantage)
        self.normalize_advantage, self.batch_size, self.n_critic_updates = normalize_advantage, batch_size, n_critic_updates
        self.target_kl, self.cg_max_steps, self.cg_damping = target_kl, cg_max_steps, cg_damping
        self.line_search_shrinking_factor, self.line_search_max_iter = line_search_shrinking_factor, line_search_max_iter
        self.sampling, self.vine_kwargs, self.q, self.q_kwargs = sampling, dict(vine_kwargs or {}), q, dict(q_kwargs or {})
        self.sub_sampling_factor, self.fisher, self.fvp_subsample = sub_sampling_factor, fisher, fvp_subsample
        self.fast_paths = fast_paths
        self.step, self.kl_constraint, self.step_size = step, kl_constraint, step_size
        self.n_rejected_steps = 0
        self._vine: VineSampler | None = None
        self._vine_batch: VineBatch | None = None  # set by collect_rollouts in vine mode
        self._built_settings = settings.checked(getattr(self, "action_space", None))  # None: loading
        self._step = policy_step

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        trunk_steps = self._trunk_steps()
        if trunk_steps != self.n_steps:  # vine sharing the budget: the buffer holds the shortened trunk
            self.rollout_buffer = self._rollout_buffer_of(trunk_steps)
        detach_exploration_noise(self.policy.action_dist)  # SB3 drew gSDE's first matrices with log_std's graph
        self._actor_params = find_actor_parameters(self.policy, self.observation_space)  # found through autograd
        self._setup_vine()

    def _rollout_buffer_of(self, n_steps: int) -> RolloutBuffer:
        """A rollout buffer of the algorithm's class and arguments holding ``n_steps`` steps per environment."""
        return self.rollout_buffer_class(  # type: ignore[misc]
            n_steps,
            self.observation_space,  # type: ignore[arg-type]
            self.action_space,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **self.rollout_buffer_kwargs,
        )

    def _trunk_steps(self) -> int:
        """The trunk's steps per environment in an iteration: ``n_steps``, less the branches' share when they share it."""
        vine = self._settings().vine if self.sampling == Sampling.VINE else None
        if vine is None:
            return self.n_steps
        return vine.trunk_steps(self.n_steps, None if self._vine is None else self._vine.share)

    def _setup_vine(self) -> None:
        """Build the vine sampler on the current training env (checks that it can be branched)."""
        if self._vine is not None:
            self._vine.close()
            self._vine = None
        if self.sampling == Sampling.VINE and self.env is not None:
            settings = self._settings()
            assert settings.vine is not None
            q = SamplingDistribution(settings.q, self.action_space)
            self._vine = VineSampler(settings.vine, q, self.env, self.policy, self.gamma, self.seed, self.sde_sample_freq)

    def _settings(self) -> Settings:
        """
        The :class:`~sb3_trpo_plus.settings.Settings` of the plain arguments (what is saved): built
        by the constructor, again (with the step rule) only when those arguments changed since.
        """
        arguments = {name: getattr(self, name) for name in Settings.ARGUMENTS}
        if not self._built_settings.built_from(arguments):
            self._built_settings = Settings.from_arguments(arguments, self.action_space)
            self._step = PolicyStep(self._built_settings.step)
        return self._built_settings

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        if self.sampling == Sampling.VINE and self.policy is not None:
            self._setup_vine()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_actor_params", "_vine", "_vine_batch", "_built_settings", "_step"]

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
        if self.sampling == Sampling.VINE:
            if self._vine is None:  # loaded without an environment, then given one
                self._setup_vine()
            assert self._vine is not None
            n_rollout_steps = self._trunk_steps()  # n_steps, or less when the branches share the budget
            if rollout_buffer.buffer_size != n_rollout_steps:  # adapt_share moved steps between trunk and branches
                rollout_buffer = self.rollout_buffer = self._rollout_buffer_of(n_rollout_steps)
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
        advance_progress_bars(callback, branch_steps)
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
        return self._settings().surrogate.max_weight

    def _policy_batch(self) -> Any:
        """All samples of the rollout, every ``sub_sampling_factor``-th one."""
        return every_kth(next(iter(self.rollout_buffer.get(batch_size=None))), self.sub_sampling_factor)

    def _iteration_batch(self) -> Any:
        """
        This iteration's batch: the :class:`~sb3_trpo_plus.buffers.VineBatch` the last rollout
        branched (vine), or the rollout's samples. The rollout is read in both modes (it flattens
        the buffer and draws SB3's permutation from NumPy's global generator).
        """
        if self.sampling == Sampling.VINE and self._vine_batch is None:
            raise RuntimeError("sampling='vine' but no vine batch was collected for this iteration (no fallback)")
        trunk = self._policy_batch()
        return replace(self._vine_batch, trunk=trunk) if self._vine_batch is not None else trunk

    def _surrogate(self, batch: Any) -> Surrogate:
        """The surrogate L(theta) of the batch (:func:`~sb3_trpo_plus.estimators.iteration_surrogate`)."""
        settings, actor = self._settings(), (self.policy, self._actor_params)
        return iteration_surrogate(batch, settings.surrogate, settings.vine, *actor, self.action_space)

    # ------------------------------------------------------------------ step 3: trust region

    def _policy_step(self, surrogate: Surrogate) -> StepResult:
        """Maximise the surrogate under the constraint by the settings' step rule (:class:`~sb3_trpo_plus.step.PolicyStep`)."""
        self._settings()  # the step rule and constraint of the current arguments
        observations = (surrogate.observations, surrogate.objective, surrogate.constraint_observations)
        return self._step(self.policy, self._actor_params, *observations, surrogate.epsilon, surrogate.score_actions)

    # ------------------------------------------------------------------ step 4: critic

    def _fit_critic(self, targets: ValueTargets) -> list[float]:
        """Regress the value function on the returns (:func:`~sb3_trpo_plus.critic.fit_critic`), the actor frozen."""
        return fit_critic(self.policy, targets, self.n_critic_updates, self.batch_size, self._actor_params, self.fast_paths)

    def _update_critic(self, batch: Any) -> list[float] | None:
        """Fit the critic on the batch's returns (:func:`~sb3_trpo_plus.critic.value_targets`); None: skipped."""
        targets = value_targets(self.rollout_buffer, batch)
        return None if targets is None else self._fit_critic(targets)

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
            batch = rebootstrapped(self.policy, batch)
        surrogate = self._surrogate(batch)
        if vine is not None and vine.adapt_share is True and self._vine is not None:
            self._vine.adapt_share(surrogate.stats, self.rollout_buffer.buffer_size * self.n_envs)
        if surrogate.invalid:
            step = StepResult(False, surrogate.invalid, 0.0, 0.0, 0.0, 0, math.nan, 0, 0.0)
        else:
            step = self._policy_step(surrogate)
        if not critic_first:
            value_losses = self._update_critic(batch)
        self._n_updates += 1
        self._record(step, value_losses, surrogate)

    def _record(self, step: StepResult, value_losses: list[float] | None, surrogate: Surrogate) -> None:
        self.n_rejected_steps += 0 if step.accepted else 1
        record_bound(self.logger, step, surrogate.epsilon, self.gamma)
        ess = None
        if surrogate.ess is not None:  # None: no importance weights (every action branched)
            with th.no_grad():
                ess = surrogate.ess(self.policy.get_distribution(surrogate.observations))
        counts = (self.n_rejected_steps, self._n_updates)
        record_iteration(
            self.logger, step, value_losses, ess, self.rollout_buffer, self.policy, *counts, surrogate.stats, self.verbose
        )

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
