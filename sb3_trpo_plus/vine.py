"""
Vine sampling (Schulman et al. 2015, section 5.2).

1. Run pi_old on the training environment (the *trunk*, collected like single path).
2. Pick a *rollout set* of N trunk states: "uniform", N distinct states uniformly at random;
   or "geometric", N independent draws with replacement with weight gamma^t (t the time since
   the start of the episode), an exact sample of the trunk's discounted state distribution
   (a state drawn twice is branched twice). The choice is made online by reservoir sampling,
   so only the chosen states are snapshotted (:mod:`sb3_trpo_plus.env_state`); see
   :class:`TrunkStates`.
3. At each rollout-set state s_n draw K actions from q (or take every action of a small finite
   space); for each one, restore a dedicated copy of the environment to s_n, take the action,
   then follow pi_old for at most H steps. The discounted return, bootstrapped with the value
   function when the branch is cut or truncated, estimates Q(s_n, a_{n,k}).
4. With common random numbers the K branches of one state start from the same environment
   random state and share the policy's noise at every step, so the Q differences that drive
   the gradient have low variance. A gSDE policy's branches follow the trunk's noise process
   (its exploration matrix at the rollout-set state, renewed when the trunk would renew it;
   see :class:`BranchRunner`).

Branches run side by side on K copies of the environment (a :class:`BranchPool`), in-process
or in subprocesses; they never touch the trunk's episodes, its Monitor statistics or
VecNormalize's running statistics (branch observations and rewards are normalised with the
frozen statistics). Every branch step is a real environment step and counts in the budget.

Branches simulate the trunk's MDP: the copies are trunk environment 0 with every gymnasium
wrapper (:func:`~sb3_trpo_plus.env_state.branch_copy`; taken inside the worker for a
SubprocVecEnv trunk), their wrapper chain is compared with the trunk's at construction, and the
trunk's VecEnv wrappers are replayed on branch observations and rewards (:class:`VecWrappers`).
"""

from __future__ import annotations

import copy
import functools
import heapq
import multiprocessing as mp
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecEnvWrapper,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.distributions import actions_for_log_prob, distribution_parameters, find_family, sample_with_noise
from sb3_trpo_plus.env_state import (
    BranchableEnv,
    BranchWorkerError,
    UnbranchableEnvError,
    WorkerFailure,
    branch_copy,
    check_branchable,
    check_same_chain,
    wrapper_chain,
)
from sb3_trpo_plus.settings import VineSettings

_VEC_WRAPPERS = (VecNormalize, VecMonitor, VecFrameStack, VecTransposeImage)


def _base_vec_env(env: VecEnv) -> tuple[VecEnv, list[VecEnvWrapper]]:
    """
    The innermost VecEnv and the VecEnv wrappers around it, innermost first. The wrappers that
    vine can reproduce on its branches are VecNormalize (frozen), VecFrameStack (its stack is part
    of the snapshot), VecTransposeImage and VecMonitor (it only records); any other is refused.
    """
    wrappers: list[VecEnvWrapper] = []
    while isinstance(env, VecEnvWrapper):
        if not isinstance(env, _VEC_WRAPPERS):
            raise UnbranchableEnvError(
                f"sampling='vine' cannot reproduce the VecEnv wrapper {type(env).__module__}.{type(env).__qualname__} "
                "on its branches (it supports VecNormalize, VecFrameStack, VecTransposeImage and VecMonitor): apply the "
                "equivalent gymnasium wrapper inside each environment instead (e.g. make_vec_env(..., wrapper_class=...))"
            )
        wrappers.append(env)
        env = env.venv
    if not isinstance(env, (DummyVecEnv, SubprocVecEnv)):
        raise UnbranchableEnvError(f"sampling='vine' needs a DummyVecEnv or SubprocVecEnv trunk, got {type(env).__name__}")
    return env, wrappers[::-1]


def _copy_stack(stacked: Any, index: int) -> Any:
    """The stack of trunk environment ``index`` (an array, or a dict of them for Dict observations)."""
    subs = getattr(stacked, "sub_stacked_observations", None)
    if isinstance(subs, dict):
        return {key: _copy_stack(sub, index) for key, sub in subs.items()}
    return stacked.stacked_obs[index].copy()


