"""
The trunk's VecEnv wrappers, replayed on branch observations and rewards (:class:`VecWrappers`),
and the trunk's base VecEnv under them (:func:`base_vec_env`).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
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

from sb3_trpo_plus.env_state import UnbranchableEnvError

_VEC_WRAPPERS = (VecNormalize, VecMonitor, VecFrameStack, VecTransposeImage)


def base_vec_env(env: VecEnv) -> tuple[VecEnv, list[VecEnvWrapper]]:
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

    :param wrappers: the trunk's VecEnv wrappers, innermost first (see :func:`base_vec_env`)
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
