"""
The branches of one rollout-set state (:class:`BranchRunner`): restore the copies, take the K
first actions, follow pi_old for at most H steps, and return the bootstrapped discounted returns
as Q estimates (:class:`BranchResult`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor

from sb3_trpo_plus import observations as batches
from sb3_trpo_plus.branch_pool import BranchPool
from sb3_trpo_plus.distributions import distribution_parameters, find_family, sample_with_noise
from sb3_trpo_plus.vine.trunk import BranchState, GsdeNoise
from sb3_trpo_plus.vine.wrappers import VecWrappers


@dataclass
class BranchResult:
    """
    Q estimates of one rollout-set state, the environment steps they cost, and what refitting the
    critic needs.

    :param q_values: the K bootstrapped discounted returns, Q(s_n, a_k)
    :param env_steps: environment steps of the K branches
    :param lengths: the length of every branch
    :param partial_returns: the discounted rewards alone (Q without its bootstrap)
    :param bootstrap_discount: gamma^L for a bootstrapped branch, 0 for one that is not
    :param bootstrap_observations: the state each bootstrapped branch stopped in (None for the others)
    :param visited_observations: with ``record_states``, every state a branch continued from
        after its first action (s_1 .. s_{L-1})
    :param visited_returns: their discounted returns-to-go, bootstrapped as Q is (Monte Carlo
        targets of V under pi_old)
    """

    q_values: np.ndarray
    env_steps: int
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0))
    partial_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bootstrap_discount: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bootstrap_observations: list[Any] = field(default_factory=list)
    visited_observations: list[Any] = field(default_factory=list)
    visited_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))


def bootstraps(terminated: np.ndarray, truncated: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """
    The bootstrapping rule of a branch, the same for every backend (and the same as SB3's trunk):
    a terminal state is worth nothing after it (never bootstrapped, even when the time limit falls
    on the same step); a branch truncated by a time limit or cut at the horizon is completed with
    gamma^L V(s_L), V of the state it stopped in.

    :param terminated: the environment reported termination on the branch's last step
    :param truncated: the environment reported truncation on the branch's last step
    :param cut: the branch reached the horizon H
    :return: which branches are bootstrapped
    """
    return ~np.asarray(terminated, dtype=bool) & (np.asarray(truncated, dtype=bool) | np.asarray(cut, dtype=bool))


class BranchRunner:
    """
    Runs the K branches of a rollout-set state and returns their Q estimates.

    :param policy: pi_old (frozen during the rollout)
    :param pool: the environment copies
    :param vec_wrappers: the trunk's VecEnv wrappers, replayed on branch observations and rewards
        (VecNormalize frozen, frame stacks continued from the snapshot, images transposed)
    :param action_space: the environment's action space (for clipping / unscaling)
    :param gamma: discount factor
    :param horizon: H, the maximum length of a branch
    :param common_random_numbers: share environment and policy noise across the K branches
    :param rng: generator for the policy noise and, without common random numbers, the branch seeds
    :param sde_sample_freq: with a gSDE policy, the trunk's ``sde_sample_freq`` (a new exploration
        matrix every that many steps; -1 or 0: one matrix for the whole rollout)

    With a gSDE policy the branches follow the trunk's noise process (see :meth:`run`): the
    policy's action is mean + latent_sde @ E with the exploration matrix E the trunk had in force
    at the rollout-set state, and a new E ~ N(0, std) is drawn when the trunk would draw one;
    with common random numbers the K branches share every E, without they draw their new ones
    independently. Other policies draw fresh noise at every step, as the trunk does.
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        pool: BranchPool,
        vec_wrappers: VecWrappers,
        action_space: spaces.Space,
        gamma: float,
        horizon: int,
        common_random_numbers: bool,
        rng: np.random.Generator,
        sde_sample_freq: int = -1,
    ) -> None:
        self.policy = policy
        self.pool = pool
        self.vec_wrappers = vec_wrappers
        self.action_space = action_space
        self.gamma = gamma
        self.horizon = horizon
        self.common_random_numbers = common_random_numbers
        self.rng = rng
        self.sde_sample_freq = sde_sample_freq
        family = find_family(policy.action_dist)
        self.gsde = family is not None and family.state_dependent
        self._exploration: np.ndarray | None = None  # gSDE: the K branches' exploration matrices
        self._time = 0  # gSDE: the trunk step at which the policy acts next
        self._device = policy.device  # read again at each run: SB3's policy.device walks the modules

    def _to_env(self, actions: np.ndarray) -> np.ndarray:
        if isinstance(self.action_space, spaces.Box):
            if self.policy.squash_output:
                return self.policy.unscale_action(actions)
            return np.clip(actions, self.action_space.low, self.action_space.high)
        return actions

    def _values(self, observations: list[Any]) -> np.ndarray:
        with th.no_grad():
            obs_tensor = obs_as_tensor(batches.stack(observations), self._device)
            return self.policy.predict_values(obs_tensor).cpu().numpy().reshape(-1)  # type: ignore[arg-type]

    def restore(self, state: BranchState, seeds: np.ndarray | None = None) -> None:
        """Put every copy into the rollout-set state ``state`` (with ``seeds``: fresh environment noise per copy)."""
        self.pool.restore(state.env, seeds)
        self.vec_wrappers.start(state.vec, self.pool.size)

    def step(
        self, env_actions: np.ndarray, active: np.ndarray, previous: list[Any] | None = None
    ) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
        """
        One step of the active branches, observed through the trunk's VecEnv wrappers: what the
        trunk's VecEnv would return for the same environment step.

        :param env_actions: K actions in the environment's format
        :param active: which branches step
        :param previous: the branches' previous observations, filling the rows of inactive ones
            (the first step must have every branch active)
        :return: observations as the policy sees them (one per branch), rewards as the trunk's
            VecEnv returns them (0 for inactive branches), terminated and truncated flags
        """
        raw, rewards, terminated, truncated = self.pool.step(env_actions, active)
        if not active.all():
            filler = next(obs for obs in raw if obs is not None)
            raw = [obs if obs is not None else filler for obs in raw]
        observations, rewards = self.vec_wrappers.process(batches.stack(raw), rewards)
        rows = batches.rows(observations, self.pool.size)
        if previous is not None:
            rows = [rows[index] if active[index] else previous[index] for index in range(self.pool.size)]
        return rows, np.where(active, rewards, 0.0), terminated, truncated

    def run(
        self, state: BranchState, first_actions: np.ndarray, noise: GsdeNoise | None = None, record_states: bool = False
    ) -> BranchResult:
        """
        Restore every copy to ``state``, take ``first_actions[k]`` in copy k, then follow pi_old;
        Q is the discounted return, bootstrapped by :func:`bootstraps`.

        :param state: the rollout-set state
        :param first_actions: K actions in the policy's action format
        :param noise: with a gSDE policy, the trunk's noise process at the rollout-set state
            (without it, a gSDE branch starts from a new exploration matrix)
        :param record_states: keep every state the branches visit with its return-to-go
            (value-function targets)
        """
        size = len(first_actions)
        self._device = self.policy.device
        self._start_noise(noise, size)
        seeds = None if self.common_random_numbers else self.rng.integers(0, 2**31 - 1, size=size)
        self.restore(state, seeds)
        rewards_log = np.zeros((self.horizon, size))
        discount = np.ones(size)
        active = np.ones(size, dtype=bool)
        lengths = np.zeros(size, dtype=np.int64)
        actions = first_actions
        last_obs: list[Any] | None = None
        bootstrap = np.zeros(size, dtype=bool)
        visited: list[tuple[int, int, Any]] = []  # (time t of s_t, branch, s_t)
        env_steps = 0
        for step in range(self.horizon):
            last_obs, rewards, terminated, truncated = self.step(self._to_env(actions), active, last_obs)
            env_steps += int(active.sum())
            rewards_log[step] = np.where(active, rewards, 0.0)
            discount = np.where(active, discount * self.gamma, discount)
            lengths += active
            ended = active & (terminated | truncated)
            cut = active & ~ended if step == self.horizon - 1 else np.zeros(size, dtype=bool)
            bootstrap |= active & bootstraps(terminated, truncated, cut)
            active &= ~(ended | cut)
            if not active.any():
                break
            if record_states:
                visited.extend((step + 1, int(index), copy.deepcopy(last_obs[index])) for index in np.flatnonzero(active))
            actions = self._policy_actions(last_obs)
        index = np.flatnonzero(bootstrap)
        end_values = np.zeros(size)
        bootstrap_observations: list[Any] = [None] * size
        if len(index):
            assert last_obs is not None
            for i in index:
                bootstrap_observations[i] = last_obs[i]
            end_values[index] = self._values([last_obs[i] for i in index])
        # returns-to-go, backwards: G_t = r_t + gamma G_{t+1} while t < L, G_L = the bootstrap
        to_go = np.zeros((self.horizon + 1, size))
        partial = np.zeros(size)
        running, running_partial = end_values.copy(), np.zeros(size)
        for t in reversed(range(self.horizon)):
            inside = t < lengths
            running = np.where(inside, rewards_log[t] + self.gamma * running, running)
            running_partial = np.where(inside, rewards_log[t] + self.gamma * running_partial, running_partial)
            to_go[t] = running
        partial = running_partial
        return BranchResult(
            q_values=to_go[0].copy(),
            env_steps=env_steps,
            lengths=lengths,
            partial_returns=partial,
            bootstrap_discount=np.where(bootstrap, discount, 0.0),
            bootstrap_observations=bootstrap_observations,
            visited_observations=[obs for _, _, obs in visited],
            visited_returns=np.array([to_go[t, k] for t, k, _ in visited]),
        )

    def _start_noise(self, noise: GsdeNoise | None, size: int) -> None:
        """Put the K branches' gSDE noise process where the trunk's was at the rollout-set state."""
        if not self.gsde:
            return
        if noise is None:
            self._exploration, self._time = self._draw_exploration(size), 0
        else:
            self._exploration = np.repeat(noise.matrix[None], size, axis=0)
            self._time = noise.step
        self._time += 1  # the first action (from q) is taken at the rollout-set state; the policy acts from the next

    def _draw_exploration(self, size: int) -> np.ndarray:
        """
        New exploration matrices E ~ N(0, std), as SB3's ``sample_weights`` draws them (from the
        sampler's NumPy generator, so torch's random stream is untouched): one shared by the K
        branches with common random numbers, one each without.
        """
        dist: Any = self.policy.action_dist
        with th.no_grad():
            std = dist.get_std(self.policy.log_std).cpu().numpy().astype(np.float64)
        draws = 1 if self.common_random_numbers else size
        matrices = std * self.rng.standard_normal((draws, *std.shape))
        return np.repeat(matrices, size, axis=0) if self.common_random_numbers else matrices

    def _policy_actions(self, observations: list[Any]) -> np.ndarray:
        with th.no_grad():
            obs_tensor = obs_as_tensor(batches.stack(observations), self._device)
            distribution = self.policy.get_distribution(obs_tensor)  # type: ignore[arg-type]
            if self.gsde:
                return self._gsde_actions(distribution)
            params = [p.cpu().numpy() for p in distribution_parameters(distribution)]
        return sample_with_noise(distribution, params, self.rng, self.common_random_numbers)

    def _gsde_actions(self, distribution: Any) -> np.ndarray:
        """mean + latent_sde @ E_k for branch k, E_k renewed when the trunk would renew its matrix."""
        if self._exploration is None or (self.sde_sample_freq > 0 and self._time % self.sde_sample_freq == 0):
            self._exploration = self._draw_exploration(len(distribution.distribution.mean))
        self._time += 1
        mean = distribution.distribution.mean.cpu().numpy()
        latent = distribution._latent_sde.cpu().numpy()
        noise = np.einsum("ki,kij->kj", latent.astype(np.float64), self._exploration)
        actions = mean + noise
        if distribution.bijector is not None:
            actions = np.tanh(actions)
        return actions.astype(np.float32)
