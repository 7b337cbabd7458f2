"""
Variance of the policy-gradient estimate, vine against single path, at a fixed policy.

The paper's claim (section 5.2) is that vine's estimate has lower variance. At a fixed policy and
critic (trained briefly, then frozen), this collects R independent batches with each scheme,
computes the surrogate's gradient g_r at theta_old for each, and reports, per scheme:

- the total variance tr Cov(g) / |E g|^2 (relative variance, scale free),
- the mean cosine similarity of g_r with a reference gradient (the mean of the other scheme's
  estimates and its own, from many batches),
- the environment steps per batch, so that the two can be compared at equal cost: the relative
  variance times the steps of a batch is the variance *per environment step* (a batch of n steps
  has variance v / n when one step's contribution has variance v; lower is better).

Schemes: ``single_path``; ``vine_paper``, the paper's estimator (``PAPER_VINE_KWARGS``: the rollout
set's vine estimate alone) with the rollout set and horizon given below; ``vine_default``, vine
with every ``vine_kwargs`` default (the trunk's and the rollout set's estimators combined by
their measured variances, the rollout set sized to the default branch share).

    python benchmarks/gradient_variance.py --env CartPole-v1 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.settings import FORMER_VINE_DEFAULTS, PAPER_VINE_KWARGS
from sb3_trpo_plus.trust_region import flat_grad

SETTINGS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {"n_steps": 512, "gae_lambda": 0.98, "pretrain": 10_000, "vine": {"all_actions": True, "horizon": 50}},
    "Pendulum-v1": {"n_steps": 1024, "gamma": 0.9, "pretrain": 20_000, "vine": {"n_actions": 4, "horizon": 20}},
    "Acrobot-v1": {"n_steps": 1024, "pretrain": 20_000, "vine": {"all_actions": True, "horizon": 50}},
}


def gradient(model: TRPOPlus) -> tuple[np.ndarray, int]:
    """Collect one batch with ``model``'s scheme and return the surrogate gradient and its env steps."""
    start = model.num_timesteps
    callback = model._init_callback(None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]
    batch = model._iteration_batch()
    surrogate = model._surrogate(batch)
    distribution = model.policy.get_distribution(surrogate.observations)
    grad = flat_grad(surrogate.objective(distribution), model._actor_params)
    return grad.detach().cpu().numpy(), model.num_timesteps - start


def variance_by_scheme(
    env_id: str,
    settings: dict[str, Any],
    schemes: dict[str, dict[str, Any]],
    pretrain: int,
    repeats: int,
    seed: int,
    env_kwargs: dict[str, Any] | None = None,
    save_policy: Path | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """
    Train single path for ``pretrain`` steps, freeze that policy and critic, then draw ``repeats``
    batches with each scheme from it and measure the spread of their gradients.

    :param env_id: a registered environment
    :param settings: TRPOPlus arguments shared by every scheme
    :param schemes: scheme name -> the TRPOPlus arguments that make it (``{}``: single path)
    :param pretrain: environment steps of the single-path training that gives the fixed policy
    :param repeats: batches per scheme
    :param seed: seed of the pre-training (the schemes' runs use ``seed + 1``)
    :param env_kwargs: keyword arguments of the environment (a noise level, for instance)
    :param save_policy: where to save the fixed policy (None: not saved)
    :return: per scheme its figures (steps and seconds per batch, relative variance, per env step,
        mean pairwise cosine), and per scheme the cosine of its mean gradient with the first scheme's
    """
    base_env = make_vec_env(env_id, n_envs=2, seed=seed, env_kwargs=env_kwargs)
    base = TRPOPlus("MlpPolicy", base_env, seed=seed, **settings)
    base.learn(pretrain)
    if save_policy is not None:
        base.save(save_policy)
    results: dict[str, dict[str, float]] = {}
    estimates: dict[str, np.ndarray] = {}
    for scheme, extra in schemes.items():
        env = make_vec_env(env_id, n_envs=2, seed=seed + 1, env_kwargs=env_kwargs)
        model = TRPOPlus("MlpPolicy", env, seed=seed + 1, **settings, **extra)
        model.set_parameters(base.get_parameters())
        model._setup_learn(10**9, None)
        grads, steps, started = [], [], time.perf_counter()
        for _ in range(repeats):
            grad, n_steps = gradient(model)
            grads.append(grad)
            steps.append(n_steps)
        stacked = np.stack(grads)
        estimates[scheme] = stacked
        mean = stacked.mean(axis=0)
        relative_variance = float(np.sum(stacked.var(axis=0, ddof=1)) / np.sum(mean**2))
        unit = stacked / np.linalg.norm(stacked, axis=1, keepdims=True)
        off_diagonal = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
        results[scheme] = {
            "env_steps_per_batch": float(np.mean(steps)),
            "seconds_per_batch": (time.perf_counter() - started) / repeats,
            "relative_variance": relative_variance,
            "relative_variance_x_steps": relative_variance * float(np.mean(steps)),
            "mean_pairwise_cosine": float(off_diagonal.mean()),
        }
    first = next(iter(estimates.values())).mean(axis=0)
    reference = first / np.linalg.norm(first)
    cosine = {scheme: float(g.mean(axis=0) @ reference / np.linalg.norm(g.mean(axis=0))) for scheme, g in estimates.items()}
    return results, cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1", choices=sorted(SETTINGS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--n-states", type=int, default=64, help="vine rollout-set size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    th.set_num_threads(1)
    settings = dict(SETTINGS[args.env])
    pretrain = settings.pop("pretrain")
    vine = dict(settings.pop("vine"), n_states=args.n_states)
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    schemes: dict[str, dict[str, Any]] = {
        "single_path": {},
        "vine_paper": {"sampling": "vine", "vine_kwargs": {**PAPER_VINE_KWARGS, **vine}},
        "vine_default": {"sampling": "vine", "vine_kwargs": FORMER_VINE_DEFAULTS},  # as the committed results
    }
    results, cosine = variance_by_scheme(
        args.env, settings, schemes, pretrain, args.repeats, args.seed, save_policy=path / "gradient_variance_policy.zip"
    )
    summary = {
        "env": args.env,
        "repeats": args.repeats,
        "vine_paper_kwargs": {**PAPER_VINE_KWARGS, **vine},
        "schemes": results,
        "cosine_of_mean_gradient_with_single_path": {k: v for k, v in cosine.items() if k != "single_path"},
    }
    print(json.dumps(summary, indent=2))
    for scheme, figures in results.items():
        print(
            f"{scheme:>13}: {figures['env_steps_per_batch']:8.0f} steps/batch, relative variance "
            f"{figures['relative_variance']:.3f}, per env step {figures['relative_variance_x_steps']:.0f}"
        )
    (path / f"gradient_variance_{args.env}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
