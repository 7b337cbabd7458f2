"""
Issue 22: a callback may snapshot the model at any of its hooks (checkpoints, EMA copies,
evaluation workers). At every hook the policy, its action distribution, its optimizer and the
model itself hold no tensor attached to an autograd graph, so that ``copy.deepcopy`` and
``pickle`` of the policy, of ``get_parameters()`` and ``model.save`` all work, with either
sampling scheme, Box and Discrete actions, fast paths on and off, and gSDE.
"""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_plus import TRPOPlus

HOOKS = ("training_start", "rollout_start", "step", "rollout_end", "training_end")
VINE = {"n_states": 4, "n_actions": 2, "horizon": 5}


def graph_tensors(root: object, name: str) -> list[str]:
    """
    The places, under ``root``, of tensors that hold an autograd graph (a ``grad_fn``, or
    ``requires_grad`` without being a leaf): attributes, dict values and sequence items, followed
    recursively (environments excepted: they hold no tensor of the policy).
    """
    found: list[str] = []
    seen: set[int] = set()
    pending: list[tuple[object, str]] = [(root, name)]
    while pending:
        value, path = pending.pop()
        if id(value) in seen or isinstance(value, (VecEnv, gym.Env, str, bytes, int, float, type)):
            continue
        seen.add(id(value))
        if isinstance(value, th.Tensor):
            if value.grad_fn is not None or (value.requires_grad and not value.is_leaf):
                found.append(path)
            if value.grad is not None:
                pending.append((value.grad, f"{path}.grad"))
        elif isinstance(value, dict):
            pending.extend((item, f"{path}[{key!r}]") for key, item in value.items())
        elif isinstance(value, (list, tuple, set, frozenset)):
            pending.extend((item, f"{path}[{index}]") for index, item in enumerate(value))
        elif isinstance(value, th.nn.Module) or (hasattr(value, "__dict__") and not callable(value)):
            pending.extend((item, f"{path}.{key}") for key, item in vars(value).items())
    return found


class Snapshots(BaseCallback):
    """
    At every hook (``on_step``: the first and the last step of each rollout, to keep the test
    fast): no graph on the model, and the policy, its parameters and the model can be copied,
    pickled and saved.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rollout_steps = 0
        self.seen: dict[str, int] = dict.fromkeys(HOOKS, 0)
        self.after_update: set[str] = set()

    def snapshot(self, hook: str) -> None:
        model = self.model
        assert graph_tensors(model, "model") == [], hook
        assert graph_tensors(model.policy.optimizer.state_dict(), "optimizer") == [], hook
        copy.deepcopy(model.policy)
        pickle.loads(pickle.dumps(model.policy))
        parameters = model.get_parameters()
        copy.deepcopy(parameters)
        pickle.dumps(parameters)
        model.save(io.BytesIO())
        self.seen[hook] += 1
        if model._n_updates > 0:
            self.after_update.add(hook)

    def _on_training_start(self) -> None:
        self.snapshot("training_start")

    def _on_rollout_start(self) -> None:
        self.rollout_steps = 0
        self.snapshot("rollout_start")

    def _on_step(self) -> bool:
        self.rollout_steps += 1
        if self.rollout_steps in (1, self.model.n_steps):
            self.snapshot("step")
        return True

    def _on_rollout_end(self) -> None:
        self.snapshot("rollout_end")

    def _on_training_end(self) -> None:
        self.snapshot("training_end")


def _model(env_id: str, sampling: str, fast_paths: bool, **kwargs: Any) -> TRPOPlus:
    extra: dict[str, Any] = {"sampling": "vine", "vine_kwargs": dict(VINE)} if sampling == "vine" else {}
    return TRPOPlus(
        "MlpPolicy",
        env_id,
        n_steps=16,
        batch_size=16,
        n_critic_updates=2,
        fast_paths=fast_paths,
        policy_kwargs={"net_arch": [8]},
        seed=0,
        **extra,
        **kwargs,
    )


@pytest.mark.parametrize("fast_paths", [True, False])
@pytest.mark.parametrize("sampling", ["single_path", "vine"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_every_hook_can_snapshot_the_model(env_id: str, sampling: str, fast_paths: bool) -> None:
    model = _model(env_id, sampling, fast_paths)
    snapshots = Snapshots()
    iterations = 3
    steps_per_iteration = 16 if sampling == "single_path" else 16 + VINE["n_states"] * VINE["n_actions"] * VINE["horizon"]
    model.learn(iterations * steps_per_iteration, callback=snapshots)
    assert model._n_updates >= 2
    assert all(count > 0 for count in snapshots.seen.values()), snapshots.seen
    assert {"rollout_start", "step", "rollout_end", "training_end"} <= snapshots.after_update


def test_gsde_noise_holds_no_graph() -> None:
    """gSDE's exploration matrices are drawn without a graph (SB3's ``reset_noise`` alone would attach them to log_std)."""
    model = _model("Pendulum-v1", "single_path", True, use_sde=True, sde_sample_freq=4)
    snapshots = Snapshots()
    model.learn(3 * 16, callback=snapshots)
    assert snapshots.after_update >= {"rollout_start", "step", "rollout_end", "training_end"}


@pytest.mark.parametrize(("env_id", "use_sde"), [("CartPole-v1", False), ("Pendulum-v1", True)])
def test_a_loaded_model_holds_no_graph(env_id: str, use_sde: bool) -> None:
    """
    Loading rebuilds the policy, finds its actor parameters again and (gSDE) draws new exploration
    matrices: none of it leaves a graph behind.
    """
    buffer = io.BytesIO()
    _model(env_id, "single_path", True, use_sde=use_sde).save(buffer)
    buffer.seek(0)
    loaded = TRPOPlus.load(buffer)
    assert isinstance(loaded, TRPOPlus)
    assert graph_tensors(loaded.policy, "policy") == []
    copy.deepcopy(loaded.policy)
