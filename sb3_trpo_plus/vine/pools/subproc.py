"""The subprocess branch pool, ``vine_kwargs['branch_vec_env']="subproc"``: the copies live in worker processes."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, ClassVar

import cloudpickle
import gymnasium as gym
import numpy as np

from sb3_trpo_plus.branch_pool import gather_steps, register_branch_pool
from sb3_trpo_plus.env_state import BranchableEnv, BranchWorkerError, WorkerFailure, raise_failure, wrapper_chain


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
        envs = [BranchableEnv.around(make_env()) for _ in range(count)]
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


class SubprocBranchPool:
    """
    K dedicated copies of the environment in worker processes, stepped side by side (see
    :class:`~sb3_trpo_plus.branch_pool.BranchPool`): copy k lives in worker k mod W, W =
    ``n_workers``, one worker per copy by default. An exception in a copy is raised in the caller
    as :class:`~sb3_trpo_plus.env_state.BranchWorkerError`, naming the environment and chained to
    the original exception.

    :param make_env: builds one copy (wrapped in :class:`~sb3_trpo_plus.env_state.BranchableEnv`
        if it is not); picklable with cloudpickle
    :param size: K, the number of copies
    :param n_workers: the number of worker processes (None: one per copy; at most K)
    """

    takes_workers: ClassVar[bool] = True

    def __init__(self, make_env: Callable[[], gym.Env], size: int, n_workers: int | None = None) -> None:
        self.size = size
        self.remotes: list[Connection] = []
        self.processes: list[Any] = []
        self.env_name = "the branch copy"
        self.n_workers = min(size, n_workers or size)
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
        return raise_failure(message, f"branch worker {index}")

    def chain(self) -> list[tuple[str, ...]]:
        """:func:`~sb3_trpo_plus.env_state.wrapper_chain` of copy 0."""
        self.remotes[0].send(("chain", None))
        chain: list[tuple[str, ...]] = self._receive(0)
        self.env_name = chain[-1][0]
        return chain

    def restore(self, state: Any, seeds: np.ndarray | None) -> None:
        """Put every copy into ``state``; with ``seeds``, give copy k a fresh random generator (no common random numbers)."""
        for worker, remote in enumerate(self.remotes):
            mine = [None if seeds is None else int(seeds[k]) for k in self._copies(worker)]
            remote.send(("restore", (state, mine)))
        for worker in range(len(self.remotes)):
            self._receive(worker)

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
        """
        Step the active copies only, each worker its own at once.

        :return: next observations (None for inactive copies), rewards, terminated and truncated flags
        """
        results: dict[int, Any] = {}
        asked: dict[int, list[int]] = {}
        for worker, remote in enumerate(self.remotes):
            mine = [(local, k) for local, k in enumerate(self._copies(worker)) if active[k]]
            if mine:
                remote.send(("step", [(local, actions[k]) for local, k in mine]))
                asked[worker] = [k for _, k in mine]
        for worker, copies in asked.items():
            results.update(zip(copies, self._receive(worker), strict=True))
        return gather_steps(self.size, results)

    def replayed_steps(self) -> int:
        """Simulator steps spent replaying snapshots (replay-based environments), summed over copies."""
        for remote in self.remotes:
            remote.send(("replayed_steps", None))
        return int(sum(self._receive(worker) for worker in range(len(self.remotes))))

    def close(self) -> None:
        """Stop the workers (they close their copies)."""
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


register_branch_pool("subproc", SubprocBranchPool)
