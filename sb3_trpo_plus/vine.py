"""
Vine sampling (Schulman et al. 2015, section 5.2).

1. Run pi_old on the training environment (the *trunk*, collected like single path).
2. Pick a *rollout set* of N trunk states, uniformly or with weight gamma^t (t the time since
   the start of the episode), which samples the discounted state distribution rho_pi exactly.
   The choice is made online by weighted reservoir sampling, so only the chosen states are
   snapshotted (:mod:`sb3_trpo_plus.env_state`).
3. At each rollout-set state s_n draw K actions from q (or take every action of a small finite
   space); for each one, restore a dedicated copy of the environment to s_n, take the action,
   then follow pi_old for at most H steps. The discounted return, bootstrapped with the value
   function when the branch is cut or truncated, estimates Q(s_n, a_{n,k}).
4. With common random numbers the K branches of one state start from the same environment
   random state and share the policy's noise at every step, so the Q differences that drive
   the gradient have low variance.

Branches run side by side on K copies of the environment (a :class:`BranchPool`), in-process
or in subprocesses; they never touch the trunk's episodes, its Monitor statistics or
VecNormalize's running statistics (branch observations and rewards are normalised with the
frozen statistics). Every branch step is a real environment step and counts in the budget.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper, VecMonitor, VecNormalize

from sb3_trpo_plus.env_state import BranchableEnv, UnbranchableEnvError, check_branchable
from sb3_trpo_plus.surrogate import distribution_parameters

VINE_DEFAULTS: dict[str, Any] = {
    "n_states": 32,
    "n_actions": 4,
    "horizon": 50,
    "all_actions": False,
    "common_random_numbers": True,
    "state_selection": "uniform",
    "branch_vec_env": "dummy",
    "make_branch_env": None,
}
MAX_ENUMERATED_ACTIONS = 64


def validate_vine_kwargs(vine_kwargs: dict[str, Any] | None, action_space: spaces.Space | None) -> dict[str, Any]:
    """
    Complete ``vine_kwargs`` with :data:`VINE_DEFAULTS` and check every entry.

    :raises ValueError: naming the entry and what is allowed
    """
    settings = dict(VINE_DEFAULTS)
    unknown = set(vine_kwargs or {}) - set(VINE_DEFAULTS)
    if unknown:
        raise ValueError(f"vine_kwargs has unknown keys {sorted(unknown)}; allowed: {sorted(VINE_DEFAULTS)}")
    settings.update(vine_kwargs or {})
    n_states = settings["n_states"]
    if isinstance(n_states, bool) or not (
        (isinstance(n_states, (int, np.integer)) and n_states >= 1) or (isinstance(n_states, float) and 0.0 < n_states <= 1.0)
    ):
        raise ValueError(f"vine_kwargs['n_states'] must be an integer >= 1 or a fraction in (0, 1], got {n_states!r}")
    for key, low in (("n_actions", 2), ("horizon", 1)):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"vine_kwargs['{key}'] must be an integer >= {low}, got {value!r}")
    for key in ("all_actions", "common_random_numbers"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"vine_kwargs['{key}'] must be True or False, got {settings[key]!r}")
    if settings["state_selection"] not in ("uniform", "geometric"):
        raise ValueError(
            f"vine_kwargs['state_selection'] must be 'uniform' or 'geometric', got {settings['state_selection']!r}"
        )
    if settings["branch_vec_env"] not in ("dummy", "subproc"):
        raise ValueError(f"vine_kwargs['branch_vec_env'] must be 'dummy' or 'subproc', got {settings['branch_vec_env']!r}")
    if settings["make_branch_env"] is not None and not callable(settings["make_branch_env"]):
        raise ValueError("vine_kwargs['make_branch_env'] must be None or a callable returning a gymnasium.Env")
    if settings["all_actions"] and action_space is not None:
        enumerate_finite_actions(action_space)
    return settings


def enumerate_finite_actions(action_space: spaces.Space) -> np.ndarray:
    """
    Every action of a small finite action space, in the format the environment takes.

    :raises ValueError: when the space is not finite or has more than
        :data:`MAX_ENUMERATED_ACTIONS` actions
    """
    # SB3 policies act with indices from 0 (a space's ``start`` is not applied), and so do these
    if isinstance(action_space, spaces.Discrete):
        actions = np.arange(int(action_space.n))
    elif isinstance(action_space, spaces.MultiDiscrete) and action_space.nvec.ndim == 1:
        grids = np.meshgrid(*[np.arange(n) for n in action_space.nvec], indexing="ij")
        actions = np.stack([g.ravel() for g in grids], axis=1)
    elif isinstance(action_space, spaces.MultiBinary) and isinstance(action_space.n, (int, np.integer)):
        actions = (np.arange(2**action_space.n)[:, None] >> np.arange(action_space.n)[None]) & 1
    else:
        raise ValueError(
            f"vine_kwargs['all_actions'] needs a Discrete, MultiDiscrete or MultiBinary space, got {action_space}"
        )
    if len(actions) > MAX_ENUMERATED_ACTIONS:
        raise ValueError(
            f"vine_kwargs['all_actions'] needs at most {MAX_ENUMERATED_ACTIONS} actions, "
            f"the space {action_space} has {len(actions)}"
        )
    return actions


def _base_vec_env(env: VecEnv) -> tuple[VecEnv, VecNormalize | None]:
    """The innermost VecEnv and the VecNormalize wrapper, if any; other stateful wrappers are refused."""
    normalizer = None
    while isinstance(env, VecEnvWrapper):
        if isinstance(env, VecNormalize):
            normalizer = env
        elif not isinstance(env, VecMonitor):
            raise ValueError(
                f"sampling='vine' supports the VecEnv wrappers VecNormalize and VecMonitor, not {type(env).__name__}: "
                "its state cannot be branched; apply the equivalent gymnasium wrapper inside each environment instead"
            )
        env = env.venv
    if not isinstance(env, (DummyVecEnv, SubprocVecEnv)):
        raise ValueError(f"sampling='vine' needs a DummyVecEnv or SubprocVecEnv trunk, got {type(env).__name__}")
    return env, normalizer


# ---------------------------------------------------------------------------------------- trunk


class TrunkStates:
    """
    Weighted reservoir (Efraimidis-Spirakis) over the trunk's states: every state gets the key
    u^(1/w), u uniform, w = 1 ("uniform") or gamma^t ("geometric", t the time since the start of
    its episode); the N largest keys are kept, with their observation and environment snapshot.
    """

    def __init__(self, size: int, gamma: float, geometric: bool, n_envs: int, rng: np.random.Generator) -> None:
        self.size = size
        self.log_gamma = math.log(gamma) if (geometric and gamma > 0) else 0.0
        self.geometric = geometric
        self.rng = rng
        self.episode_time = np.zeros(n_envs, dtype=np.int64)
        self.heap: list[tuple[float, int, Any, Any]] = []
        self.counter = 0

    def reset(self) -> None:
        """Start a new rollout set (episode times carry over: the trunk continues its episodes)."""
        self.heap = []

    def offer(self, env_index: int, obs: Any, take_snapshot: Callable[[], Any]) -> None:
        """Consider the state of trunk environment ``env_index``; snapshot it only if it is kept."""
        log_weight = self.log_gamma * float(self.episode_time[env_index]) if self.geometric else 0.0
        if log_weight < -700.0:
            return
        key = math.log(max(self.rng.random(), 1e-300)) / math.exp(log_weight)
        self.counter += 1
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (key, self.counter, copy.deepcopy(obs), take_snapshot()))
        elif key > self.heap[0][0]:
            heapq.heapreplace(self.heap, (key, self.counter, copy.deepcopy(obs), take_snapshot()))

    def advance(self, dones: np.ndarray) -> None:
        """Move every trunk environment one step on; episodes that ended restart at t = 0."""
        self.episode_time += 1
        self.episode_time[np.asarray(dones, dtype=bool)] = 0

    def states(self) -> tuple[list[Any], list[Any]]:
        """Observations and snapshots of the rollout set."""
        items = sorted(self.heap, key=lambda item: item[1])
        return [item[2] for item in items], [item[3] for item in items]


def trunk_snapshotter(env: VecEnv) -> Callable[[int], Any]:
    """A function ``i -> snapshot of trunk environment i`` for a DummyVecEnv or SubprocVecEnv trunk."""
    base, _ = _base_vec_env(env)
    if isinstance(base, DummyVecEnv):
        return lambda index: base.envs[index].get_state()  # type: ignore[attr-defined]
    return lambda index: base.env_method("get_state", indices=[index])[0]


def make_trunk_branchable(env: VecEnv) -> None:
    """
    Check that every trunk environment can be snapshotted, and wrap each environment of a
    DummyVecEnv in :class:`BranchableEnv` (SubprocVecEnv environments must be wrapped by the
    user, e.g. ``make_vec_env(..., wrapper_class=BranchableEnv)``).

    :raises UnbranchableEnvError: for an environment that cannot be branched
    """
    base, _ = _base_vec_env(env)
    if isinstance(base, DummyVecEnv):
        for index, sub_env in enumerate(base.envs):
            if not isinstance(sub_env, BranchableEnv):
                check_branchable(sub_env)
                base.envs[index] = BranchableEnv(sub_env)
    elif not base.has_attr("get_state"):
        raise UnbranchableEnvError(
            "sampling='vine' with a SubprocVecEnv needs environments wrapped in sb3_trpo_plus.env_state.BranchableEnv, "
            "e.g. make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv)"
        )


# ---------------------------------------------------------------------------------------- branches


def _branch_env_factory(trunk: VecEnv, make_branch_env: Callable[[], gym.Env] | None) -> Callable[[], gym.Env]:
    """How to build one dedicated copy of the trunk's environment for branching."""
    if make_branch_env is not None:
        return lambda: _branchable(make_branch_env())
    base, _ = _base_vec_env(trunk)
    if isinstance(base, DummyVecEnv):
        template = base.envs[0]
        try:
            copy.deepcopy(template)
            return lambda: _branchable(copy.deepcopy(template))
        except Exception:  # any failure to copy means: rebuild from the spec
            pass
    spec = base.get_attr("spec", indices=[0])[0]
    if spec is None:
        raise UnbranchableEnvError(
            "sampling='vine' cannot build copies of this environment (it cannot be deep-copied and has no "
            "gymnasium spec): pass vine_kwargs={'make_branch_env': <callable returning a new env>}"
        )
    # the base environment as registered: wrappers added after gym.make (Monitor, ...) only record
    base_spec = dataclasses.replace(spec, additional_wrappers=())
    return lambda: _branchable(gym.make(base_spec))


