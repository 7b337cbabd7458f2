"""
The branch-pool seam (issue 23): a pool is one class plus ``register_branch_pool``, and the names
``vine_kwargs['branch_vec_env']`` accepts are the registered ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

import sb3_trpo_plus.branch_pool as branch_pool
from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.branch_pool import BranchPool, branch_pool_class, branch_pool_names, register_branch_pool
from sb3_trpo_plus.settings import VineSettings
from sb3_trpo_plus.vine.pools import InProcessBranchPool, SubprocBranchPool

VINE = {"n_states": 4, "n_actions": 3, "horizon": 5}


class CountingPool:
    """A pool of one's own: the in-process pool, wrapped, counting the calls it receives."""

    takes_workers: ClassVar[bool] = False
    calls: ClassVar[Counter[str]] = Counter()

    def __init__(self, make_env: Callable[[], gym.Env], size: int, n_workers: int | None = None) -> None:
        self.inner = InProcessBranchPool(make_env, size)
        self.size = size

    def chain(self) -> list[tuple[str, ...]]:
        self.calls["chain"] += 1
        return self.inner.chain()

    def restore(self, state: Any, seeds: np.ndarray | None) -> None:
        self.calls["restore"] += 1
        self.inner.restore(state, seeds)

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
        self.calls["step"] += 1
        return self.inner.step(actions, active)

    def replayed_steps(self) -> int:
        return self.inner.replayed_steps()

    def close(self) -> None:
        self.calls["close"] += 1
        self.inner.close()


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A copy of the registry for the test, so that what it registers is gone afterwards."""
    monkeypatch.setattr(branch_pool, "_POOLS", dict(branch_pool._POOLS))
    CountingPool.calls.clear()
    yield


def _q_values(branch_vec_env: str) -> th.Tensor:
    model = TRPOPlus(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=2, seed=4),
        seed=4,
        n_steps=32,
        batch_size=32,
        sampling="vine",
        vine_kwargs={**VINE, "branch_vec_env": branch_vec_env},
    )
    model._setup_learn(10**9, None)
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]
    assert model._vine is not None and model._vine_batch is not None
    values = model._vine_batch.q_values.clone()
    model._vine.close()
    return values


def test_the_package_registers_the_in_process_and_the_subprocess_pool() -> None:
    assert branch_pool_names()[:2] == ["dummy", "subproc"]
    assert branch_pool_class("dummy") is InProcessBranchPool and branch_pool_class("subproc") is SubprocBranchPool
    pools: list[type[BranchPool]] = [InProcessBranchPool, SubprocBranchPool]
    assert [pool.takes_workers for pool in pools] == [False, True]


@pytest.mark.usefixtures("registry")
def test_a_registered_pool_is_selectable_by_name_and_runs_the_branches() -> None:
    with pytest.raises(ValueError, match=r"vine_kwargs\['branch_vec_env'\] must be one of \['dummy', 'subproc'\]"):
        VineSettings(branch_vec_env="counting")
    register_branch_pool("counting", CountingPool)
    assert VineSettings(branch_vec_env="counting").branch_vec_env == "counting"
    counted = _q_values("counting")
    # n_states=4 rollout-set states: one restore each, at least one step each; the chain is
    # checked once at construction
    assert CountingPool.calls["restore"] == 4 and CountingPool.calls["step"] >= 4
    assert CountingPool.calls["chain"] == 1 and CountingPool.calls["close"] == 1
    # the same branches as the in-process pool it wraps
    assert th.equal(counted, _q_values("dummy"))


@pytest.mark.usefixtures("registry")
def test_an_unknown_pool_is_refused_at_construction_naming_the_key_and_the_registered_names() -> None:
    register_branch_pool("counting", CountingPool)
    with pytest.raises(ValueError, match=r"vine_kwargs\['branch_vec_env'\] must be one of \['dummy', 'subproc', 'counting'\]"):
        TRPOPlus("MlpPolicy", "CartPole-v1", sampling="vine", vine_kwargs={"branch_vec_env": "ray"})
    # workers only for a pool that takes them
    with pytest.raises(ValueError, match=r"vine_kwargs\['n_branch_workers'\] needs .*\['subproc'\]\), got 'counting'"):
        VineSettings(branch_vec_env="counting", n_branch_workers=2)


def test_register_branch_pool_refuses_a_bad_name_or_class() -> None:
    with pytest.raises(ValueError, match="name"):
        register_branch_pool("", CountingPool)
    with pytest.raises(TypeError, match="class"):
        register_branch_pool("bad", "not a class")  # type: ignore[arg-type]
    assert "bad" not in branch_pool_names()
