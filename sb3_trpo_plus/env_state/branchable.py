"""The branchable wrapper (:class:`BranchableEnv`): snapshots and restores through ``get_state`` / ``set_state``."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym

from sb3_trpo_plus.env_state.copies import pickled_branch_copy, wrapper_chain
from sb3_trpo_plus.env_state.failures import WorkerFailure
from sb3_trpo_plus.env_state.fidelity import ProbeRecord, Transition
from sb3_trpo_plus.env_state.layers import InternalWrapper, wrappers_of
from sb3_trpo_plus.env_state.registry import check_branchable, find_replay_type, needs_replay
from sb3_trpo_plus.env_state.replay import ReplayRecorder, find_recorder
from sb3_trpo_plus.env_state.snapshots import EnvSnapshot, restore, snapshot


class BranchableEnv(InternalWrapper):
    """
    A transparent wrapper with ``get_state()`` and ``set_state(state)``, so that whoever holds the
    environment (a DummyVecEnv, or a SubprocVecEnv through ``env_method("get_state")``) can
    snapshot and restore it: ``get_state()`` is :func:`snapshot` and ``set_state(state)`` is
    :func:`restore` on the wrapped environment (wrappers outside this one are not saved, so make
    it the outermost). For an environment branched by replay, it inserts the recorder that replay
    needs at the bottom of the wrapper chain (between the unwrapped environment and its innermost
    wrapper); snapshots are possible from the first ``reset()`` after wrapping.

    The vine sampler inserts it into the environments of a DummyVecEnv itself; with a
    SubprocVecEnv add it when building the environments:
    ``make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv)``.
    Then trunk environment ``i`` is snapshotted by ``dummy_vec_env.envs[i].get_state()`` or
    ``subproc_vec_env.env_method("get_state", indices=[i])[0]`` and restored by ``set_state(snap)``
    on this or any identically built copy (a copy may lack the trunk's ``Monitor``). Restoring a replayed environment
    costs a rebuild plus one simulator step per step of the episode so far
    (:attr:`replayed_steps`).

    :param env: the environment to make branchable
    :raises UnbranchableEnvError: if ``env`` cannot be branched
    """

    @classmethod
    def around(cls, env: gym.Env) -> BranchableEnv:
        """:return: ``env`` if it is a :class:`BranchableEnv`, else ``env`` wrapped in one"""
        return env if isinstance(env, BranchableEnv) else cls(env)

    def __init__(self, env: gym.Env) -> None:
        check_branchable(env)
        replay_type = find_replay_type(env.unwrapped) if needs_replay(env) else None
        if replay_type is not None and find_recorder(env) is None:
            chain = wrappers_of(env)
            if chain:
                chain[-1].env = ReplayRecorder(chain[-1].env, replay_type.rebuild)
            else:
                env = ReplayRecorder(env, replay_type.rebuild)
        super().__init__(env)
        self._probe: ProbeRecord | None = None  # armed, waiting for the next step
        self._probe_done: ProbeRecord | None = None  # stepped, waiting for probe_record()

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        result = self.env.step(action)
        if self._probe is not None:  # armed by arm_probe(): keep this one step for the fidelity probe
            self._probe.action, self._probe.outcome = copy.deepcopy(action), Transition.of(result)
            self._probe_done, self._probe = self._probe, None
        return result

    def watch_replay(self, watch: bool) -> None:
        """
        Keep (or stop keeping) every observation of a replayed environment's episodes, which the
        fidelity probe compares with a replay's (nothing for an environment not branched by replay).
        """
        recorder = find_recorder(self.env)
        if recorder is not None:
            recorder.watch = watch

    def arm_probe(self) -> None:
        """
        Snapshot the current state for vine's fidelity probe and keep the next step's action and
        outcome (see :meth:`probe_record`); costs nothing until called.
        """
        recorder = find_recorder(self.env)
        observations = None if recorder is None or recorder.observations is None else list(recorder.observations)
        self._probe = ProbeRecord(self.get_state(), observations)
        self._probe_done = None

    def probe_record(self) -> ProbeRecord | None:
        """:return: the record of the last :meth:`arm_probe` once the environment stepped (then forgotten), else None"""
        record, self._probe_done = self._probe_done, None
        return record

    @property
    def replayed_steps(self) -> int:
        """Simulator steps spent replaying episodes to restore snapshots (0 unless branched by replay)."""
        recorder = find_recorder(self.env)
        return 0 if recorder is None else recorder.replayed_steps

    def get_state(self) -> EnvSnapshot:
        """
        :return: a snapshot of the wrapped environment's current state (see :func:`snapshot`)
        """
        return snapshot(self.env)

    def set_state(self, state: EnvSnapshot) -> None:
        """
        :param state: a snapshot from :meth:`get_state` on this or an identically built environment (see :func:`restore`)
        """
        restore(self.env, state)

    def wrapper_chain(self) -> list[tuple[str, ...]]:
        """:return: :func:`wrapper_chain` of this environment (callable through ``SubprocVecEnv.env_method``)"""
        return wrapper_chain(self)

    def branch_copy_blob(self) -> bytes:
        """:return: a cloudpickled :func:`branch_copy` of this environment (callable through ``SubprocVecEnv.env_method``)"""
        return pickled_branch_copy(self)

    def guarded_call(self, method: str, *args: Any) -> Any:
        """
        Call one of this wrapper's methods and return its result, or a :class:`WorkerFailure`
        instead of raising: an exception raised in a SubprocVecEnv worker kills it and reaches
        the main process as a bare ``EOFError``; a returned failure names the environment and the
        original exception.

        :param method: the method's name
        :param args: its arguments
        :return: its result, or a :class:`WorkerFailure`
        """
        try:
            return getattr(self, method)(*args)
        except Exception as error:
            return WorkerFailure.capture(self, method, error)