def _branchable(env: gym.Env) -> BranchableEnv:
    return env if isinstance(env, BranchableEnv) else BranchableEnv(env)


class BranchPool:
    """
    K dedicated copies of the environment that run the K branches of one rollout-set state
    side by side, in-process (``"dummy"``) or one subprocess each (``"subproc"``).

    :param make_env: builds one copy (wrapped in :class:`BranchableEnv`)
    :param size: K, the number of copies
    :param backend: "dummy" or "subproc"
    """

    def __init__(self, make_env: Callable[[], gym.Env], size: int, backend: str) -> None:
        self.size = size
        self.backend = backend
        if backend == "subproc":
            self.vec_env: SubprocVecEnv | None = SubprocVecEnv([make_env for _ in range(size)])
            self.envs: list[gym.Env] = []
        else:
            self.vec_env = None
            self.envs = [make_env() for _ in range(size)]

    def restore(self, state: Any, seeds: np.ndarray | None) -> None:
        """Put every copy into ``state``; with ``seeds``, give copy k a fresh random generator (no common random numbers)."""
        if self.vec_env is not None:
            self.vec_env.env_method("set_state", state)
            if seeds is not None:
                for index, seed in enumerate(seeds):
                    self.vec_env.set_attr("np_random", np.random.default_rng(int(seed)), indices=[index])
            return
        for index, env in enumerate(self.envs):
            env.set_state(state)  # type: ignore[attr-defined]
            if seeds is not None:
                env.unwrapped.np_random = np.random.default_rng(int(seeds[index]))

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
        """
        Step the active copies only.

        :return: next observations (None for inactive copies), rewards, terminated and truncated flags
        """
        observations: list[Any] = [None] * self.size
        rewards = np.zeros(self.size)
        terminated = np.zeros(self.size, dtype=bool)
        truncated = np.zeros(self.size, dtype=bool)
        indices = np.flatnonzero(active)
        if self.vec_env is not None:
            remotes = self.vec_env.remotes
            for index in indices:
                remotes[index].send(("step", actions[index]))
            for index in indices:
                obs, reward, done, info, _ = remotes[index].recv()
                truncated[index] = bool(info.get("TimeLimit.truncated", False))
                terminated[index] = bool(done) and not truncated[index]
                observations[index] = info["terminal_observation"] if done else obs
                rewards[index] = reward
            return observations, rewards, terminated, truncated
        for index in indices:
            obs, reward, term, trunc, _ = self.envs[index].step(actions[index])
            observations[index], rewards[index], terminated[index], truncated[index] = obs, reward, term, trunc
        return observations, rewards, terminated, truncated

    def replayed_steps(self) -> int:
        """Simulator steps spent replaying snapshots (replay-based environments), summed over copies."""
        if self.vec_env is not None:
            return int(sum(self.vec_env.get_attr("replayed_steps")))
        return int(sum(getattr(env, "replayed_steps", 0) for env in self.envs))

    def close(self) -> None:
        if self.vec_env is not None:
            self.vec_env.close()
        for env in self.envs:
            env.close()


