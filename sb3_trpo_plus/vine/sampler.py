"""
One vine iteration (:class:`VineSampler`): the trunk, collected like single path while it keeps
the rollout set, then the branches of every rollout-set state, gathered into a
:class:`~sb3_trpo_plus.buffers.VineBatch`.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_plus import observations as batches
from sb3_trpo_plus.branch_pool import BranchPool, branch_pool_class
from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.distributions import actions_for_log_prob
from sb3_trpo_plus.env_state import check_same_chain
from sb3_trpo_plus.settings import VineSettings
from sb3_trpo_plus.surrogate import adaptive_branch_share
from sb3_trpo_plus.vine.probe import FidelityProbe
from sb3_trpo_plus.vine.runner import BranchRunner
from sb3_trpo_plus.vine.trunk import (
    GsdeNoise,
    TrunkStates,
    branch_env_factory,
    make_trunk_branchable,
    trunk_chains,
    trunk_snapshotter,
)
from sb3_trpo_plus.vine.wrappers import VecWrappers, base_vec_env


class VineSampler:
    """
    One vine iteration: the trunk (single-path collection that also keeps the rollout set),
    then K branches at every rollout-set state; the result is a
    :class:`~sb3_trpo_plus.buffers.VineBatch` for the surrogate.

    :param settings: the vine settings (built from ``vine_kwargs``, validated against the action space)
    :param q: the sampling distribution of the branch actions (see :mod:`sb3_trpo_plus.q`)
    :param env: the training VecEnv (the trunk)
    :param policy: the policy (pi_old during collection)
    :param gamma: discount factor
    :param seed: seed of the sampler's own generator (rollout-set keys, branch noise)
    :param sde_sample_freq: the algorithm's ``sde_sample_freq`` (gSDE policies: the branches follow
        the trunk's noise process, see :class:`BranchRunner`)
    """

    def __init__(
        self,
        settings: VineSettings,
        q: Any,
        env: VecEnv,
        policy: ActorCriticPolicy,
        gamma: float,
        seed: int | None,
        sde_sample_freq: int = -1,
    ) -> None:
        make_trunk_branchable(env)
        self.vec_wrappers = VecWrappers(base_vec_env(env)[1])
        self.settings = settings
        self.q = q
        self.env = env
        self.policy = policy
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)
        all_actions = settings.branch_actions(policy.action_space)
        self.all_actions = None if all_actions is None else all_actions.to(policy.device)
        n_branches = len(self.all_actions) if self.all_actions is not None else settings.n_actions
        factory = branch_env_factory(env, settings.make_branch_env)
        pool_class = branch_pool_class(settings.branch_vec_env)
        self.pool: BranchPool = pool_class(factory, n_branches, settings.n_branch_workers)
        try:  # the branches must simulate the trunk's MDP: the same wrappers, in the same order
            check_same_chain(trunk_chains(base_vec_env(env)[0])[0], self.pool.chain())
        except Exception:
            self.pool.close()
            raise
        self.runner = BranchRunner(
            policy,
            self.pool,
            self.vec_wrappers,
            policy.action_space,
            gamma,
            settings.branch_horizon,
            settings.common_random_numbers,
            self.rng,
            sde_sample_freq,
        )
        self.trunk = TrunkStates(1, gamma, settings.state_selection == "geometric", env.num_envs, self.rng)
        self.snapshot = trunk_snapshotter(env)
        self.probe = FidelityProbe(settings.fidelity_probe, settings.fidelity_probe_action, env, factory, seed)
        self.trunk_step = 0
        self.stats: dict[str, float] = {}
        self._share_checked = False
        self.share = settings.max_share  # this iteration's branch share (moves with adapt_share)

    def before_trunk_step(self, last_obs: Any, episode_starts: np.ndarray) -> None:
        """Offer the trunk's current states to the rollout set (called before every trunk step)."""
        self.probe.before_step(self.trunk_step)
        self.trunk.episode_time[np.asarray(episode_starts, dtype=bool)] = 0
        for index in range(self.env.num_envs):
            self.trunk.offer(index, batches.index(last_obs, index), functools.partial(self._take_state, index))
        self.trunk.episode_time += 1
        self.trunk_step += 1

    def _take_state(self, index: int) -> tuple[Any, GsdeNoise | None]:
        """The snapshot of trunk environment ``index`` and, for gSDE, its noise process now."""
        return self.snapshot(index), self._trunk_noise(index)

    def _trunk_noise(self, index: int) -> GsdeNoise | None:
        """The exploration matrix trunk environment ``index`` acts with now (SB3's rule in ``get_noise``)."""
        if not self.runner.gsde:
            return None
        dist: Any = self.policy.action_dist
        matrix = dist.exploration_mat if self.env.num_envs == 1 else dist.exploration_matrices[index]
        return GsdeNoise(matrix.detach().cpu().numpy().astype(np.float64), self.trunk_step)

    def start_trunk(self, trunk_size: int) -> None:
        """Begin a new rollout set for a trunk of ``trunk_size`` states."""
        if not self._share_checked:  # once: the trunk's size is the same every iteration
            self._share_checked = True
            message = self.settings.share_warning(trunk_size, self.pool.size)
            if message is not None:
                warnings.warn(message, UserWarning, stacklevel=2)
        self.trunk.size = self.settings.rollout_set_size(trunk_size, self.pool.size, self.share)
        self.trunk.reset()
        self.trunk_step = 0
        self.probe.start_iteration(trunk_size // self.env.num_envs)

    def adapt_share(self, estimator_stats: dict[str, float], trunk_steps: int) -> None:
        """
        Set the next iteration's branch share from what this one's steps bought
        (``vine_kwargs['adapt_share']``, :func:`~sb3_trpo_plus.surrogate.adaptive_branch_share`);
        the share is added to ``estimator_stats`` (logged as ``train/branch_share_next``).

        :param estimator_stats: the combined estimator's measures of this iteration (its variances)
        :param trunk_steps: the environment steps the trunk took in this iteration
        """
        if "grad_variance_trunk" not in estimator_stats:  # no combined estimate this iteration: keep the share
            return
        mse_vine = estimator_stats["grad_variance_vine_bound"] + estimator_stats.get("vine_bias_sq", 0.0)
        branch_steps = int(self.stats.get("branch_steps", 0))
        self.share = adaptive_branch_share(
            self.settings.max_share, estimator_stats["grad_variance_trunk"], mse_vine, trunk_steps, branch_steps
        )
        estimator_stats["branch_share_next"] = self.share

    def branch(self) -> tuple[VineBatch, int]:
        """
        Run the fidelity probe if this iteration has one (see :class:`FidelityProbe`), then the
        branches of every rollout-set state (their statistics go to :attr:`stats`).

        :return: the :class:`~sb3_trpo_plus.buffers.VineBatch` of the rollout set and the number
            of environment steps the branches took
        """
        self.probe.check()
        observations, taken = self.trunk.states()
        states = [state for state, _ in taken]
        noises = [noise for _, noise in taken]
        obs_tensor = obs_as_tensor(batches.stack(observations), self.policy.device)
        n_states = len(states)
        with th.no_grad():
            pi_old = self.policy.get_distribution(obs_tensor)  # type: ignore[arg-type]
            if self.all_actions is not None:
                actions = self.all_actions.unsqueeze(0).expand(n_states, *self.all_actions.shape)
                log_q = th.zeros(actions.shape[:2], device=self.policy.device)
            else:
                sampler = self.q.build(pi_old, obs_tensor)
                actions = sampler.sample(self.settings.n_actions)
                log_q = sampler.log_prob(actions)
        replayed_before = self.pool.replayed_steps()
        actions_np = actions.cpu().numpy()
        record_states = self.settings.critic_targets == "trunk_and_branches"
        results = [
            self.runner.run(state, actions_np[index], noises[index], record_states) for index, state in enumerate(states)
        ]
        n_actions = actions.shape[1]
        device = self.policy.device
        q_values = np.stack([result.q_values for result in results]) if results else np.zeros((0, n_actions))
        if isinstance(obs_tensor, dict):
            repeated: Any = {key: value.repeat_interleave(n_actions, dim=0) for key, value in obs_tensor.items()}
        else:
            repeated = obs_tensor.repeat_interleave(n_actions, dim=0)
        flat_actions = actions.reshape(n_states * n_actions, *actions.shape[2:])
        with th.no_grad():  # V(s_n) = E_{a ~ pi_old} Q(s_n, a): exact over every action, self-normalised from q
            pi_rows = self.policy.get_distribution(repeated)  # type: ignore[arg-type]
            log_pi = pi_rows.log_prob(actions_for_log_prob(flat_actions, self.policy.action_space)).view(n_states, n_actions)
            weights = th.softmax(log_pi if self.all_actions is not None else log_pi - log_q, dim=1).cpu().numpy()
        critic_obs, critic_returns = [], []
        if record_states:
            critic_obs = [*observations, *(obs for result in results for obs in result.visited_observations)]
            visited_returns = (ret for result in results for ret in result.visited_returns)
            critic_returns = [*(weights * q_values).sum(axis=1), *visited_returns]
        bootstrap_rows = [
            n * n_actions + k for n, result in enumerate(results) for k in np.flatnonzero(result.bootstrap_discount)
        ]
        bootstrap_obs = [results[row // n_actions].bootstrap_observations[row % n_actions] for row in bootstrap_rows]

        def tensor(values: Any) -> th.Tensor:
            return th.as_tensor(np.asarray(values, dtype=np.float32).reshape(-1), device=device)

        batch = VineBatch(
            observations=repeated,
            actions=flat_actions,
            log_q=log_q.reshape(-1).float(),
            q_values=tensor(q_values),
            group=th.arange(n_states, device=device).repeat_interleave(n_actions),
            n_states=n_states,
            all_actions=self.all_actions is not None,
            partial_returns=tensor([result.partial_returns for result in results]),
            bootstrap_discount=tensor([result.bootstrap_discount for result in results]),
            bootstrap_rows=th.as_tensor(bootstrap_rows, dtype=th.long, device=device),
            bootstrap_observations=batches.stack(bootstrap_obs) if bootstrap_obs else None,
            critic_observations=batches.stack(critic_obs) if critic_obs else None,
            critic_returns=np.asarray(critic_returns, dtype=np.float32),
        )
        env_steps = sum(result.env_steps for result in results)
        lengths = [result.lengths for result in results]
        self.stats = {
            "branch_steps": float(env_steps),
            "rollout_set_size": float(n_states),
            "branch_length_mean": float(np.mean(np.concatenate(lengths))) if lengths else 0.0,
            "replayed_steps": float(self.pool.replayed_steps() - replayed_before),
            "q_value_mean": float(q_values.mean()) if q_values.size else 0.0,
            "critic_targets_from_branches": float(len(critic_returns)),
            **self.probe.stats(),
        }
        return batch, env_steps

    def close(self) -> None:
        """Release the branch environments."""
        self.pool.close()
        self.probe.close()
