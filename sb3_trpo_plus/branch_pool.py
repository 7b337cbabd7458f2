"""
What a branch pool is, and the registry of the named ones: ``vine_kwargs['branch_vec_env']``
accepts the names registered here.

A branch pool holds K copies of the trunk's environment and runs the K branches of one
rollout-set state side by side (see :mod:`sb3_trpo_plus.vine`). The package registers two:
``"dummy"`` (the copies in this process) and ``"subproc"`` (the copies in worker processes); they
register when :mod:`sb3_trpo_plus` is imported. A new backend (a Ray or Dask pool, say) is one
class with the methods of :class:`BranchPool` plus ``register_branch_pool("name", TheClass)``.

This module imports nothing of the package, so that the settings can read the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

import gymnasium as gym
import numpy as np


class BranchPool(Protocol):
    """
    K copies of the environment that run the K branches of one rollout-set state side by side.
    A copy never auto-resets: a branch ends with its episode.

    Built as ``cls(make_env, size, n_workers)``: ``make_env`` builds one copy (picklable with
    cloudpickle), ``size`` is K and ``n_workers`` is ``vine_kwargs['n_branch_workers']`` (None
    unless :attr:`takes_workers`).
    """

    #: whether the pool spreads its copies over worker processes (``vine_kwargs['n_branch_workers']``)
    takes_workers: ClassVar[bool]
    #: K, the number of copies
    size: int

    def __init__(self, make_env: Callable[[], gym.Env], size: int, n_workers: int | None = None) -> None: ...

    def chain(self) -> list[tuple[str, ...]]:
        """:return: :func:`~sb3_trpo_plus.env_state.wrapper_chain` of copy 0"""
        ...

    def restore(self, state: Any, seeds: np.ndarray | None) -> None:
        """
        Put every copy into a state.

        :param state: an :class:`~sb3_trpo_plus.env_state.EnvSnapshot` of the trunk's environment
        :param seeds: None (common random numbers), or one seed per copy for a fresh ``np_random``
        """
        ...

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
        """
        Step the active copies only.

        :param actions: one action per copy, in the environment's format
        :param active: which copies step
        :return: next observations (None for inactive copies), rewards, terminated and truncated
            flags, the environments' own values (see :func:`gather_steps`)
        """
        ...

    def replayed_steps(self) -> int:
        """:return: simulator steps spent replaying snapshots (replay-based environments), summed over copies"""
        ...

    def close(self) -> None:
        """Release the copies (and any worker)."""
        ...


PoolClass = TypeVar("PoolClass", bound="type[BranchPool]")

_POOLS: dict[str, type[BranchPool]] = {}


def register_branch_pool(name: str, cls: PoolClass) -> PoolClass:
    """
    Make a branch pool selectable as ``vine_kwargs['branch_vec_env']=name`` (a later registration
    of the same name replaces the earlier one).

    :param name: the name users pass
    :param cls: the pool's class (see :class:`BranchPool`)
    :return: ``cls``
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a branch pool's name must be a non-empty string, got {name!r}")
    if not callable(cls):
        raise TypeError(f"a branch pool must be a class built as cls(make_env, size, n_workers), got {cls!r}")
    _POOLS[name] = cls
    return cls


def branch_pool_names() -> list[str]:
    """:return: the registered names, in registration order"""
    return list(_POOLS)


def branch_pool_class(name: str) -> type[BranchPool]:
    """
    :param name: a registered name
    :return: its class
    :raises ValueError: naming ``vine_kwargs['branch_vec_env']`` and the registered names
    """
    if name not in _POOLS:
        raise ValueError(f"vine_kwargs['branch_vec_env'] must be one of {branch_pool_names()}, got {name!r}")
    return _POOLS[name]


def gather_steps(
    size: int, results: dict[int, tuple[Any, Any, Any, Any]]
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """
    A pool's :meth:`BranchPool.step` return value from the steps of the active copies.

    :param size: K, the number of copies
    :param results: copy index -> (observation, reward, terminated, truncated) of each copy that stepped
    :return: observations (None for the copies that did not step), rewards, terminated and truncated flags
    """
    observations: list[Any] = [None] * size
    rewards = np.zeros(size)
    terminated = np.zeros(size, dtype=bool)
    truncated = np.zeros(size, dtype=bool)
    for position, (obs, reward, term, trunc) in results.items():
        observations[position], rewards[position], terminated[position], truncated[position] = obs, reward, term, trunc
    return observations, rewards, terminated, truncated