def sample_with_noise(distribution: Any, params: list[np.ndarray], noise_rng: np.random.Generator, common: bool) -> np.ndarray:
    """
    Draw one action per row of pi_old's distribution ``params`` (see
    :func:`~sb3_trpo_plus.surrogate.distribution_parameters`) by inverse transform of standard
    noise; with ``common=True`` every row uses the same noise (common random numbers).
    """
    rows = len(params[0])
    draws = 1 if common else rows
    if isinstance(distribution, (CategoricalDistribution, MultiCategoricalDistribution)):
        columns = []
        for logits in params:
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
            uniform = noise_rng.random((draws, 1))
            columns.append(np.minimum((cdf < uniform).sum(axis=1), logits.shape[1] - 1))
        return columns[0] if isinstance(distribution, CategoricalDistribution) else np.stack(columns, axis=1)
    if isinstance(distribution, BernoulliDistribution):
        with np.errstate(over="ignore"):  # exp(-logit) = inf for a logit below -88 gives p = 0, as it should
            probs = 1.0 / (1.0 + np.exp(-params[0]))
        return (noise_rng.random((draws, probs.shape[1])) < probs).astype(np.float32)
    mean, std = params
    return (mean + std * noise_rng.standard_normal((draws, mean.shape[1]))).astype(np.float32)


