"""
Copies of an object's plain state: numbers, strings, arrays and containers of them, an
environment's plain attributes, and the state of its random generator ``np_random``.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np

# Attributes that are structure or configuration, never state: not saved, never overwritten.
STRUCTURAL = frozenset(
    (
        "env _env spec _cached_spec observation_space action_space _action_space _observation_space metadata "
        "_metadata render_mode _reward_range reward_range _saved_kwargs"
    ).split()
)


def copy_plain(value: Any) -> Any:
    """A copy of a plain value (numbers, strings, arrays and containers of them), or ``NOT_PLAIN``."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic)):
        return value
    if type(value) is np.ndarray:  # exact types only: subclasses (named tuples, ...) are copied by pickling
        return value.copy() if value.dtype != object else NOT_PLAIN
    if type(value) in (list, tuple):
        items = [copy_plain(item) for item in value]
        if any(item is NOT_PLAIN for item in items):
            return NOT_PLAIN
        return items if type(value) is list else tuple(items)
    if type(value) is dict:
        copied = {key: copy_plain(item) for key, item in value.items()}
        return NOT_PLAIN if any(item is NOT_PLAIN for item in copied.values()) else copied
    return NOT_PLAIN


NOT_PLAIN = object()


def plain_attributes(env: gym.Env, skip: frozenset[str]) -> dict[str, Any]:
    state = {}
    for key, value in vars(env).items():
        if key in skip or key in STRUCTURAL:
            continue
        copied = copy_plain(value)
        if copied is not NOT_PLAIN:
            state[key] = copied
    return state


def set_attributes(env: Any, state: dict[str, Any]) -> None:
    for key, value in state.items():
        setattr(env, key, copy.deepcopy(value))


def get_rng(env: gym.Env) -> tuple[dict[str, Any] | None, int | None]:
    rng = getattr(env, "_np_random", None)
    if rng is None:
        return None, None
    return copy.deepcopy(rng.bit_generator.state), getattr(env, "_np_random_seed", None)


def set_rng(env: gym.Env, state: dict[str, Any], seed: int | None = None) -> None:
    rng = getattr(env, "_np_random", None)
    if rng is None or type(rng.bit_generator).__name__ != state["bit_generator"]:
        rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
        env.np_random = rng
    rng.bit_generator.state = copy.deepcopy(state)
    if seed is not None:
        env._np_random_seed = seed  # type: ignore[attr-defined]
