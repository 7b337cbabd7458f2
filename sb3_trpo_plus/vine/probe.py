"""
The run-time fidelity probe (:class:`FidelityProbe`): at the first iteration and then every
``vine_kwargs['fidelity_probe']`` iterations, a branch copy is restored to one trunk state and
given the action the trunk took there; its step must be the trunk's (observation, reward,
termination, truncation), and for an environment branched by replay every replayed observation
must be the one the trunk saw. A difference raises
:class:`~sb3_trpo_plus.env_state.BranchFidelityError` (or warns) before the branches' Q-values
reach a policy step.

The trunk's side is kept by its :class:`~sb3_trpo_plus.env_state.BranchableEnv`: armed at the
probed state, it snapshots it and keeps the one step that follows, as the environment returned it
(before the VecEnv's auto-reset, so a terminal step is compared with its real last observation).
Nothing is kept at the other steps. The probe runs on a copy of its own: it never steps an
environment of the trunk or of the branch pool, and it draws the state it probes from a generator
of its own, so training is the same with or without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sb3_trpo_plus.env_state import (
    BranchableEnv,
    BranchFidelityError,
    ProbeRecord,
    Transition,
    fidelity_tolerance,
    largest_difference,
    raise_failure,
)
from sb3_trpo_plus.env_state.fidelity import observation_difference
from sb3_trpo_plus.env_state.replay import find_recorder
from sb3_trpo_plus.vine.wrappers import base_vec_env

#: what usually makes a restored copy leave the trunk's trajectory (in the error's text)
LIKELY_CAUSES = (
    "Likely causes: the environment draws random numbers from a generator that snapshots do not hold (NumPy's "
    "global np.random, Python's random, torch, or a generator of its own: draw from self.np_random instead), or "
    "its get_state()/set_state() or its registered state adapter misses part of its state (a counter, a cached "
    "array, a flag); an environment registered with register_replay_env must be deterministic given its "
    "np_random and the actions."
)


class FidelityProbe:
    """
    Checks, now and then, that a branch copy restored to a trunk state reproduces the trunk.

    :param every: probe at the first iteration and then every that many iterations (0: never)
    :param action: "raise" a :class:`~sb3_trpo_plus.env_state.BranchFidelityError` on a
        difference, or "warn"
    :param env: the training VecEnv (the trunk)
    :param make_copy: builds one branch copy of the trunk's environment (the pool's factory)
    :param seed: seed of the probe's own generator (which trunk state it probes)
    """

    def __init__(self, every: int, action: str, env: VecEnv, make_copy: Callable[[], gym.Env], seed: int | None) -> None:
        self.every = every
        self.action = action
        self.base = base_vec_env(env)[0]
        self.n_envs = env.num_envs
        self.make_copy = make_copy
        self.rng = np.random.default_rng(None if seed is None else [int(seed) % 2**32, 27])
        self.iteration = 0
        self.count = 0
        self.max_diff = 0.0
        self.mismatches = 0
        self.planned: tuple[int, int] | None = None  # (trunk step, trunk environment) of this iteration's probe
        self.armed: int | None = None  # the trunk environment armed this iteration
        self.copy: gym.Env | None = None
        if every > 0:
            self._call_all("watch_replay", True)

    @property
    def enabled(self) -> bool:
        """Whether the probe ever runs."""
        return self.every > 0

    def _call(self, index: int, method: str, *args: Any) -> Any:
        if isinstance(self.base, DummyVecEnv):
            return getattr(self.base.envs[index], method)(*args)
        result = self.base.env_method("guarded_call", method, *args, indices=[index])[0]
        return raise_failure(result, f"trunk environment {index}")

    def _call_all(self, method: str, *args: Any) -> None:
        for index in range(self.n_envs):
            self._call(index, method, *args)

    def start_iteration(self, n_steps: int) -> None:
        """Plan this iteration's probe (at the first iteration and every :attr:`every`-th after it)."""
        self.iteration += 1
        self.armed = None
        self.planned = None
        if self.every > 0 and (self.iteration - 1) % self.every == 0 and n_steps > 0:
            self.planned = (int(self.rng.integers(n_steps)), int(self.rng.integers(self.n_envs)))

    def before_step(self, step: int) -> None:
        """Arm the planned trunk environment before trunk step ``step`` (of this iteration)."""
        if self.planned is not None and step == self.planned[0]:
            self._call(self.planned[1], "arm_probe")
            self.armed = self.planned[1]

    def check(self) -> None:
        """
        Run this iteration's probe, if one was armed and the trunk stepped past it.

        :raises BranchFidelityError: on a difference larger than the environment's tolerance
            (with ``action="warn"``: a warning instead)
        """
        if self.armed is None or self.planned is None:
            return
        index, self.armed = self.armed, None
        record: ProbeRecord | None = self._call(index, "probe_record")
        if record is None or record.outcome is None:  # the rollout stopped before the probed step
            return
        difference, problem = self._run(record)
        self.count += 1
        self.max_diff = max(self.max_diff, difference)
        tolerance = fidelity_tolerance(record.snapshot)
        if difference <= tolerance:
            return
        self.mismatches += 1
        message = (
            f"vine's fidelity probe: a branch copy of {record.snapshot.env_class} restored to the state of trunk "
            f"environment {index} at step {self.planned[0]} of iteration {self.iteration}, and given the action the "
            f"trunk took there, did not reproduce the trunk: {problem} (tolerance {tolerance:g}). The branches' "
            f"Q-values would be estimated on other trajectories than the trunk's. {LIKELY_CAUSES} "
            "(vine_kwargs['fidelity_probe_action']='warn' logs this instead of raising.)"
        )
        if self.action == "raise":
            raise BranchFidelityError(message)
        warnings.warn(message, UserWarning, stacklevel=3)

    def _run(self, record: ProbeRecord) -> tuple[float, str]:
        """Restore the probe's copy, replaying if need be, step it; the largest difference and its description."""
        if self.copy is None:
            self.copy = BranchableEnv.around(self.make_copy())
        recorder = find_recorder(self.copy)
        if recorder is not None:
            recorder.watch = record.observations is not None
        self.copy.set_state(record.snapshot)  # type: ignore[attr-defined]
        largest, problem = 0.0, ""
        replayed = None if recorder is None else recorder.observations
        if record.observations is not None and replayed is not None and len(replayed) == len(record.observations):
            tolerance = fidelity_tolerance(record.snapshot)
            for position, (seen, again) in enumerate(zip(record.observations, replayed, strict=True)):
                difference, where = observation_difference(seen, again)
                if difference > largest:
                    largest = difference
                    problem = f"replaying the episode, the {where} of its step {position} differs by {difference:.6g}"
                if difference > tolerance:
                    return largest, problem + " from the trunk's (the replay left the trunk's trajectory there)"
        outcome = Transition.of(self.copy.step(record.action))
        assert record.outcome is not None
        difference, quantity = largest_difference(record.outcome, outcome)
        if difference > largest or not problem:
            largest = max(largest, difference)
            problem = (
                f"the largest difference is {difference:.6g} in the {quantity} of the step after the state "
                f"(trunk: {_show(record.outcome, quantity)}, branch copy: {_show(outcome, quantity)})"
            )
        return largest, problem

    def stats(self) -> dict[str, float]:
        """The probe's statistics for the log (none when it never runs)."""
        if not self.enabled:
            return {}
        return {"branch_probe_count": float(self.count), "branch_probe_max_diff": float(self.max_diff)}

    def close(self) -> None:
        """Close the probe's copy."""
        if self.copy is not None:
            self.copy.close()
            self.copy = None


def _show(step: Transition, quantity: str) -> str:
    """The value of ``quantity`` in a step, short (observations are summarised by their shape)."""
    if quantity in ("reward", "terminated", "truncated"):
        return repr(getattr(step, quantity))
    observation = step.observation
    if isinstance(observation, np.ndarray) and observation.size <= 8:
        return np.array2string(observation, precision=6)
    return f"an observation of shape {np.shape(observation)}" if isinstance(observation, np.ndarray) else "an observation"
