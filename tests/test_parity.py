"""One iteration of TRPOPlus equals one iteration of sb3-contrib's TRPO from the same seed."""

from __future__ import annotations

from typing import Any

import pytest
import torch as th
from sb3_contrib import TRPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_trpo_plus import TRPOPlus

CASES = {
    "CartPole-v1": ({}, {"n_steps": 256, "batch_size": 64}),
    "Pendulum-v1": ({}, {"n_steps": 256, "batch_size": 64}),
    # a 2-d continuous action space: checks the KL measure per action dimension
    "LunarLander-v3": ({"continuous": True}, {"n_steps": 256, "batch_size": 128, "n_critic_updates": 5}),
}


def _one_iteration(cls: Any, env_id: str, env_kwargs: dict, hyperparams: dict, **extra: Any) -> th.Tensor:
    env = make_vec_env(env_id, n_envs=2, seed=11, env_kwargs=env_kwargs)
    model = cls("MlpPolicy", env, seed=11, **hyperparams, **extra)
    model.learn(hyperparams["n_steps"] * 2)
    return th.nn.utils.parameters_to_vector(model.policy.parameters()).detach()


@pytest.mark.parametrize("fisher", ["kl_hessian", "analytic"])
@pytest.mark.parametrize("env_id", sorted(CASES))
def test_one_iteration_matches_sb3_contrib(env_id: str, fisher: str) -> None:
    env_kwargs, hyperparams = CASES[env_id]
    reference = _one_iteration(TRPO, env_id, env_kwargs, hyperparams)
    ours = _one_iteration(TRPOPlus, env_id, env_kwargs, hyperparams, fisher=fisher, fvp_subsample=1.0)
    # every parameter of the policy, actor and critic; measured differences are about 1e-6
    assert th.allclose(ours, reference, atol=1e-5, rtol=0), float((ours - reference).abs().max())
    # and the step did move the policy
    initial = _one_iteration(TRPOPlus, env_id, env_kwargs, {**hyperparams, "n_critic_updates": 0, "target_kl": 1e-12})
    assert not th.allclose(initial, reference, atol=1e-4)