def _fill_stack(stacked: Any, state: Any, size: int) -> None:
    if isinstance(state, dict):
        for key, sub_state in state.items():
            _fill_stack(stacked.sub_stacked_observations[key], sub_state, size)
        return
    stacked.stacked_obs = np.repeat(np.asarray(state)[None], size, axis=0)


class VecWrappers:
    """
    The trunk's VecEnv wrappers, replayed on branch observations and rewards, so that the policy
    and the value function see in a branch exactly what they would see on the trunk.

    VecNormalize normalises with its statistics frozen (branches never update them); the stacks
    of VecFrameStack are part of a trunk snapshot and every branch continues its own copy;
    VecTransposeImage is stateless; VecMonitor only records.

    :param wrappers: the trunk's VecEnv wrappers, innermost first (see :func:`_base_vec_env`)
    """

    def __init__(self, wrappers: list[VecEnvWrapper]) -> None:
        self.wrappers = wrappers
        self.stacks: list[Any] = [None] * len(wrappers)

    @property
    def normalizer(self) -> VecNormalize | None:
        """The trunk's VecNormalize, if any."""
        return next((w for w in self.wrappers if isinstance(w, VecNormalize)), None)

    def snapshot(self, index: int) -> tuple[Any, ...]:
        """The state of the wrappers for trunk environment ``index`` (the frame stacks)."""
        return tuple(_copy_stack(w.stacked_obs, index) if isinstance(w, VecFrameStack) else None for w in self.wrappers)

    def start(self, states: tuple[Any, ...], size: int) -> None:
        """Give each of ``size`` branches the wrapper state ``states`` (from :meth:`snapshot`)."""
        for position, (wrapper, state) in enumerate(zip(self.wrappers, states, strict=True)):
            if isinstance(wrapper, VecFrameStack):
                stack = copy.deepcopy(wrapper.stacked_obs)
                _fill_stack(stack, state, size)
                self.stacks[position] = stack

    def process(self, observations: Any, rewards: np.ndarray) -> tuple[Any, np.ndarray]:
        """
        Observations and rewards of one step of every branch, as the trunk's VecEnv would return them.

        :param observations: the environments' observations, stacked over branches (an array or a dict of arrays)
        :param rewards: the environments' rewards
        """
        size = len(rewards)
        for position, wrapper in enumerate(self.wrappers):
            if isinstance(wrapper, VecNormalize):
                observations = wrapper.normalize_obs(observations)
                if wrapper.norm_reward:
                    rewards = wrapper.normalize_reward(rewards)
            elif isinstance(wrapper, VecFrameStack):
                # episode ends are not passed: an ended branch stops, and its last observation is
                # stacked on the previous frames, as VecFrameStack does for terminal observations
                observations, _ = self.stacks[position].update(observations, np.zeros(size, dtype=bool), [{}] * size)
                observations = copy.deepcopy(observations)
            elif isinstance(wrapper, VecTransposeImage):
                observations = wrapper.transpose_observations(observations)
        return observations, np.asarray(rewards, dtype=np.float64)


def _rows(batch: Any, size: int) -> list[Any]:
    """Split a batch (array or dict of arrays) into its rows."""
    if isinstance(batch, dict):
        return [{key: value[index] for key, value in batch.items()} for index in range(size)]
    return [batch[index] for index in range(size)]


def _stack(observations: list[Any]) -> Any:
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


# ---------------------------------------------------------------------------------------- trunk


