"""
The paper's comparison (Schulman et al. 2015, figure 4): single path and vine beside the variants
their design choices rule out, natural gradient with a fixed step (its step size swept in factors
of 3, the best kept), the maximum KL instead of the mean, the empirical Fisher and the theory's
penalty (Algorithm 1), on CartPole-v1, Swimmer-v5, Hopper-v5 and Walker2d-v5.

Every run (variant x env x seed) uses the zoo's hyperparameters of the env
(``zoo_configs/trpo_plus.yml``: n_steps, gamma, normalisation, ...) with the variant's arguments
on top, and trains for the budget (``--budget``; default: the zoo's ``n_timesteps``, 1e5 steps on
CartPole and 1e6 on the MuJoCo tasks). The score of a run is the mean return of its last 10
training episodes at the end of the budget.

Resumable: each run writes ``runs/<variant>__<env>__<seed>.json`` (its curve and final score) when
it ends, and a run whose file exists with the same budget is not run again, so an interrupted
command resumes where it stopped. The report (``report.md``, ``per_seed.csv``, ``curves.csv``,
``iqm.png``) is rebuilt from every run file present.

Statistics (rliable): per env, scores are min-max normalised over every run of that env (all
variants and seeds); the IQM over runs and envs with 95% stratified-bootstrap percentile intervals
(``rliable.library.get_interval_estimates``). The natural-gradient sweep's best step size is the
one of highest IQM; only it enters the comparison as ``natural_gradient``.

Usage::

    python -m benchmarks.paper_ablation --seeds 5                 # the whole comparison (days)
    python -m benchmarks.paper_ablation --envs CartPole-v1 --seeds 5 --budget 100000
    python -m benchmarks.paper_ablation --smoke                   # tiny budget: the pipeline only
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sb3_trpo_plus import TRPOPlus  # noqa: E402

ENVS = ("CartPole-v1", "Swimmer-v5", "Hopper-v5", "Walker2d-v5")
STEP_SIZES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # factors of about 3 (the paper swept its step size)
VARIANTS: dict[str, dict[str, Any]] = {
    "single_path": {},
    "vine": {"sampling": "vine"},
    **{f"natural_gradient_{size:g}": {"step": "natural_gradient", "step_size": size} for size in STEP_SIZES},
    "max_kl": {"kl_constraint": "max"},
    "empirical_fisher": {"fisher": "empirical"},
    "theory_penalty": {"step": "theory_penalty"},
}
OUT = REPO / "benchmarks" / "results" / "paper_ablation"
BOOTSTRAP_REPS = 2000


def zoo_hyperparameters(env_id: str) -> dict[str, Any]:
    """The env's entry of ``zoo_configs/trpo_plus.yml`` (merge keys resolved, ``policy_kwargs`` evaluated)."""
    entry = dict(yaml.safe_load((REPO / "zoo_configs" / "trpo_plus.yml").read_text())[env_id])
    if isinstance(entry.get("policy_kwargs"), str):
        entry["policy_kwargs"] = eval(entry["policy_kwargs"], {"nn": nn, "dict": dict})  # the zoo's own format
    return entry


class EpisodeReturns(BaseCallback):
    """Records (total steps, mean return of the last 10 training episodes) after every rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.curve: list[tuple[int, float]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.ep_info_buffer
        if buffer:
            returns = [info["r"] for info in list(buffer)[-10:]]
            self.curve.append((self.model.num_timesteps, float(np.mean(returns))))


def run_one(variant: str, env_id: str, seed: int, budget: int, smoke: bool) -> dict[str, Any]:
    """Train one run and return its record (curve, final score, seconds)."""
    hyperparameters = zoo_hyperparameters(env_id)
    hyperparameters.pop("n_timesteps", None)
    n_envs = int(hyperparameters.pop("n_envs", 1))
    normalize = bool(hyperparameters.pop("normalize", False))
    policy = hyperparameters.pop("policy", "MlpPolicy")
    if smoke:
        hyperparameters.update({"n_steps": 64, "batch_size": 64})
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, gamma=hyperparameters.get("gamma", 0.99))
    model = TRPOPlus(policy, env, seed=seed, **{**hyperparameters, **VARIANTS[variant]})
    callback = EpisodeReturns()
    start = time.perf_counter()
    model.learn(budget, callback=callback)
    env.close()
    final = callback.curve[-1][1] if callback.curve else float("nan")
    return {
        "variant": variant,
        "env": env_id,
        "seed": seed,
        "budget": budget,
        "final_return": final,
        "rejected_steps": model.n_rejected_steps,
        "seconds": time.perf_counter() - start,
        "curve": callback.curve,
    }


def load_runs(out: Path) -> list[dict[str, Any]]:
    """Every run file under ``out/runs``."""
    return [json.loads(path.read_text()) for path in sorted((out / "runs").glob("*.json"))]


def normalised_scores(runs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """variant -> (seeds, envs) scores, min-max normalised per env over every run of it (NaN where missing)."""
    envs = sorted({run["env"] for run in runs})
    variants = sorted({run["variant"] for run in runs})
    seeds = sorted({run["seed"] for run in runs})
    bounds = {}
    for env in envs:
        values = [run["final_return"] for run in runs if run["env"] == env and np.isfinite(run["final_return"])]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        bounds[env] = (low, max(high - low, 1e-12))
    scores = {}
    for variant in variants:
        table = np.full((len(seeds), len(envs)), np.nan)
        for run in runs:
            if run["variant"] == variant:
                low, span = bounds[run["env"]]
                table[seeds.index(run["seed"]), envs.index(run["env"])] = (run["final_return"] - low) / span
        scores[variant] = table
    return scores


def iqm_intervals(scores: dict[str, np.ndarray]) -> dict[str, tuple[float, float, float]]:
    """variant -> (IQM, 95% interval low, high), rliable's stratified bootstrap, over complete runs."""
    from rliable import library as rly
    from rliable import metrics

    complete = {name: table[~np.isnan(table).any(axis=1)] for name, table in scores.items()}
    complete = {name: table for name, table in complete.items() if len(table) >= 2}
    if not complete:
        return {}
    np.random.seed(0)  # rliable resamples with NumPy's global generator
    points, intervals = rly.get_interval_estimates(
        complete, lambda table: np.array([metrics.aggregate_iqm(table)]), method="percentile", reps=BOOTSTRAP_REPS
    )
    return {name: (float(points[name][0]), float(intervals[name][0, 0]), float(intervals[name][1, 0])) for name in complete}


