"""
What an environment is made of: its wrappers, their names, and the package's own transparent
wrappers (:class:`InternalWrapper`), which are part of neither its chain nor its saved state.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym


class InternalWrapper(gym.Wrapper):
    """
    The base class of this package's own transparent wrappers (the branchable wrapper and the
    replay recorder): they are left out of :func:`~sb3_trpo_plus.env_state.wrapper_chain` and of
    snapshots, so that an environment compares and saves the same with or without them.
    """


def is_internal(wrapper: gym.Wrapper) -> bool:
    """:return: whether ``wrapper`` is one of this package's own transparent wrappers"""
    return isinstance(wrapper, InternalWrapper)


def wrappers_of(env: gym.Env) -> list[gym.Wrapper]:
    """The wrappers of ``env``, outermost first."""
    wrappers = []
    while isinstance(env, gym.Wrapper):
        wrappers.append(env)
        env = env.env
    return wrappers


def qualified(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def lineage(wrapper: gym.Wrapper) -> tuple[str, ...]:
    """Qualified names of a wrapper's class and of the wrapper classes it derives from, most specific first."""
    generic = (gym.Wrapper, gym.ObservationWrapper, gym.ActionWrapper, gym.RewardWrapper, gym.Env)
    return tuple(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in type(wrapper).__mro__
        if issubclass(cls, gym.Wrapper) and cls not in generic
    )


def describe(env: gym.Env) -> str:
    unwrapped = env.unwrapped
    spec = getattr(unwrapped, "spec", None)
    name = f"{type(unwrapped).__module__}.{type(unwrapped).__qualname__}"
    return name + (f" (id {spec.id!r})" if spec is not None else "")