class TrunkStates:
    """
    The rollout set, chosen online from the trunk's states so that only the chosen states are
    snapshotted.

    - ``geometric=False`` ("uniform"): N *distinct* trunk states, a uniformly random subset
      (reservoir sampling with uniform keys): every trunk state is in the set with probability
      N / T, T the number of trunk states.
    - ``geometric=True`` ("geometric"): N independent draws *with replacement*, each of which picks
      the trunk state with time t since the start of its episode with probability
      gamma^t / sum over the trunk's states of gamma^t': the discounted state distribution of the
      trunk's episodes, sampled exactly. Each draw is a single-item weighted reservoir (keep the
      new state with probability w / W, W the total weight offered so far), which is exact.
      Drawing without replacement would not be: it flattens the weights (early states are
      under-represented, late ones over-represented). A state drawn more than once appears once
      per draw in the rollout set (one snapshot, shared), and each occurrence gets its own K
      branches: the set is a sample of the distribution, duplicates included.
    """

    def __init__(self, size: int, gamma: float, geometric: bool, n_envs: int, rng: np.random.Generator) -> None:
        self.size = size
        self.gamma = gamma
        self.geometric = geometric
        self.rng = rng
        self.episode_time = np.zeros(n_envs, dtype=np.int64)
        self.heap: list[tuple[float, int, Any, Any]] = []
        self.slots: list[tuple[int, Any, Any] | None] = []
        self.total_weight = 0.0
        self.counter = 0
        self.reset()

    def reset(self) -> None:
        """Start a new rollout set (episode times carry over: the trunk continues its episodes)."""
        self.heap = []
        self.slots = [None] * self.size
        self.total_weight = 0.0

    def offer(self, env_index: int, obs: Any, take_snapshot: Callable[[], Any]) -> None:
        """Consider the state of trunk environment ``env_index``; snapshot it only if it is kept."""
        self.counter += 1
        if self.geometric:
            self._offer_weighted(float(self.gamma ** float(self.episode_time[env_index])), obs, take_snapshot)
            return
        key = self.rng.random()
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (key, self.counter, copy.deepcopy(obs), take_snapshot()))
        elif key > self.heap[0][0]:
            heapq.heapreplace(self.heap, (key, self.counter, copy.deepcopy(obs), take_snapshot()))

    def _offer_weighted(self, weight: float, obs: Any, take_snapshot: Callable[[], Any]) -> None:
        if len(self.slots) != self.size:  # the size was changed without a reset
            self.slots = [None] * self.size
        if weight <= 0.0:
            return
        self.total_weight += weight
        keep = np.flatnonzero(self.rng.random(self.size) * self.total_weight < weight)
        if len(keep):
            item = (self.counter, copy.deepcopy(obs), take_snapshot())
            for slot in keep:
                self.slots[slot] = item

    def states(self) -> tuple[list[Any], list[Any]]:
        """Observations and snapshots of the rollout set, in trunk order (geometric: with repeats)."""
        if self.geometric:
            chosen = sorted((item for item in self.slots if item is not None), key=lambda item: item[0])
            return [item[1] for item in chosen], [item[2] for item in chosen]
        items = sorted(self.heap, key=lambda item: item[1])
        return [item[2] for item in items], [item[3] for item in items]


@dataclass
class BranchState:
    """
    A rollout-set state: the snapshot of one trunk environment (every gymnasium wrapper included)
    and the state of the trunk's VecEnv wrappers for it (see :meth:`VecWrappers.snapshot`).
    """

    env: Any
    vec: tuple[Any, ...]


def _raise_failure(result: Any, where: str) -> Any:
    if isinstance(result, WorkerFailure):
        raise result.error(where) from result.exception
    return result


def trunk_snapshotter(env: VecEnv) -> Callable[[int], BranchState]:
    """A function ``i -> snapshot of trunk environment i`` for a DummyVecEnv or SubprocVecEnv trunk."""
    base, wrappers = _base_vec_env(env)
    vec = VecWrappers(wrappers)
    if isinstance(base, DummyVecEnv):
        return lambda index: BranchState(base.envs[index].get_state(), vec.snapshot(index))  # type: ignore[attr-defined]

    def take(index: int) -> BranchState:
        state = base.env_method("guarded_call", "get_state", indices=[index])[0]
        return BranchState(_raise_failure(state, f"snapshot of trunk environment {index}"), vec.snapshot(index))

    return take


def _trunk_chains(base: VecEnv) -> list[list[tuple[str, ...]]]:
    if isinstance(base, DummyVecEnv):
        return [wrapper_chain(sub_env) for sub_env in base.envs]
    chains = base.env_method("guarded_call", "wrapper_chain")
    return [_raise_failure(chain, f"trunk environment {index}") for index, chain in enumerate(chains)]


def make_trunk_branchable(env: VecEnv) -> None:
    """
    Check that every trunk environment can be snapshotted and that all are built alike, and wrap
    each environment of a DummyVecEnv in :class:`BranchableEnv` (SubprocVecEnv environments must
    be wrapped by the user, e.g. ``make_vec_env(..., wrapper_class=BranchableEnv)``).

    :raises UnbranchableEnvError: for an environment that cannot be branched
    """
    base, _ = _base_vec_env(env)
    if isinstance(base, DummyVecEnv):
        for index, sub_env in enumerate(base.envs):
            if not isinstance(sub_env, BranchableEnv):
                check_branchable(sub_env)
                base.envs[index] = BranchableEnv(sub_env)
    elif not base.has_attr("guarded_call"):
        raise UnbranchableEnvError(
            "sampling='vine' with a SubprocVecEnv needs environments wrapped in sb3_trpo_plus.env_state.BranchableEnv, "
            "e.g. make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv)"
        )
    chains = _trunk_chains(base)
    for index, chain in enumerate(chains[1:], start=1):
        check_same_chain(chains[0], chain, where=f"trunk environment {index}'s wrappers (against environment 0's)")


