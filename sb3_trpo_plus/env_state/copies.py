"""
Branch copies of the trunk's environment (:func:`branch_copy`) and the check that they are the
trunk's environment, wrapper for wrapper (:func:`wrapper_chain`, :func:`check_same_chain`).
"""

from __future__ import annotations

import copy
import io
from typing import Any

import gymnasium as gym

from sb3_trpo_plus.env_state.errors import ChainMismatchError, UnbranchableEnvError
from sb3_trpo_plus.env_state.layers import is_internal, lineage, qualified, wrappers_of

#: wrappers whose work is a side effect outside the process (files, videos, windows) that a copy
#: would repeat: branch copies refuse them rather than silently writing or dropping them
_REFUSED_WRAPPERS: dict[str, str] = {
    "gymnasium.wrappers.rendering.RecordVideo": "it records videos of every episode to files",
    "gymnasium.wrappers.rendering.HumanRendering": "it opens a window",
}


def wrapper_chain(env: gym.Env) -> list[tuple[str, ...]]:
    """
    What an environment is made of, outermost first: the lineage (see :func:`snapshot`) of every
    wrapper (this module's own transparent wrappers excepted), then the unwrapped environment's class.

    :param env: the environment
    :return: one tuple of qualified class names per layer
    """
    layers: list[tuple[str, ...]] = [lineage(w) for w in wrappers_of(env) if not is_internal(w)]
    return [*layers, (qualified(env.unwrapped),)]


def _layer_name(layer: tuple[str, ...]) -> str:
    return layer[0] if layer else "gymnasium.Wrapper"


#: wrappers that only record (statistics, files) and do not change the MDP: a branch copy built
#: by the user may lack them
_RECORDERS = frozenset({"stable_baselines3.common.monitor.Monitor", "gymnasium.wrappers.common.RecordEpisodeStatistics"})


def _matches(ours: tuple[str, ...], theirs: tuple[str, ...]) -> bool:
    return bool(set(ours) & set(theirs))


def check_same_chain(trunk: list[tuple[str, ...]], branch: list[tuple[str, ...]], where: str = "branch copies") -> None:
    """
    Refuse branch copies that are not the trunk's environment, wrapper for wrapper.

    Two layers match when their lineages share a class (rl_zoo3's ``PatchedTimeLimit`` matches
    gymnasium's ``TimeLimit``, as in :func:`restore`). Wrappers that only record (SB3's
    ``Monitor``, gymnasium's ``RecordEpisodeStatistics``) may be missing from a branch copy.

    :param trunk: :func:`wrapper_chain` of the trunk's environment
    :param branch: :func:`wrapper_chain` of a branch copy
    :param where: how the branch copies were made (for the message)
    :raises ChainMismatchError: naming the first wrapper that differs
    """
    ours_layers = [layer for layer in trunk if not (set(layer) & _RECORDERS)]
    theirs_layers = [layer for layer in branch if not (set(layer) & _RECORDERS)]
    for position in range(max(len(ours_layers), len(theirs_layers))):
        ours = ours_layers[position] if position < len(ours_layers) else None
        theirs = theirs_layers[position] if position < len(theirs_layers) else None
        if ours is not None and theirs is not None and _matches(ours, theirs):
            continue
        if ours is not None and not any(_matches(ours, layer) for layer in theirs_layers[position:]):
            problem = f"{where} lack the trunk's wrapper {_layer_name(ours)}"
        else:
            problem = f"{where} have the wrapper {_layer_name(theirs or ())} that the trunk's environment does not have"
        trunk_text = " -> ".join(_layer_name(layer) for layer in trunk)
        branch_text = " -> ".join(_layer_name(layer) for layer in branch)
        raise ChainMismatchError(
            f"sampling='vine': {problem}, so the branches would simulate another MDP than the trunk. "
            f"Trunk: {trunk_text}. Branch copy: {branch_text}. Build the branch copies with every wrapper of the "
            "trunk, in the same order (vine_kwargs['make_branch_env']), or leave make_branch_env unset to have "
            "copies of the trunk's own environment."
        )


def _side_effects(env: gym.Env) -> dict[int, Any]:
    """
    A deepcopy memo that drops what writes outside the process: SB3's ``Monitor`` results writer
    and open files held by wrappers (a copy of a ``Monitor`` then counts its own episodes in
    memory and writes nothing).
    """
    from stable_baselines3.common.monitor import ResultsWriter

    memo: dict[int, Any] = {}
    for layer in [*wrappers_of(env), env.unwrapped]:
        name = qualified(layer)
        if name in _REFUSED_WRAPPERS:
            raise UnbranchableEnvError(
                f"sampling='vine' cannot copy the trunk's wrapper {name} for its branches: {_REFUSED_WRAPPERS[name]}, "
                "and its copies would do it again for every branch. Remove it from the training environment (record "
                "videos from a separate evaluation environment)."
            )
        for value in vars(layer).values():
            if isinstance(value, (ResultsWriter, io.IOBase)):
                memo[id(value)] = None
    return memo


def branch_copy(env: gym.Env) -> gym.Env:
    """
    A copy of ``env``, every wrapper included, for branching: the same MDP, without the side
    effects that leave the process (SB3's ``Monitor`` keeps counting but writes no file; open
    files of other wrappers are dropped). Its state is a copy of ``env``'s; branches put it into a
    snapshot's state with :func:`restore` before stepping it.

    :param env: the trunk's environment
    :return: the copy (picklable with cloudpickle, so that subprocesses can be given it)
    :raises UnbranchableEnvError: naming the wrapper that cannot be copied, and how to proceed
    """
    memo = _side_effects(env)
    try:
        return copy.deepcopy(env, memo)
    except Exception as error:
        culprit = qualified(env.unwrapped)
        for layer in [env.unwrapped, *reversed(wrappers_of(env))]:  # innermost first: the first that fails
            own = {key: value for key, value in vars(layer).items() if key != "env"}
            try:
                copy.deepcopy(own, dict(memo))
            except Exception:
                culprit = qualified(layer)
                break
        raise UnbranchableEnvError(
            f"sampling='vine' runs its branches on copies of the trunk's environment, and {culprit} cannot be copied "
            f"({type(error).__name__}: {error}). Make it copyable (copy.deepcopy / pickle, e.g. by dropping handles in "
            "__getstate__), or pass vine_kwargs={'make_branch_env': <callable building the same environment, every "
            "wrapper included>}."
        ) from error


def pickled_branch_copy(env: gym.Env) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(branch_copy(env))
