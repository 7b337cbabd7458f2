"""
What the run-time fidelity probe compares: one environment step of the trunk (:class:`Transition`),
the trunk's record around a probed state (:class:`ProbeRecord`), the largest difference between
two steps (:func:`largest_difference`) and the tolerance per kind of environment
(:func:`fidelity_tolerance`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from sb3_trpo_plus.env_state.adapters import MujocoState


@dataclass
class Transition:
    """
    One environment step as the environment returned it (before any VecEnv auto-reset).

    :param observation: the next observation
    :param reward: the reward
    :param terminated: the termination flag
    :param truncated: the truncation flag
    """

    observation: Any
    reward: float
    terminated: bool
    truncated: bool

    @classmethod
    def of(cls, step: tuple[Any, Any, Any, Any, Any]) -> Transition:
        """:param step: the 5-tuple a gymnasium ``step`` returns"""
        obs, reward, terminated, truncated, _ = step
        return cls(copy.deepcopy(obs), float(reward), bool(terminated), bool(truncated))


@dataclass
class ProbeRecord:
    """
    The trunk's side of one probe: a snapshot of a trunk environment, the action the trunk took
    there and what the environment returned.

    :param snapshot: the trunk environment's snapshot at the probed state (an
        :class:`~sb3_trpo_plus.env_state.EnvSnapshot`)
    :param observations: for an environment branched by replay, every observation of the episode
        up to the probed state (the reset's first), as the unwrapped environment returned them;
        None when they were not recorded
    :param action: the action the trunk took at the probed state (None until it stepped)
    :param outcome: what the environment returned (None until it stepped)
    """

    snapshot: Any
    observations: list[Any] | None = None
    action: Any = None
    outcome: Transition | None = None


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """The arrays of an observation (an array, or a dict / tuple of them), with their paths."""
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _leaves(value[key], f"{prefix}[{key!r}]")]
    if isinstance(value, tuple):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, f"{prefix}[{index}]")]
    return [(prefix, value)]


def observation_difference(expected: Any, got: Any) -> tuple[float, str]:
    """
    The largest absolute difference between two observations, and where it is.

    :return: (difference, "observation" followed by the element's path and index); infinite when
        the structures, shapes or dtypes kinds differ
    """
    largest, where = 0.0, "observation"
    expected_leaves, got_leaves = _leaves(expected), _leaves(got)
    if [path for path, _ in expected_leaves] != [path for path, _ in got_leaves]:
        return float("inf"), "observation structure"
    for (path, a), (_, b) in zip(expected_leaves, got_leaves, strict=True):
        a_array, b_array = np.asarray(a), np.asarray(b)
        if a_array.shape != b_array.shape:
            return float("inf"), f"observation{path} shape ({a_array.shape} vs {b_array.shape})"
        if a_array.size == 0:
            continue
        if a_array.dtype.kind in "biuf" and b_array.dtype.kind in "biuf":
            delta = np.abs(a_array.astype(np.float64) - b_array.astype(np.float64))
            delta = np.where(np.isnan(delta) & (np.isnan(a_array) & np.isnan(b_array)), 0.0, delta)
            delta = np.where(np.isnan(delta), np.inf, delta)
        else:
            delta = np.where(a_array != b_array, np.inf, 0.0)
        position = int(np.argmax(delta))
        if float(delta.flat[position]) > largest:
            index = [int(i) for i in np.unravel_index(position, a_array.shape)] if a_array.shape else []
            largest, where = float(delta.flat[position]), f"observation{path}{index if index else ''}"
    return largest, where


def largest_difference(expected: Transition, got: Transition) -> tuple[float, str]:
    """
    The largest difference between the trunk's step and a branch copy's, and which quantity it is
    in: the observation's largest absolute difference, the reward's, and 1.0 for a termination or
    truncation flag that differs.

    :return: (difference, the quantity's name)
    """
    candidates = [
        observation_difference(expected.observation, got.observation),
        (abs(expected.reward - got.reward) if not (np.isnan(expected.reward) and np.isnan(got.reward)) else 0.0, "reward"),
        (float(expected.terminated != got.terminated), "terminated"),
        (float(expected.truncated != got.truncated), "truncated"),
    ]
    difference, quantity = max(candidates, key=lambda item: item[0])
    if np.isnan(difference):
        return float("inf"), quantity
    return difference, quantity


#: the largest difference the probe accepts, by the kind of state the snapshot holds. MuJoCo is
#: exact too: restoring mjSTATE_INTEGRATION (and the derived quantities) reproduces the next step
#: bit for bit in the same process; measured on every step of 150-step random walks of Hopper,
#: HalfCheetah, Walker2d, Ant, Humanoid, InvertedDoublePendulum, Swimmer and Reacher (v5)
FIDELITY_TOLERANCES: dict[str, float] = {"mujoco": 0.0, "exact": 0.0}


def fidelity_tolerance(snapshot: Any) -> float:
    """
    The largest difference the probe accepts for an environment: 0 (bit-exact) for every kind the
    package ships (classic control, Atari's emulator, replay, MuJoCo's full integration state;
    see :data:`FIDELITY_TOLERANCES`).

    :param snapshot: a snapshot of the environment (an :class:`~sb3_trpo_plus.env_state.EnvSnapshot`)
    """
    if isinstance(snapshot.env_state, MujocoState):
        return FIDELITY_TOLERANCES["mujoco"]
    return FIDELITY_TOLERANCES["exact"]