# ---------------------------------------------------------------------------------------- branches


def _branch_env_factory(trunk: VecEnv, make_branch_env: Callable[[], gym.Env] | None) -> Callable[[], gym.Env]:
    """
    How to build one dedicated copy of the trunk's environment for branching: by default a copy of
    trunk environment 0, every wrapper included, without file side effects (see
    :func:`~sb3_trpo_plus.env_state.branch_copy`), taken in its own process for a SubprocVecEnv.
    The result is picklable with cloudpickle (subprocess branches get it).
    """
    if make_branch_env is not None:
        return functools.partial(_built_branch_env, make_branch_env)
    base, _ = _base_vec_env(trunk)
    if isinstance(base, DummyVecEnv):
        template = branch_copy(base.envs[0])
    else:
        blob = _raise_failure(base.env_method("guarded_call", "branch_copy_blob", indices=[0])[0], "trunk environment 0")
        template = cloudpickle.loads(blob)
    return functools.partial(copy.deepcopy, template)


def _built_branch_env(make_branch_env: Callable[[], gym.Env]) -> gym.Env:
    return _branchable(make_branch_env())


def _branchable(env: gym.Env) -> BranchableEnv:
    return env if isinstance(env, BranchableEnv) else BranchableEnv(env)


def _branch_worker(remote: Connection, parent_remote: Connection, payload: bytes, count: int = 1) -> None:
    """
    The loop of a subprocess holding ``count`` branch copies: restore / step (no auto-reset) /
    replayed_steps / chain, each command for all of its copies at once. An exception is sent back
    as a :class:`WorkerFailure` and the worker carries on.
    """
    parent_remote.close()
    envs: list[gym.Env] = []
    try:
        make_env = cloudpickle.loads(payload)
        envs = [_branchable(make_env()) for _ in range(count)]
    except Exception as error:
        remote.send(WorkerFailure.capture("the branch copy", "building it", error))
    while True:
        try:
            command, data = remote.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if command == "close":
            for env in envs:
                env.close()
            remote.close()
            break
        if not envs:
            continue
        env = envs[0]
        try:
            if command == "restore":
                state, seeds = data
                for env, seed in zip(envs, seeds, strict=True):
                    env.set_state(state)  # type: ignore[attr-defined]
                    if seed is not None:
                        env.unwrapped.np_random = np.random.default_rng(int(seed))
                remote.send(None)
            elif command == "step":
                results = []
                for local, action in data:
                    env = envs[local]
                    obs, reward, terminated, truncated, _ = env.step(action)
                    results.append((obs, float(reward), bool(terminated), bool(truncated)))
                remote.send(results)
            elif command == "replayed_steps":
                remote.send(int(sum(getattr(env, "replayed_steps", 0) for env in envs)))
            elif command == "chain":
                remote.send(wrapper_chain(env))
            else:
                raise NotImplementedError(f"unknown branch worker command {command!r}")
        except Exception as error:
            remote.send(WorkerFailure.capture(env, command, error))


