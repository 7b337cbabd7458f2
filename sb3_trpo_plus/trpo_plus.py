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

import math
from collections.abc import Callable
from dataclasses import dataclass
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
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from sb3_trpo_plus.actor_parameters import find_actor_parameters
from sb3_trpo_plus.buffers import VineBatch, default_buffer_class
from sb3_trpo_plus.critic import ValueTargets, fit_critic
from sb3_trpo_plus.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trpo_plus.q import make_q, validate_q
from sb3_trpo_plus.recording import record_branching, record_iteration
from sb3_trpo_plus.sampling import collect_single_path
from sb3_trpo_plus.surrogate import (
    detached,
    distribution_metric,
    distribution_parameters,
    effective_sample_size,
    exact_sum_surrogate,
    importance_sampled_surrogate,
    importance_weights,
    mean_kl,
    self_normalized_surrogate,
)
from sb3_trpo_plus.trust_region import (
    MatVec,
    StepResult,
    analytic_fisher_vector_product,
    kl_hessian_vector_product,
    natural_gradient_step,
)
from sb3_trpo_plus.validation import InvalidArgumentError as InvalidArgumentError  # re-exported: users catch it
from sb3_trpo_plus.validation import check_batch_size, validate_arguments
from sb3_trpo_plus.vine import VineSampler, validate_vine_kwargs

SelfTRPOPlus = TypeVar("SelfTRPOPlus", bound="TRPOPlus")


@dataclass
class Surrogate:
    """
    The estimated objective of one iteration.

    :param observations: the states the objective and the KL constraint are evaluated on
    :param objective: the surrogate L(theta) as a function of pi_theta's distribution on them
    :param ess: effective sample size of the importance weights under a distribution
    :param invalid: why the batch cannot be used ("" when it can)
    """

    observations: PyTorchObs
    objective: Callable[[Distribution], th.Tensor]
    ess: Callable[[Distribution], float]
    invalid: str


def _index_obs(obs: PyTorchObs, index: th.Tensor | slice) -> PyTorchObs:
    if isinstance(obs, dict):
        return {key: value[index] for key, value in obs.items()}
    return obs[index]


