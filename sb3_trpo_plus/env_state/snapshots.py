"""
Snapshots: the complete state of an environment and its wrappers (:class:`EnvSnapshot`), taken
by :func:`snapshot` and put back by :func:`restore`.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
import types
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym

from sb3_trpo_plus.env_state.attributes import NOT_PLAIN, STRUCTURAL, copy_plain, get_rng, set_attributes, set_rng
from sb3_trpo_plus.env_state.errors import UnbranchableEnvError
from sb3_trpo_plus.env_state.layers import describe, is_internal, lineage, qualified, wrappers_of
from sb3_trpo_plus.env_state.registry import check_branchable, find_adapter
from sb3_trpo_plus.env_state.replay import find_recorder


@dataclass
class EnvSnapshot:
    """
    The complete state of an environment and its wrappers (picklable).

    :param env_class: qualified name of the unwrapped environment's class
    :param kind: "adapter" (``env_state`` comes from a :class:`StateAdapter`) or "replay"
        (``env_state`` is a :class:`ReplayLog`)
    :param env_state: the unwrapped environment's state
    :param rng_state: the unwrapped environment's ``np_random`` bit-generator state (None if it had none yet)
    :param rng_seed: the unwrapped environment's ``_np_random_seed``
    :param wrappers: (qualified names of the wrapper's class and of the wrapper classes it derives
        from, saved attributes) of every wrapper, outermost first
    """

    env_class: str
    kind: Literal["adapter", "replay"]
    env_state: Any
    rng_state: dict[str, Any] | None
    rng_seed: int | None
    wrappers: list[tuple[tuple[str, ...], dict[str, Any]]]


def _is_configuration(value: Any) -> bool:
    """Values that are not state: environments, spaces, functions, classes, modules, files."""
    return isinstance(
        value,
        (
            gym.Env,
            gym.spaces.Space,
            types.FunctionType,
            types.BuiltinFunctionType,
            types.MethodType,
            functools.partial,
            type,
            types.ModuleType,
            io.IOBase,
        ),
    )


def _wrapper_state(wrapper: gym.Wrapper) -> dict[str, Any]:
    state = {}
    for key, value in vars(wrapper).items():
        if key in STRUCTURAL or _is_configuration(value):
            continue
        copied = copy_plain(value)
        if copied is NOT_PLAIN:
            try:  # a pickle round trip copies, and proves the snapshot picklable
                copied = pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            except Exception:  # handles (files, sockets, renderers) and functions are not state
                continue
        state[key] = copied
    return state


def snapshot(env: gym.Env) -> EnvSnapshot:
    """
    Save the complete state of ``env``: unwrapped environment, its ``np_random`` and every wrapper.

    :param env: the environment (wrapped or not). An environment branched by replay must contain
        a :class:`BranchableEnv` that saw the current episode's ``reset()``
    :return: a picklable snapshot, to be restored with :func:`restore` on ``env`` or on another
        environment built the same way
    :raises UnbranchableEnvError: if ``env`` cannot be snapshotted
    """
    unwrapped = env.unwrapped
    adapter = find_adapter(unwrapped)
    if adapter is not None:
        kind: Literal["adapter", "replay"] = "adapter"
        env_state = adapter.save(unwrapped)
    else:
        check_branchable(env)
        recorder = find_recorder(env)
        if recorder is None:
            raise UnbranchableEnvError(
                f"{describe(env)} is branched by replay, which needs the recording done by "
                "sb3_trpo_plus.env_state.BranchableEnv: wrap the environment in it before its episode starts "
                "(with a SubprocVecEnv: make_vec_env(..., wrapper_class=BranchableEnv))"
            )
        if recorder.log is None:
            raise UnbranchableEnvError(
                f"{describe(env)} is branched by replay and its current episode began before it was wrapped in "
                "BranchableEnv: there is nothing to replay; snapshots are possible after the next reset()"
            )
        kind = "replay"
        env_state = copy.deepcopy(recorder.log)
    rng_state, rng_seed = get_rng(unwrapped)
    wrappers = [(lineage(w), _wrapper_state(w)) for w in wrappers_of(env) if not is_internal(w)]
    return EnvSnapshot(qualified(unwrapped), kind, env_state, rng_state, rng_seed, wrappers)


def restore(env: gym.Env, snap: EnvSnapshot) -> None:
    """
    Put ``env`` into the state saved in ``snap`` (which is not modified, and can be restored again).

    Wrappers are matched by class, outermost first, in order: a wrapper of ``env`` with no
    counterpart in the snapshot keeps its state, and the state of a snapshot's wrapper that
    ``env`` lacks is ignored (so a branch copy built without SB3's ``Monitor`` can take a
    snapshot of a monitored trunk).

    :param env: the environment the snapshot was taken from, or another built the same way
    :param snap: a snapshot from :func:`snapshot` or :meth:`BranchableEnv.get_state`
    :raises ValueError: if the snapshot is of another kind of environment
    :raises UnbranchableEnvError: if ``env`` cannot be restored (a replayed environment without :class:`BranchableEnv`)
    """
    unwrapped = env.unwrapped
    if snap.env_class != qualified(unwrapped):
        raise ValueError(f"a snapshot of {snap.env_class} cannot be restored onto {qualified(unwrapped)}")
    if snap.kind == "adapter":
        adapter = find_adapter(unwrapped)
        if adapter is None:
            raise UnbranchableEnvError(f"no state adapter for {describe(env)} (was it registered in this process?)")
        adapter.restore(unwrapped, snap.env_state)
    else:
        recorder = find_recorder(env)
        if recorder is None:
            raise UnbranchableEnvError(
                f"{describe(env)} is restored by replay, which needs sb3_trpo_plus.env_state.BranchableEnv around it"
            )
        recorder.replay(snap.env_state)
    if snap.rng_state is not None:
        set_rng(unwrapped, snap.rng_state, snap.rng_seed)
    saved = list(snap.wrappers)
    for wrapper in wrappers_of(env):
        if is_internal(wrapper):
            continue
        classes = lineage(wrapper)
        for position, (saved_lineage, state) in enumerate(saved):
            # the same wrapper class in both lineages (generic bases excluded): rl_zoo3, once
            # imported, makes gym.make build its PatchedTimeLimit (a TimeLimit) where a
            # subprocess without it builds TimeLimit, or another TimeLimit subclass
            if set(saved_lineage) & set(classes):
                set_attributes(wrapper, state)
                del saved[: position + 1]
                break
