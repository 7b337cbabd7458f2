"""
Learning with TRPOPlus's fast paths, with its generic torch paths (the fast actor and the fused
critic switched off), and with sb3-contrib's TRPO, at the zoo's MuJoCo TRPO settings. It tells
apart a difference the fast paths would make from the seed-to-seed spread of chaotic
environments (a float-level difference in one action changes a MuJoCo trajectory within tens of
steps, so runs of the two libraries are independent samples even from the same seed).

    python benchmarks/fast_vs_generic.py --env HalfCheetah-v5 --steps 100000 --seeds 3

Prints, per configuration, the mean return of the last 10 training episodes of every seed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp

import numpy as np

ZOO_MUJOCO = dict(
    n_steps=1024, batch_size=128, cg_max_steps=25, cg_damping=0.1, n_critic_updates=20, gae_lambda=0.95, learning_rate=1e-3
)


def run(job: tuple[str, str, int, int]) -> tuple[str, int, float]:
    config, env_id, seed, steps = job
    import torch as th
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_trpo_plus import TRPOPlus

    th.set_num_threads(1)
    env = VecNormalize(make_vec_env(env_id, n_envs=2, seed=seed))
    if config == "sb3_trpo":
        model = TRPO("MlpPolicy", env, seed=seed, **ZOO_MUJOCO)
    else:  # the generic torch paths through the public switch
        model = TRPOPlus("MlpPolicy", env, seed=seed, fast_paths=config == "trpo_plus", **ZOO_MUJOCO)
    model.learn(steps)
    return config, seed, float(np.mean([episode["r"] for episode in model.ep_info_buffer][-10:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    configs = ("trpo_plus", "trpo_plus_generic", "sb3_trpo")
    jobs = [(config, args.env, seed, args.steps) for seed in range(args.seeds) for config in configs]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(run, jobs)
    for config in configs:
        returns = [value for name, _, value in sorted(results) if name == config]
        print(
            f"{config:18s} {args.env} {args.steps} steps: "
            + ", ".join(f"{v:.1f}" for v in returns)
            + f"  (mean {np.mean(returns):.1f})"
        )


if __name__ == "__main__":
    main()
