"""
Environments with noisy dynamics, for measuring what common random numbers buy vine sampling.

Gymnasium's classic-control and MuJoCo tasks are deterministic after ``reset()``: the only noise a
branch rollout sees is the policy's own. These variants add disturbances to the dynamics, drawn at
every step from the environment's own ``np_random``, so that a snapshot (which saves that
generator) reproduces the noise exactly, and the K branches of one state share it under common
random numbers (``vine_kwargs["common_random_numbers"]``):

- ``NoisyCartPole-v1``: the push force is ``force_mag * (1 + noise * z)``, z ~ N(0, 1) per step;
- ``NoisyAcrobot-v1``: the torque gets uniform noise in ``[-noise, noise]`` (Acrobot's own
  ``torque_noise_max``, which gymnasium leaves at 0);
- ``NoisyPendulum-v1``: the torque gets ``noise * max_torque * z`` before Pendulum's own clipping
  to ``[-max_torque, max_torque]`` (the motor's limit bounds the disturbed torque too);
- ``NoisyHopper-v5``: each action component gets ``noise * z`` before MuJoCo clamps it to the
  actuators' control range.

``noise`` is a constructor argument (``gym.make("NoisyPendulum-v1", noise=0.3)``; 0 gives the
original task step for step, resets included). Importing this module registers the ids; without importing it,
``gym.make("sb3_trpo_plus.noisy_envs:NoisyCartPole-v1")`` imports it first.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control import AcrobotEnv, CartPoleEnv, PendulumEnv
from gymnasium.utils import EzPickle

try:  # MuJoCo is an extra (bench, test): without it there is no NoisyHopper-v5
    from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
except ImportError:  # pragma: no cover - the test environment has MuJoCo
    HopperEnv = None  # type: ignore[assignment,misc]

#: id -> (entry point, time limit, default noise level)
NOISY_ENVS: dict[str, tuple[str, int, float]] = {
    "NoisyCartPole-v1": (f"{__name__}:NoisyCartPoleEnv", 500, 0.3),
    "NoisyAcrobot-v1": (f"{__name__}:NoisyAcrobotEnv", 500, 0.5),
    "NoisyPendulum-v1": (f"{__name__}:NoisyPendulumEnv", 200, 0.2),
    "NoisyHopper-v5": (f"{__name__}:NoisyHopperEnv", 1000, 0.1),
}


def _check_noise(noise: float) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (0.0 <= noise < float("inf")):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return float(noise)


class _PlainState:
    """
    The ``get_state()`` / ``set_state(state)`` protocol that vine sampling saves and restores
    environments through (their ``np_random`` is saved beside it), over the attributes named in
    ``STATE``.
    """

    STATE: ClassVar[tuple[str, ...]] = ()

    def get_state(self) -> dict[str, Any]:
        """:return: copies of the attributes that change while the environment steps"""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.STATE}

    def set_state(self, state: dict[str, Any]) -> None:
        """:param state: a value from :meth:`get_state`"""
        for name, value in state.items():
            setattr(self, name, copy.deepcopy(value))


class NoisyCartPoleEnv(_PlainState, CartPoleEnv):
    """
    CartPole whose push force is scaled by ``1 + noise * z`` at every step, z ~ N(0, 1) from ``np_random``.

    :param noise: standard deviation of the relative force disturbance, >= 0
    """

    STATE = ("state", "steps_beyond_terminated")

    def __init__(self, noise: float = NOISY_ENVS["NoisyCartPole-v1"][2], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise = _check_noise(noise)
        self.nominal_force_mag = self.force_mag

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.noise:  # no draw at noise 0: the generator, and so every reset, stays the original task's
            self.force_mag = self.nominal_force_mag * (1.0 + self.noise * float(self.np_random.standard_normal()))
        return super().step(action)


class NoisyAcrobotEnv(_PlainState, AcrobotEnv):
    """
    Acrobot with uniform torque noise in ``[-noise, noise]`` at every step, from ``np_random``.

    :param noise: half-width of the torque disturbance, >= 0 (the torques are -1, 0, 1)
    """

    STATE = ("state",)

    def __init__(self, noise: float = NOISY_ENVS["NoisyAcrobot-v1"][2], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise = _check_noise(noise)
        self.torque_noise_max = self.noise


class NoisyPendulumEnv(_PlainState, PendulumEnv):
    """
    Pendulum whose torque gets ``noise * max_torque * z`` at every step, z ~ N(0, 1) from ``np_random``.

    :param noise: standard deviation of the torque disturbance relative to ``max_torque``, >= 0
    """

    STATE = ("state", "last_u")

    def __init__(self, noise: float = NOISY_ENVS["NoisyPendulum-v1"][2], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.noise = _check_noise(noise)

    def step(self, u: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if not self.noise:  # no draw at noise 0: the generator, and so every reset, stays the original task's
            return super().step(u)
        u = np.asarray(u)
        disturbance = self.noise * self.max_torque * self.np_random.standard_normal(u.shape)
        return super().step(u + disturbance.astype(u.dtype))  # in the action's dtype, as the original task computes


if HopperEnv is not None:

    class NoisyHopperEnv(HopperEnv):
        """
        Hopper whose actions get ``noise * z`` per component at every step, z ~ N(0, 1) from ``np_random``
        (saved and restored with the MuJoCo state by vine sampling's MuJoCo adapter).

        :param noise: standard deviation of the action disturbance (the control range is [-1, 1]), >= 0
        """

        def __init__(self, noise: float = NOISY_ENVS["NoisyHopper-v5"][2], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.noise = _check_noise(noise)
            EzPickle.__init__(self, noise=noise, **kwargs)  # copies are rebuilt with this class's arguments

        def step(self, action: np.ndarray) -> tuple[np.ndarray, np.float64, bool, bool, dict[str, np.float64]]:
            if not self.noise:  # no draw at noise 0: the generator, and so every reset, stays the original task's
                return super().step(action)
            action = np.asarray(action)
            disturbance = self.noise * self.np_random.standard_normal(action.shape)
            return super().step(action + disturbance.astype(action.dtype))  # in the action's dtype


def register_noisy_envs() -> None:
    """Register the ids of :data:`NOISY_ENVS` with gymnasium (once; called when this module is imported)."""
    for env_id, (entry_point, max_episode_steps, _) in NOISY_ENVS.items():
        if env_id == "NoisyHopper-v5" and HopperEnv is None:
            continue
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point, max_episode_steps=max_episode_steps)


register_noisy_envs()
