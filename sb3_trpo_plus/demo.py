"""
The README's main job: TRPOPlus trained on CartPole-v1 with the RL Zoo's tuned TRPO
hyperparameters and budget (100,000 steps), then 20 evaluation episodes whose returns are
printed beside the task's reference (solved at 475, the maximum is 500), and the model saved.

    python -m sb3_trpo_plus.demo [--timesteps 100000] [--seed 0] [--threads 1] [--out trpo_plus_demo]

Torch runs with one thread by default: the result then does not depend on the machine's core
count (float sums are added in another order with more threads, and a different policy comes out).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_trpo_plus import TRPOPlus

ENV_ID = "CartPole-v1"
#: rl_zoo3's tuned TRPO hyperparameters for CartPole-v1 (hyperparams/trpo.yml), its budget and n_envs
CARTPOLE_HYPERPARAMS: dict[str, Any] = dict(
    n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, gamma=0.99, learning_rate=1e-3, n_critic_updates=20
)
ZOO_TIMESTEPS = 100_000
ZOO_N_ENVS = 2
#: CartPole-v1's reward threshold in gymnasium's registry, and the largest return (500 steps)
SOLVED_AT = 475.0
MAX_RETURN = 500.0
N_EVAL_EPISODES = 20


@dataclass
class DemoResult:
    """What the demo measured: the steps trained, the seconds they took and every evaluation return."""

    timesteps: int
    seconds: float
    returns: list[float]

    @property
    def solved(self) -> bool:
        """Every evaluation episode reached the solved threshold."""
        return min(self.returns) >= SOLVED_AT


def train_and_evaluate(
    timesteps: int = ZOO_TIMESTEPS, seed: int = 0, progress_bar: bool = False, out: str | None = None
) -> DemoResult:
    """
    Train TRPOPlus on CartPole-v1 with the zoo's hyperparameters, then evaluate it.

    :param timesteps: environment steps to train for
    :param seed: seed of the training and (plus 1000) of the evaluation environments
    :param progress_bar: show SB3's progress bar while training
    :param out: where to save the model (``.zip`` is added); None: not saved
    :return: the steps, the training time and the 20 deterministic evaluation returns
    """
    env = make_vec_env(ENV_ID, n_envs=ZOO_N_ENVS, seed=seed)
    model = TRPOPlus("MlpPolicy", env, seed=seed, **CARTPOLE_HYPERPARAMS)
    start = time.perf_counter()
    model.learn(timesteps, progress_bar=progress_bar)
    seconds = time.perf_counter() - start
    # the 20 episodes on 10 environments side by side: 10 times fewer policy calls than one by one
    eval_env = make_vec_env(ENV_ID, n_envs=N_EVAL_EPISODES // 2, seed=seed + 1000)
    returns, _ = evaluate_policy(model, eval_env, N_EVAL_EPISODES, deterministic=True, return_episode_rewards=True)
    if out is not None:
        model.save(out)
    return DemoResult(model.num_timesteps, seconds, [float(value) for value in returns])  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> DemoResult:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=ZOO_TIMESTEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the same result on every machine)")
    parser.add_argument("--out", default="trpo_plus_demo", help="where the trained model is saved (.zip)")
    args = parser.parse_args(argv)

    th.set_num_threads(args.threads)
    # SB3's progress bar needs tqdm and rich (the test extra); without them the demo runs without it
    progress_bar = all(importlib.util.find_spec(name) is not None for name in ("tqdm", "rich"))
    print(
        f"TRPOPlus on {ENV_ID}: {args.timesteps} steps, rl_zoo3's TRPO hyperparameters, seed {args.seed}, "
        f"{th.get_num_threads()} torch thread(s). Expected with the defaults: {MAX_RETURN:.0f} on every one of "
        f"the {N_EVAL_EPISODES} evaluation episodes (the task counts as solved at {SOLVED_AT:.0f})."
    )
    result = train_and_evaluate(args.timesteps, args.seed, progress_bar, args.out)
    mean, std = float(np.mean(result.returns)), float(np.std(result.returns))
    verdict = "solved" if result.solved else "NOT solved"
    print(
        f"Trained {result.timesteps} steps in {result.seconds:.1f} s ({result.timesteps / result.seconds:.0f} steps/s). "
        f"Evaluation over {N_EVAL_EPISODES} episodes: {mean:.1f} +/- {std:.1f} (lowest {min(result.returns):.1f}; "
        f"solved at {SOLVED_AT:.0f}, maximum {MAX_RETURN:.0f}): {verdict}. Model saved to {args.out}.zip"
    )
    return result


if __name__ == "__main__":
    main()