def write_report(out: Path, runs: list[dict[str, Any]], command: str, smoke: bool = False) -> None:
    """per_seed.csv, curves.csv, report.md and iqm.png from the runs (``smoke``: said so in the report)."""
    with open(out / "per_seed.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        columns = ("variant", "env", "seed", "budget", "final_return", "rejected_steps", "seconds")
        writer.writerow(columns)
        for run in runs:
            writer.writerow([run[key] for key in columns])
    with open(out / "curves.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "env", "seed", "timesteps", "mean_return_last_10"])
        for run in runs:
            for steps, value in run["curve"]:
                writer.writerow([run["variant"], run["env"], run["seed"], steps, value])
    intervals = iqm_intervals(normalised_scores(runs))
    sweep = {name: value for name, value in intervals.items() if name.startswith("natural_gradient_")}
    best = max(sweep, key=lambda name: sweep[name][0]) if sweep else None
    lines = [
        "# The paper's comparison, reproduced" + (" (SMOKE RUN: a pipeline check, no conclusion)" if smoke else ""),
        "",
        f"Command: `{command}`. Budgets: {sorted({(run['env'], run['budget']) for run in runs})}.",
        "Score: mean return of the last 10 training episodes at the end of the budget, min-max normalised",
        "per env over every run; IQM over runs and envs with 95% stratified-bootstrap intervals (rliable,",
        f"{BOOTSTRAP_REPS} resamples). Only variants with at least 2 complete seeds are shown.",
        "",
        "| variant | IQM | 95% interval |",
        "| --- | --- | --- |",
    ]
    for name, (point, low, high) in sorted(intervals.items(), key=lambda item: -item[1][0]):
        marker = " (best step size)" if name == best else ""
        lines.append(f"| {name}{marker} | {point:.3f} | [{low:.3f}, {high:.3f}] |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    if intervals:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = sorted(intervals, key=lambda name: intervals[name][0])
        figure, axis = plt.subplots(figsize=(6, 0.4 * len(names) + 1))
        for row, name in enumerate(names):
            point, low, high = intervals[name]
            axis.plot([low, high], [row, row], color="tab:blue")
            axis.plot([point], [row], "o", color="tab:blue")
        axis.set_yticks(range(len(names)), names)
        axis.set_xlabel("IQM of normalised final return (95% CI)")
        figure.tight_layout()
        figure.savefig(out / "iqm.png", dpi=120)
        plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=None, help="steps per run (default: the zoo's n_timesteps)")
    parser.add_argument("--smoke", action="store_true", help="CartPole-v1, 2 seeds, 1024 steps of 64-step rollouts")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.envs, args.seeds, args.budget = ["CartPole-v1"], 2, 1024
    out = args.out or (OUT / "smoke" if args.smoke else OUT)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for env_id in args.envs:
        budget = args.budget or int(float(zoo_hyperparameters(env_id)["n_timesteps"]))
        for variant in args.variants:
            for seed in range(args.seeds):
                path = out / "runs" / f"{variant}__{env_id}__{seed}.json"
                if path.exists() and json.loads(path.read_text())["budget"] == budget:
                    continue
                record = run_one(variant, env_id, seed, budget, args.smoke)
                path.write_text(json.dumps(record))
                print(f"{variant} {env_id} seed {seed}: {record['final_return']:.1f} ({record['seconds']:.0f} s)", flush=True)
    command = "python -m benchmarks.paper_ablation " + " ".join(argv or sys.argv[1:])
    write_report(out, load_runs(out), command, args.smoke)


if __name__ == "__main__":
    main()