class BranchPool:
    """
    K dedicated copies of the environment that run the K branches of one rollout-set state
    side by side, in-process (``"dummy"``) or in worker processes (``"subproc"``: copy k lives in
    worker k mod W, W = ``n_workers``, one worker per copy by default). A copy never
    auto-resets: a branch ends with its episode. An exception in a subprocess copy is raised in
    the caller as :class:`~sb3_trpo_plus.env_state.BranchWorkerError`, naming the environment
    and chained to the original exception.

    :param make_env: builds one copy (wrapped in :class:`BranchableEnv` if it is not); picklable
        with cloudpickle for ``"subproc"``
    :param size: K, the number of copies
    :param backend: "dummy" or "subproc"
    :param n_workers: with "subproc", the number of worker processes (None: one per copy; at most K)
    """

    def __init__(self, make_env: Callable[[], gym.Env], size: int, backend: str, n_workers: int | None = None) -> None:
        self.size = size
        self.backend = backend
        self.envs: list[gym.Env] = []
        self.remotes: list[Connection] = []
        self.processes: list[Any] = []
        self.env_name = "the branch copy"
        self.n_workers = min(size, n_workers or size)
        if backend == "subproc":
            methods = mp.get_all_start_methods()
            context = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            payload = cloudpickle.dumps(make_env)
            for worker in range(self.n_workers):
                count = len(range(worker, size, self.n_workers))
                remote, work_remote = context.Pipe()
                process = context.Process(  # type: ignore[attr-defined]
                    target=_branch_worker, args=(work_remote, remote, payload, count), daemon=True
                )
                process.start()
                work_remote.close()
                self.remotes.append(remote)
                self.processes.append(process)
        else:
            self.envs = [_branchable(make_env()) for _ in range(size)]

    def _copies(self, worker: int) -> range:
        """The copies worker ``worker`` holds (its local copy j is copy worker + j * W)."""
        return range(worker, self.size, self.n_workers)

    def _receive(self, index: int) -> Any:
        try:
            message = self.remotes[index].recv()
        except EOFError as error:
            self.processes[index].join(timeout=5)
            code = self.processes[index].exitcode
            raise BranchWorkerError(
                f"branch worker {index} ({self.env_name}) died without a message (exit code {code})"
            ) from error
        return _raise_failure(message, f"branch worker {index}")

    def chain(self) -> list[tuple[str, ...]]:
        """:func:`~sb3_trpo_plus.env_state.wrapper_chain` of copy 0."""
        if self.remotes:
            self.remotes[0].send(("chain", None))
            chain: list[tuple[str, ...]] = self._receive(0)
        else:
            chain = wrapper_chain(self.envs[0])
        self.env_name = chain[-1][0]
        return chain

    def restore(self, state: Any, seeds: np.ndarray | None) -> None:
        """Put every copy into ``state``; with ``seeds``, give copy k a fresh random generator (no common random numbers)."""
        if self.remotes:
            for worker, remote in enumerate(self.remotes):
                mine = [None if seeds is None else int(seeds[k]) for k in self._copies(worker)]
                remote.send(("restore", (state, mine)))
            for worker in range(len(self.remotes)):
                self._receive(worker)
            return
        for index, env in enumerate(self.envs):
            env.set_state(state)  # type: ignore[attr-defined]
            if seeds is not None:
                env.unwrapped.np_random = np.random.default_rng(int(seeds[index]))

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
        """
        Step the active copies only (both backends return the environments' own values).

        :return: next observations (None for inactive copies), rewards, terminated and truncated flags
        """
        observations: list[Any] = [None] * self.size
        rewards = np.zeros(self.size)
        terminated = np.zeros(self.size, dtype=bool)
        truncated = np.zeros(self.size, dtype=bool)
        results: dict[int, Any] = {}
        if self.remotes:
            asked: dict[int, list[int]] = {}
            for worker, remote in enumerate(self.remotes):
                mine = [(local, k) for local, k in enumerate(self._copies(worker)) if active[k]]
                if mine:
                    remote.send(("step", [(local, actions[k]) for local, k in mine]))
                    asked[worker] = [k for _, k in mine]
            for worker, copies in asked.items():
                results.update(zip(copies, self._receive(worker), strict=True))
        else:
            results = {int(k): self.envs[k].step(actions[k])[:4] for k in np.flatnonzero(active)}
        for position, (obs, reward, term, trunc) in results.items():
            observations[position], rewards[position], terminated[position], truncated[position] = obs, reward, term, trunc
        return observations, rewards, terminated, truncated

    def replayed_steps(self) -> int:
        """Simulator steps spent replaying snapshots (replay-based environments), summed over copies."""
        if self.remotes:
            for remote in self.remotes:
                remote.send(("replayed_steps", None))
            return int(sum(self._receive(worker) for worker in range(len(self.remotes))))
        return int(sum(getattr(env, "replayed_steps", 0) for env in self.envs))

    def close(self) -> None:
        for remote in self.remotes:
            try:
                remote.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        self.remotes, self.processes = [], []
        for env in self.envs:
            env.close()
        self.envs = []


