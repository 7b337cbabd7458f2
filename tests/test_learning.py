"""TRPOPlus learns CartPole-v1 with the RL Zoo's tuned TRPO hyperparameters (issue 2's learning bar)."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_trpo_plus import TRPOPlus

# rl_zoo3 hyperparams/trpo.yml, CartPole-v1
ZOO_CARTPOLE = {
    "n_steps": 512,
    "batch_size": 512,
    "cg_damping": 1e-3,
    "gae_lambda": 0.98,
    "gamma": 0.99,
    "learning_rate": 1e-3,
    "n_critic_updates": 20,
}


@pytest.mark.slow
def test_cartpole_reaches_475_within_100k_steps() -> None:
    model = TRPOPlus("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), seed=0, **ZOO_CARTPOLE)
    model.learn(100_000)
    returns, _ = evaluate_policy(
        model,
        make_vec_env("CartPole-v1", n_envs=1, seed=1000),
        n_eval_episodes=20,
        deterministic=True,
        return_episode_rewards=True,
    )
    assert model.num_timesteps <= 100_000 + 1024
    assert float(np.mean(returns)) >= 475, returns
