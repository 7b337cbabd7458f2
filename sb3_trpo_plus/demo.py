"""
The README's main job: a short TRPOPlus training on CartPole-v1 with the RL Zoo's tuned TRPO
hyperparameters, then an evaluation whose mean return is printed, and the model saved.

    python -m sb3_trpo_plus.demo [--env CartPole-v1] [--timesteps 50000] [--seed 0] [--out trpo_plus_demo]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_trpo_plus import TRPOPlus

# rl_zoo3's tuned TRPO hyperparameters for CartPole-v1 (hyperparams/trpo.yml)
CARTPOLE_HYPERPARAMS: dict[str, Any] = dict(
    n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, gamma=0.99, learning_rate=1e-3, n_critic_updates=20
)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="trpo_plus_demo", help="where the trained model is saved (.zip)")
    args = parser.parse_args(argv)

    env = make_vec_env(args.env, n_envs=2, seed=args.seed)
    hyperparams = CARTPOLE_HYPERPARAMS if args.env == "CartPole-v1" else {}
    model = TRPOPlus("MlpPolicy", env, seed=args.seed, **hyperparams)
    start = time.perf_counter()
    model.learn(args.timesteps)
    elapsed = time.perf_counter() - start
    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 1000)
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)  # type: ignore[misc]
    model.save(args.out)
    print(
        f"TRPOPlus on {args.env}: {model.num_timesteps} steps in {elapsed:.1f} s "
        f"({model.num_timesteps / elapsed:.0f} steps/s); "
        f"evaluation return over 20 episodes: {mean_return:.1f} +/- {std_return:.1f}; saved to {args.out}.zip"
    )
    return float(np.mean(mean_return))


if __name__ == "__main__":
    main()