@dataclass
class GsdeNoise:
    """
    The state of the trunk's gSDE noise process at a rollout-set state: the exploration matrix
    in force there (SB3's ``exploration_mat`` with one trunk environment, row i of
    ``exploration_matrices`` for trunk environment i of several) and the trunk step (since the
    start of the rollout) at which it was in force, which fixes when the trunk would draw the next
    matrix (every ``sde_sample_freq`` steps).
    """

    matrix: np.ndarray
    step: int


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
        self.crn = common_random_numbers
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

    def _normalize_obs(self, observations: list[Any]) -> Any:
        """Stack per-branch observations into a batch (they are already as the policy sees them, see :meth:`step`)."""
        return _stack(observations)

    def _values(self, observations: list[Any]) -> np.ndarray:
        with th.no_grad():
            obs_tensor = obs_as_tensor(self._normalize_obs(observations), self._device)
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
        observations, rewards = self.vec_wrappers.process(_stack(raw), rewards)
        rows = _rows(observations, self.pool.size)
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
        seeds = None if self.crn else self.rng.integers(0, 2**31 - 1, size=size)
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
        draws = 1 if self.crn else size
        matrices = std * self.rng.standard_normal((draws, *std.shape))
        return np.repeat(matrices, size, axis=0) if self.crn else matrices

    def _policy_actions(self, observations: list[Any]) -> np.ndarray:
        with th.no_grad():
            obs_tensor = obs_as_tensor(self._normalize_obs(observations), self._device)
            distribution = self.policy.get_distribution(obs_tensor)  # type: ignore[arg-type]
            if self.gsde:
                return self._gsde_actions(distribution)
            params = [p.cpu().numpy() for p in distribution_parameters(distribution)]
        return sample_with_noise(distribution, params, self.rng, self.crn)

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
        self.vec_wrappers = VecWrappers(_base_vec_env(env)[1])
        self.settings = settings
        self.q = q
        self.env = env
        self.policy = policy
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)
        all_actions = settings.branch_actions(policy.action_space)
        self.all_actions = None if all_actions is None else all_actions.to(policy.device)
        n_branches = len(self.all_actions) if self.all_actions is not None else settings.n_actions
        factory = _branch_env_factory(env, settings.make_branch_env)
        self.pool = BranchPool(factory, n_branches, settings.branch_vec_env, settings.n_branch_workers)
        try:  # the branches must simulate the trunk's MDP: the same wrappers, in the same order
            check_same_chain(_trunk_chains(_base_vec_env(env)[0])[0], self.pool.chain())
        except Exception:
            self.pool.close()
            raise
        self.runner = BranchRunner(
            policy,
            self.pool,
            self.vec_wrappers,
            policy.action_space,
            gamma,
            settings.horizon,
            settings.common_random_numbers,
            self.rng,
            sde_sample_freq,
        )
        self.trunk = TrunkStates(1, gamma, settings.state_selection == "geometric", env.num_envs, self.rng)
        self.snapshot = trunk_snapshotter(env)
        self.trunk_step = 0
        self.stats: dict[str, float] = {}
        self._share_checked = False

    def before_trunk_step(self, last_obs: Any, episode_starts: np.ndarray) -> None:
        """Offer the trunk's current states to the rollout set (called before every trunk step)."""
        self.trunk.episode_time[np.asarray(episode_starts, dtype=bool)] = 0
        for index in range(self.env.num_envs):
            obs = {key: value[index] for key, value in last_obs.items()} if isinstance(last_obs, dict) else last_obs[index]
            self.trunk.offer(index, obs, functools.partial(self._take_state, index))
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
        self.trunk.size = self.settings.rollout_set_size(trunk_size, self.pool.size)
        self.trunk.reset()
        self.trunk_step = 0

    def branch(self) -> tuple[VineBatch, int]:
        """
        Run the branches of every rollout-set state (their statistics go to :attr:`stats`).

        :return: the :class:`~sb3_trpo_plus.buffers.VineBatch` of the rollout set and the number
            of environment steps the branches took
        """
        observations, taken = self.trunk.states()
        states = [state for state, _ in taken]
        noises = [noise for _, noise in taken]
        if isinstance(observations[0], dict):
            stacked: Any = {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
        else:
            stacked = np.stack(observations)
        obs_tensor = obs_as_tensor(stacked, self.policy.device)
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
            bootstrap_observations=_stack(bootstrap_obs) if bootstrap_obs else None,
            critic_observations=_stack(critic_obs) if critic_obs else None,
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
        }
        return batch, env_steps

    def close(self) -> None:
        """Release the branch environments."""
        self.pool.close()