@dataclass
class BranchResult:
    """Q estimates of one rollout-set state and the environment steps they cost."""

    q_values: np.ndarray
    env_steps: int
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0))


class BranchRunner:
    """
    Runs the K branches of a rollout-set state and returns their Q estimates.

    :param policy: pi_old (frozen during the rollout)
    :param pool: the environment copies
    :param normalizer: the trunk's VecNormalize, used frozen on branch observations and rewards
    :param action_space: the environment's action space (for clipping / unscaling)
    :param gamma: discount factor
    :param horizon: H, the maximum length of a branch
    :param common_random_numbers: share environment and policy noise across the K branches
    :param rng: generator for the policy noise and, without common random numbers, the branch seeds
    """

    def __init__(
        self,
        policy: ActorCriticPolicy,
        pool: BranchPool,
        normalizer: VecNormalize | None,
        action_space: spaces.Space,
        gamma: float,
        horizon: int,
        common_random_numbers: bool,
        rng: np.random.Generator,
    ) -> None:
        self.policy = policy
        self.pool = pool
        self.normalizer = normalizer
        self.action_space = action_space
        self.gamma = gamma
        self.horizon = horizon
        self.crn = common_random_numbers
        self.rng = rng

    def _to_env(self, actions: np.ndarray) -> np.ndarray:
        if isinstance(self.action_space, spaces.Box):
            if self.policy.squash_output:
                return self.policy.unscale_action(actions)
            return np.clip(actions, self.action_space.low, self.action_space.high)
        return actions

    def _normalize_obs(self, observations: list[Any]) -> Any:
        if isinstance(observations[0], dict):
            stacked: Any = {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
        else:
            stacked = np.stack(observations)
        return self.normalizer.normalize_obs(stacked) if self.normalizer is not None else stacked

    def _values(self, observations: list[Any]) -> np.ndarray:
        with th.no_grad():
            obs_tensor = obs_as_tensor(self._normalize_obs(observations), self.policy.device)
            return self.policy.predict_values(obs_tensor).cpu().numpy().reshape(-1)  # type: ignore[arg-type]

    def run(self, state: Any, first_actions: np.ndarray) -> BranchResult:
        """
        Restore every copy to ``state``, take ``first_actions[k]`` in copy k, then follow pi_old.

        :param state: snapshot of the rollout-set state
        :param first_actions: K actions in the policy's action format
        """
        size = len(first_actions)
        seeds = None if self.crn else self.rng.integers(0, 2**31 - 1, size=size)
        self.pool.restore(state, seeds)
        returns = np.zeros(size)
        discount = np.ones(size)
        active = np.ones(size, dtype=bool)
        lengths = np.zeros(size, dtype=np.int64)
        actions = first_actions
        last_obs: list[Any] = [None] * size
        bootstrap = np.zeros(size, dtype=bool)
        env_steps = 0
        for step in range(self.horizon):
            observations, rewards, terminated, truncated = self.pool.step(self._to_env(actions), active)
            env_steps += int(active.sum())
            if self.normalizer is not None and self.normalizer.norm_reward:
                rewards = np.where(active, self.normalizer.normalize_reward(rewards), 0.0)
            returns += np.where(active, discount * rewards, 0.0)
            discount = np.where(active, discount * self.gamma, discount)
            lengths += active
            for index in np.flatnonzero(active):
                last_obs[index] = observations[index]
            bootstrap |= active & truncated
            active &= ~(terminated | truncated)
            if not active.any():
                break
            if step == self.horizon - 1:
                bootstrap |= active
                break
            actions = self._policy_actions([observations[i] if active[i] else last_obs[i] for i in range(size)])
        if bootstrap.any():
            cut = np.flatnonzero(bootstrap)
            values = self._values([last_obs[i] for i in cut])
            returns[cut] += discount[cut] * values
        return BranchResult(returns, env_steps, lengths)

    def _policy_actions(self, observations: list[Any]) -> np.ndarray:
        with th.no_grad():
            obs_tensor = obs_as_tensor(self._normalize_obs(observations), self.policy.device)
            distribution = self.policy.get_distribution(obs_tensor)  # type: ignore[arg-type]
            params = [p.cpu().numpy() for p in distribution_parameters(distribution)]
        return sample_with_noise(distribution, params, self.rng, self.crn)


class VineSampler:
    """
    One vine iteration: the trunk (single-path collection that also keeps the rollout set),
    then K branches at every rollout-set state; the result is a
    :class:`~sb3_trpo_plus.buffers.VineBatch` for the surrogate.

    :param settings: the validated ``vine_kwargs`` (see :func:`validate_vine_kwargs`)
    :param q: the sampling distribution of the branch actions (see :mod:`sb3_trpo_plus.q`)
    :param env: the training VecEnv (the trunk)
    :param policy: the policy (pi_old during collection)
    :param gamma: discount factor
    :param seed: seed of the sampler's own generator (rollout-set keys, branch noise)
    """

    def __init__(
        self, settings: dict[str, Any], q: Any, env: VecEnv, policy: ActorCriticPolicy, gamma: float, seed: int | None
    ) -> None:
        make_trunk_branchable(env)
        _, self.normalizer = _base_vec_env(env)
        self.settings = settings
        self.q = q
        self.env = env
        self.policy = policy
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)
        self.all_actions = enumerate_finite_actions(policy.action_space) if settings["all_actions"] else None
        n_branches = len(self.all_actions) if self.all_actions is not None else settings["n_actions"]
        factory = _branch_env_factory(env, settings["make_branch_env"])
        self.pool = BranchPool(factory, n_branches, settings["branch_vec_env"])
        self.runner = BranchRunner(
            policy,
            self.pool,
            self.normalizer,
            policy.action_space,
            gamma,
            settings["horizon"],
            settings["common_random_numbers"],
            self.rng,
        )
        self.trunk = TrunkStates(1, gamma, settings["state_selection"] == "geometric", env.num_envs, self.rng)
        self.snapshot = trunk_snapshotter(env)
        self.batch: Any = None
        self.stats: dict[str, float] = {}

    def n_states(self, trunk_size: int) -> int:
        """N, the size of the rollout set, for a trunk of ``trunk_size`` states."""
        n_states = self.settings["n_states"]
        if isinstance(n_states, float):
            return max(1, math.ceil(n_states * trunk_size))
        return min(int(n_states), trunk_size)

    def before_trunk_step(self, last_obs: Any, episode_starts: np.ndarray) -> None:
        """Offer the trunk's current states to the rollout set (called before every trunk step)."""
        self.trunk.episode_time[np.asarray(episode_starts, dtype=bool)] = 0
        for index in range(self.env.num_envs):
            obs = {key: value[index] for key, value in last_obs.items()} if isinstance(last_obs, dict) else last_obs[index]
            self.trunk.offer(index, obs, functools.partial(self.snapshot, index))
        self.trunk.episode_time += 1

    def start_trunk(self, trunk_size: int) -> None:
        """Begin a new rollout set for a trunk of ``trunk_size`` states."""
        self.trunk.size = self.n_states(trunk_size)
        self.trunk.reset()

    def branch(self) -> int:
        """
        Run the branches of every rollout-set state and store the :class:`VineBatch`.

        :return: the number of environment steps the branches took
        """
        from sb3_trpo_plus.buffers import VineBatch

        observations, states = self.trunk.states()
        if isinstance(observations[0], dict):
            stacked: Any = {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
        else:
            stacked = np.stack(observations)
        obs_tensor = obs_as_tensor(stacked, self.policy.device)
        n_states = len(states)
        with th.no_grad():
            pi_old = self.policy.get_distribution(obs_tensor)  # type: ignore[arg-type]
            if self.all_actions is not None:
                actions = th.as_tensor(self.all_actions, device=self.policy.device).unsqueeze(0)
                actions = actions.expand(n_states, *actions.shape[1:])
                log_q = th.zeros(actions.shape[:2], device=self.policy.device)
            else:
                sampler = self.q.build(pi_old, obs_tensor)
                actions = sampler.sample(self.settings["n_actions"])
                log_q = sampler.log_prob(actions)
        replayed_before = self.pool.replayed_steps()
        actions_np = actions.cpu().numpy()
        q_values = np.zeros(actions.shape[:2])
        env_steps, lengths = 0, []
        for index, state in enumerate(states):
            result = self.runner.run(state, actions_np[index])
            q_values[index] = result.q_values
            env_steps += result.env_steps
            lengths.append(result.lengths)
        n_actions = actions.shape[1]
        if isinstance(obs_tensor, dict):
            repeated: Any = {key: value.repeat_interleave(n_actions, dim=0) for key, value in obs_tensor.items()}
        else:
            repeated = obs_tensor.repeat_interleave(n_actions, dim=0)
        self.batch = VineBatch(
            observations=repeated,
            actions=actions.reshape(n_states * n_actions, *actions.shape[2:]),
            log_q=log_q.reshape(-1).float(),
            q_values=th.as_tensor(q_values.reshape(-1), dtype=th.float32, device=self.policy.device),
            group=th.arange(n_states, device=self.policy.device).repeat_interleave(n_actions),
            n_states=n_states,
            all_actions=self.all_actions is not None,
        )
        self.stats = {
            "branch_steps": float(env_steps),
            "rollout_set_size": float(n_states),
            "branch_length_mean": float(np.mean(np.concatenate(lengths))) if lengths else 0.0,
            "replayed_steps": float(self.pool.replayed_steps() - replayed_before),
            "q_value_mean": float(q_values.mean()) if q_values.size else 0.0,
        }
        return env_steps

    def close(self) -> None:
        """Release the branch environments."""
        self.pool.close()
