"""
Which environments can be branched, and how: the registered adapters and replay types, the
built-in rules (:func:`find_adapter`, :func:`find_replay_type`) and the check made at
construction (:func:`check_branchable`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import gymnasium as gym

from sb3_trpo_plus.env_state.adapters import AtariAdapter, AttributeAdapter, MujocoAdapter, ProtocolAdapter, StateAdapter
from sb3_trpo_plus.env_state.errors import UnbranchableEnvError
from sb3_trpo_plus.env_state.layers import describe

_CLASSIC_CONTROL = frozenset({"CartPoleEnv", "PendulumEnv", "AcrobotEnv", "MountainCarEnv", "Continuous_MountainCarEnv"})

_BOX2D = frozenset({"LunarLander", "BipedalWalker", "CarRacing"})


@dataclass
class ReplayType:
    env_type: type
    rebuild: bool


_ADAPTERS: list[tuple[type, StateAdapter]] = []

_REPLAY_TYPES: list[ReplayType] = []


def register_state_adapter(env_type: type[gym.Env], adapter: StateAdapter) -> None:
    """
    Make environments of ``env_type`` (subclasses included) branchable with ``adapter``, which
    saves and restores the unwrapped environment's own state; the random generator ``np_random``
    and the wrappers are handled by :func:`snapshot` and :func:`restore`. A registered adapter
    takes precedence over every built-in one, and later registrations over earlier ones.

    :param env_type: class of the unwrapped environments the adapter applies to
    :param adapter: an object with ``save(env) -> state`` and ``restore(env, state)`` (see :class:`StateAdapter`)
    """
    if not isinstance(adapter, StateAdapter):
        raise TypeError(f"a state adapter needs save(env) and restore(env, state) methods, got {adapter!r}")
    _ADAPTERS.insert(0, (env_type, adapter))


def register_replay_env(env_type: type[gym.Env], rebuild: bool = False) -> None:
    """
    Make environments of ``env_type`` (subclasses included) branchable by replay (see the module
    documentation): only valid when the environment is deterministic given its ``np_random`` and
    the actions, with no other source of randomness and no state carried across ``reset()``
    (or ``rebuild=True``).

    :param env_type: class of the unwrapped environments
    :param rebuild: rebuild the environment in place (``type(env).__init__`` with its spec's keyword
        arguments, or else its attributes of the same names) at every reset, for simulators whose
        history changes how they step (as Box2D's world does)
    """
    _REPLAY_TYPES.insert(0, ReplayType(env_type, rebuild))


def _class_names(env: gym.Env) -> set[str]:
    return {cls.__name__ for cls in type(env).__mro__}


def _has_protocol(env: gym.Env) -> bool:
    get_state, set_state = getattr(env, "get_state", None), getattr(env, "set_state", None)
    if not (callable(get_state) and callable(set_state)):
        return False
    try:  # gymnasium's MujocoEnv has set_state(qpos, qvel): not the protocol
        inspect.signature(set_state).bind(None)
        inspect.signature(get_state).bind()
    except (TypeError, ValueError):
        return False
    return True


def find_adapter(env: gym.Env) -> StateAdapter | None:
    """
    The adapter that saves and restores an unwrapped environment.

    :param env: the unwrapped environment
    :return: its adapter, or None when it can only be replayed (see :func:`needs_replay`) or not branched at all
    """
    for env_type, adapter in _ADAPTERS:
        if isinstance(env, env_type):
            return adapter
    if _has_protocol(env):
        return ProtocolAdapter()
    names = _class_names(env)
    if "MujocoEnv" in names and hasattr(env, "model") and hasattr(env, "data"):
        return MujocoAdapter()
    if "AtariEnv" in names and hasattr(env, "ale"):
        return AtariAdapter()
    if type(env).__module__.startswith("gymnasium.envs.classic_control") and names & _CLASSIC_CONTROL:
        return AttributeAdapter()
    return None


def find_replay_type(env: gym.Env) -> ReplayType | None:
    for replay_type in _REPLAY_TYPES:
        if isinstance(env, replay_type.env_type):
            return replay_type
    if type(env).__module__.startswith("gymnasium.envs.box2d") and _class_names(env) & _BOX2D:
        return ReplayType(type(env), rebuild=True)
    return None


def needs_replay(env: gym.Env) -> bool:
    """
    Whether an environment is branched by replay (and so must be wrapped in :class:`BranchableEnv`
    before its episode starts for snapshots to be possible).

    :param env: the environment (wrapped or not)
    :return: True when no adapter applies and its unwrapped environment is a replay type
    """
    unwrapped = env.unwrapped
    return find_adapter(unwrapped) is None and find_replay_type(unwrapped) is not None


def check_branchable(env: gym.Env) -> None:
    """
    Check that ``env`` can be snapshotted and restored. Cheap (it looks at types only) and does
    not touch the environment's state. An environment branched by replay passes: it is
    branchable once wrapped in :class:`BranchableEnv` (the vine sampler does that for the
    environments of a DummyVecEnv; with a SubprocVecEnv, build the environments with
    ``wrapper_class=BranchableEnv``); :func:`snapshot` says so if the wrapper is missing.

    :param env: the environment (wrapped or not)
    :raises UnbranchableEnvError: naming the environment's class and id, and how to add support
    """
    unwrapped = env.unwrapped
    if find_adapter(unwrapped) is not None or find_replay_type(unwrapped) is not None:
        return
    raise UnbranchableEnvError(
        f"sampling='vine' cannot save and restore the state of {describe(env)}. Make it branchable by "
        "giving the environment class get_state() and set_state(state) methods that capture its full state "
        "(its np_random and its wrappers are saved separately), or by "
        "sb3_trpo_plus.env_state.register_state_adapter(YourEnvClass, adapter) with an adapter that has "
        "save(env) -> state and restore(env, state) methods, or, if it is deterministic given its np_random "
        "and the actions, by sb3_trpo_plus.env_state.register_replay_env(YourEnvClass)."
    )
