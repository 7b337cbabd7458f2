"""
State adapters: how the state of an *unwrapped* environment of one kind is saved and restored
(:class:`StateAdapter`), and the built-in ones (an environment's own ``get_state`` /
``set_state``, classic control's attributes, MuJoCo, ALE/Atari).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from sb3_trpo_plus.env_state.attributes import plain_attributes, set_attributes

# Quantities of mjData computed by mj_forward / mj_rnePostConstraint that an environment may read
# between steps. After mj_step they describe the positions *before* the last integration, so they
# are saved as they are rather than recomputed from the restored state.
_MUJOCO_DERIVED = tuple(
    (
        "xpos xquat xmat xipos ximat xiquat xanchor xaxis geom_xpos geom_xmat geom_xquat site_xpos site_xmat "
        "site_xquat cam_xpos cam_xmat light_xpos light_xdir subtree_com cdof cinert crb ten_length "
        "ten_velocity actuator_length actuator_velocity actuator_force cvel cdof_dot cacc cfrc_int cfrc_ext "
        "subtree_linvel subtree_angmom qfrc_bias qfrc_passive qfrc_spring qfrc_damper qfrc_gravcomp "
        "qfrc_fluid qfrc_actuator qfrc_smooth qacc_smooth qfrc_constraint qacc sensordata energy"
    ).split()
)


@runtime_checkable
class StateAdapter(Protocol):
    """
    Saves and restores the state of an *unwrapped* environment of one kind.

    The environment's random generator ``np_random`` and its wrappers are saved and restored by
    :func:`snapshot` / :func:`restore` themselves: an adapter handles the simulator only.
    """

    def save(self, env: gym.Env) -> Any:
        """
        Save the state of an unwrapped environment.

        :param env: the unwrapped environment
        :return: a picklable value holding the environment's full state (``np_random`` excepted),
            sharing no mutable object with the environment
        """
        ...

    def restore(self, env: gym.Env, state: Any) -> None:
        """
        Put an unwrapped environment into a saved state.

        :param env: the unwrapped environment: the one ``state`` was saved from, or another built the same way
        :param state: a value returned by :meth:`save`; it must not be modified (it may be restored again)
        """
        ...


class ProtocolAdapter:
    """For environments with their own ``get_state()`` / ``set_state(state)`` methods."""

    def save(self, env: gym.Env) -> Any:
        """
        :param env: the unwrapped environment
        :return: a copy of what ``env.get_state()`` returns
        """
        return copy.deepcopy(env.get_state())  # type: ignore[attr-defined]

    def restore(self, env: gym.Env, state: Any) -> None:
        """
        :param env: the unwrapped environment
        :param state: a value from :meth:`save` (a copy is passed to ``env.set_state``)
        """
        env.set_state(copy.deepcopy(state))  # type: ignore[attr-defined]


class AttributeAdapter:
    """Environments whose whole state is their own plain attributes (gymnasium's classic control)."""

    _SKIP: ClassVar[frozenset[str]] = frozenset({"_np_random", "screen", "clock", "viewer", "surf", "isopen"})

    def save(self, env: gym.Env) -> dict[str, Any]:
        """
        :param env: the unwrapped environment
        :return: copies of its attributes that are numbers, strings, arrays or containers of them
        """
        return plain_attributes(env, self._SKIP)

    def restore(self, env: gym.Env, state: dict[str, Any]) -> None:
        """
        :param env: the unwrapped environment
        :param state: a value from :meth:`save`
        """
        set_attributes(env, state)


@dataclass
class MujocoState:
    """
    The state of a gymnasium MuJoCo environment.

    :param integration: ``mj_getState(..., mjSTATE_INTEGRATION)``
    :param derived: the derived quantities of ``mjData`` that environments read between steps
    :param attributes: the environment's plain Python attributes
    """

    integration: np.ndarray
    derived: dict[str, np.ndarray]
    attributes: dict[str, Any]


class MujocoAdapter:
    """gymnasium's MuJoCo environments: the full integration state of ``mjData`` and what steps read from it."""

    _SKIP: ClassVar[frozenset[str]] = frozenset({"_np_random", "model", "data", "mujoco_renderer", "fullpath"})

    def save(self, env: gym.Env) -> MujocoState:
        """
        :param env: the unwrapped ``MujocoEnv``
        :return: its integration state, derived quantities and plain attributes
        """
        import mujoco

        model, data = env.model, env.data  # type: ignore[attr-defined]
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        integration = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, integration, spec)
        derived = {name: getattr(data, name).copy() for name in _MUJOCO_DERIVED if hasattr(data, name)}
        return MujocoState(integration, derived, plain_attributes(env, self._SKIP))

    def restore(self, env: gym.Env, state: MujocoState) -> None:
        """
        :param env: the unwrapped ``MujocoEnv``
        :param state: a value from :meth:`save`
        """
        import mujoco

        model, data = env.model, env.data  # type: ignore[attr-defined]
        mujoco.mj_setState(model, data, state.integration, mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(model, data)  # contacts and constraints consistent with the restored state
        for name, value in state.derived.items():
            getattr(data, name)[...] = value
        set_attributes(env, state.attributes)


class AtariAdapter:
    """ALE/Atari: the emulator's own state cloning, its random generator included."""

    def save(self, env: gym.Env) -> Any:
        """
        :param env: the unwrapped ``AtariEnv``
        :return: an ``ale_py.ALEState`` (picklable)
        """
        return env.ale.cloneState(include_rng=True)  # type: ignore[attr-defined]

    def restore(self, env: gym.Env, state: Any) -> None:
        """
        :param env: the unwrapped ``AtariEnv``
        :param state: a value from :meth:`save`
        """
        env.ale.restoreState(state)  # type: ignore[attr-defined]