def _n_obs(obs: PyTorchObs) -> int:
    if isinstance(obs, dict):
        return len(next(iter(obs.values())))
    return len(obs)


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
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, a buffer that also
        keeps log q(a|s) is selected for the observation space.
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
    :param vine_kwargs: settings of the vine scheme (see :data:`sb3_trpo_plus.vine.VINE_DEFAULTS`);
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
        validate_q(q, q_kwargs, sampling)
        if sampling == "vine":
            validate_vine_kwargs(vine_kwargs, None)
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
        if sampling == "vine":
            validate_vine_kwargs(self.vine_kwargs, self.action_space)
            make_q(q, q_kwargs, self.action_space)  # validates q against the action space

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:
            self.rollout_buffer_class = default_buffer_class(self.observation_space)
        super()._setup_model()
        self._actor_params = self._find_actor_parameters()
        self._setup_vine()

    def _setup_vine(self) -> None:
        """Build the vine sampler on the current training env (checks that it can be branched)."""
        if self._vine is not None:
            self._vine.close()
            self._vine = None
        if self.sampling == "vine" and self.env is not None:
            settings = validate_vine_kwargs(self.vine_kwargs, self.action_space)
            q = make_q(self.q, self.q_kwargs, self.action_space)
            self._vine = VineSampler(settings, q, self.env, self.policy, self.gamma, self.seed, self.sde_sample_freq)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        if self.sampling == "vine" and self.policy is not None:
            self._setup_vine()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_actor_params", "_vine"]

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
        branch_steps = self._vine.branch()
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
        value = self.q_kwargs.get("max_weight")
        return None if value is None else float(value)

    def _policy_batch(self) -> Any:
        """All samples of the rollout, every ``sub_sampling_factor``-th one."""
        batch: Any = next(iter(self.rollout_buffer.get(batch_size=None)))
        if self.sub_sampling_factor > 1:
            every = slice(None, None, self.sub_sampling_factor)
            batch = batch._replace(
                observations=_index_obs(batch.observations, every),
                actions=batch.actions[every],
                old_log_prob=batch.old_log_prob[every],
                advantages=batch.advantages[every],
                **({"log_q": batch.log_q[every]} if hasattr(batch, "log_q") else {}),
            )
        return batch

    def _actions_for_log_prob(self, actions: th.Tensor) -> th.Tensor:
        if isinstance(self.action_space, spaces.Discrete):
            return actions.long().flatten()
        return actions

    def _surrogate(self, batch: Any) -> Surrogate:
        """
        The single-path importance-sampled surrogate mean[pi_theta / q * A] as a function of the
        policy's action distribution on the batch's states (weights truncated at
        ``q_kwargs['max_weight']`` when given; without it, sb3-contrib's objective).
        """
        actions = self._actions_for_log_prob(batch.actions)
        log_q = batch.log_q if hasattr(batch, "log_q") else batch.old_log_prob
        advantages = batch.advantages
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        max_weight = self.max_weight

        def objective(distribution: Distribution) -> th.Tensor:
            return importance_sampled_surrogate(distribution.log_prob(actions), log_q, advantages, max_weight)

        def ess(distribution: Distribution) -> float:
            return effective_sample_size(importance_weights(distribution.log_prob(actions), log_q, max_weight))

        finite = bool(th.isfinite(advantages).all())
        return Surrogate(batch.observations, objective, ess, "" if finite else "non-finite advantages")

    def _vine_surrogate(self, batch: VineBatch) -> Surrogate:
        """
        The vine surrogate on the rollout set: the exact sum over actions when every action of a
        finite space was branched, the self-normalised importance-sampled estimator otherwise
        (its weights, and those of the logged effective sample size, truncated at
        ``q_kwargs['max_weight']`` when given).
        """
        actions = self._actions_for_log_prob(batch.actions)
        max_weight = None if batch.all_actions else self.max_weight

        def objective(distribution: Distribution) -> th.Tensor:
            log_prob = distribution.log_prob(actions)
            if batch.all_actions:
                return exact_sum_surrogate(log_prob, batch.q_values, batch.group, batch.n_states)
            return self_normalized_surrogate(log_prob, batch.log_q, batch.q_values, batch.group, batch.n_states, max_weight)

        def ess(distribution: Distribution) -> float:
            weights = importance_weights(distribution.log_prob(actions), batch.log_q, max_weight).view(batch.n_states, -1)
            return float(np.mean([effective_sample_size(row) for row in weights]))

        finite = bool(th.isfinite(batch.q_values).all())
        return Surrogate(batch.observations, objective, ess, "" if finite else "non-finite Q-values")

    # ------------------------------------------------------------------ step 3: trust region

    def _fisher_product(self, obs: PyTorchObs, distribution: Distribution, old_distribution: Distribution) -> MatVec:
        """Fisher-vector products at theta_old, on a random ``fvp_subsample`` share of ``obs``."""
        if self.fvp_subsample < 1.0:
            n_obs = _n_obs(obs)
            size = max(1, math.ceil(self.fvp_subsample * n_obs))
            index = th.randperm(n_obs, device=self.device)[:size]
            sub_obs = _index_obs(obs, index)
            distribution = self.policy.get_distribution(sub_obs)
            old_distribution = detached(distribution)
        if self.fisher == "kl_hessian":
            kl = mean_kl(distribution, old_distribution)  # its Hessian at theta_old is the Fisher matrix
            return kl_hessian_vector_product(kl, self._actor_params, self.cg_damping)
        outputs = distribution_parameters(distribution)
        return analytic_fisher_vector_product(
            outputs,
            distribution_metric(old_distribution),
            self._actor_params,
            self.cg_damping,
            n_samples=len(outputs[0]),
        )

    def _policy_step(self, obs: PyTorchObs, objective: Callable[[Distribution], th.Tensor]) -> StepResult:
        """
        Maximise the surrogate under the KL constraint: natural-gradient direction by conjugate
        gradient, maximal step sqrt(2 delta / s^T F s), backtracking line search. A rejected
        step leaves the policy exactly as it was.
        """
        distribution = self.policy.get_distribution(obs)
        old_distribution = detached(distribution)
        surrogate = objective(distribution)
        fisher_product = self._fisher_product(obs, distribution, old_distribution)

        def evaluate() -> tuple[float, float]:
            new_distribution = self.policy.get_distribution(obs)
            # the constraint as sb3-contrib measures it, KL(pi_theta || pi_old), so that target_kl
            # means the same (the paper's KL(pi_old || pi_theta) agrees to second order)
            return float(objective(new_distribution)), float(mean_kl(new_distribution, old_distribution))

        # Start CG from small noise rather than zero, as sb3-contrib does (same random stream).
        x0 = 1e-4 * th.randn(sum(p.numel() for p in self._actor_params), device=self.device)
        return natural_gradient_step(
            self._actor_params,
            surrogate,
            fisher_product,
            evaluate,
            max_kl=self.target_kl,
            cg_max_iter=self.cg_max_steps,
            shrinking_factor=self.line_search_shrinking_factor,
            line_search_max_iter=self.line_search_max_iter,
            cg_x0=x0,
        )

    # ------------------------------------------------------------------ step 4: critic

    def _fit_critic(self, targets: ValueTargets) -> list[float]:
        """
        Regress the value function on the returns (:func:`sb3_trpo_plus.critic.fit_critic`): fused
        for the standard MLP critic with Adam, through autograd otherwise. Parameters the policy
        depends on (shared feature extractors included) are never moved.
        """
        return fit_critic(self.policy, targets, self.n_critic_updates, self.batch_size, self._actor_params, self.fast_paths)

    # ------------------------------------------------------------------ one iteration

    def train(self) -> None:
        """
        Update the policy with one trust-region step on the collected batch, then fit the value
        function.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        trunk = self._policy_batch()
        if self._vine is not None and self._vine.batch is not None:
            surrogate = self._vine_surrogate(self._vine.batch)
        else:
            surrogate = self._surrogate(trunk)
        if surrogate.invalid:
            step = StepResult(False, surrogate.invalid, 0.0, 0.0, 0.0, 0, math.nan, 0, 0.0)
        else:
            step = self._policy_step(surrogate.observations, surrogate.objective)
        targets = ValueTargets.from_buffer(self.rollout_buffer)
        if bool(np.isfinite(targets.returns).all()):
            value_losses = self._fit_critic(targets)
        else:
            # regressing on NaN or inf returns would make the critic, and every later advantage, non-finite
            value_losses = []
            self.logger.record("train/critic_fit_skipped", 1)
        self._n_updates += 1
        self._record(step, value_losses, surrogate)

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
