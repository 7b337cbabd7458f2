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
from sb3_trpo_plus.settings import FORMER_VINE_DEFAULTS  # noqa: E402

ENVS = ("CartPole-v1", "Swimmer-v5", "Hopper-v5", "Walker2d-v5")
STEP_SIZES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # factors of about 3 (the paper swept its step size)
VARIANTS: dict[str, dict[str, Any]] = {
    "single_path": {},
    # vine as the committed runs measured it: the defaults of the time (10-step branches on top of n_steps)
    "vine": {"sampling": "vine", "vine_kwargs": FORMER_VINE_DEFAULTS},
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


MAIN_VARIANTS = ("single_path", "vine", "natural_gradient", "max_kl", "empirical_fisher", "theory_penalty")


def curve_grid(run: dict[str, Any], points: int = 50) -> np.ndarray:
    """The run's curve (mean return of the last 10 episodes) on ``points`` evenly spaced steps up to its budget."""
    steps, values = zip(*run["curve"], strict=True) if run["curve"] else ((0,), (float("nan"),))
    grid = np.linspace(run["budget"] / points, run["budget"], points)
    return np.interp(grid, steps, values)


def best_step_sizes(runs: list[dict[str, Any]]) -> dict[str, str]:
    """env -> the natural-gradient sweep member of highest mean final return there (the paper kept the best)."""
    best: dict[str, str] = {}
    for env in sorted({run["env"] for run in runs}):
        means = {}
        for variant in sorted({run["variant"] for run in runs if run["env"] == env}):
            if variant.startswith("natural_gradient_"):
                finals = [run["final_return"] for run in runs if run["env"] == env and run["variant"] == variant]
                means[variant] = float(np.nanmean(finals)) if finals else float("-inf")
        if means:
            best[env] = max(means, key=lambda name: means[name])
    return best


def kept_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the comparison: every main variant, the natural gradient as its best step size per env."""
    best = best_step_sizes(runs)
    kept = []
    for run in runs:
        if run["variant"].startswith("natural_gradient_"):
            if best.get(run["env"]) == run["variant"]:
                kept.append({**run, "variant": "natural_gradient", "step_size_variant": run["variant"]})
        else:
            kept.append(run)
    return kept


def normalised_scores(runs: list[dict[str, Any]], measure: str = "final") -> dict[str, np.ndarray]:
    """
    variant -> (seeds, envs) scores of the kept runs (NaN where missing), normalised per env: 0 is the
    initial policy's return (the first rollout's, averaged over every run of the env), 1 the best kept
    variant's mean final return there. ``measure``: ``"final"`` (the final return) or ``"auc"`` (the
    curve's mean over the budget: how fast it learned).
    """
    kept = kept_runs(runs)
    envs = sorted({run["env"] for run in kept})
    variants = [name for name in MAIN_VARIANTS if any(run["variant"] == name for run in kept)]
    seeds = sorted({run["seed"] for run in kept})
    bounds = {}
    for env in envs:
        starts = [run["curve"][0][1] for run in runs if run["env"] == env and run["curve"]]
        low = float(np.mean(starts)) if starts else 0.0
        finals = [
            np.nanmean([run["final_return"] for run in kept if run["env"] == env and run["variant"] == name])
            for name in variants
            if any(run["env"] == env and run["variant"] == name for run in kept)
        ]
        high = float(np.nanmax(finals))
        bounds[env] = (low, high - low if abs(high - low) > 1e-12 else 1.0)
    scores = {}
    for variant in variants:
        table = np.full((len(seeds), len(envs)), np.nan)
        for run in kept:
            if run["variant"] == variant:
                value = run["final_return"] if measure == "final" else float(np.mean(curve_grid(run)))
                low, span = bounds[run["env"]]
                table[seeds.index(run["seed"]), envs.index(run["env"])] = (value - low) / span
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


def difference_interval(
    runs: list[dict[str, Any]], env: str, variant: str, reference: str, measure: str = "final"
) -> tuple[float, float, float] | None:
    """Mean of ``variant`` minus mean of ``reference`` on one env (raw returns) with Welch's 95% interval."""
    from scipy import stats

    def values(name: str) -> list[float]:
        chosen = [run for run in kept_runs(runs) if run["env"] == env and run["variant"] == name]
        return [run["final_return"] if measure == "final" else float(np.mean(curve_grid(run))) for run in chosen]

    a, b = values(variant), values(reference)
    if len(a) < 2 or len(b) < 2:
        return None
    delta = float(np.mean(a) - np.mean(b))
    if np.std(a) == 0 and np.std(b) == 0:
        return delta, delta, delta
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return delta, float(low), float(high)


def write_report(out: Path, runs: list[dict[str, Any]], command: str, smoke: bool = False) -> None:
    """per_seed.csv, curves.csv, report.md, iqm.png and curves.png from the runs (``smoke``: said so in the report)."""
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
    envs = [env for env in ENVS if any(run["env"] == env for run in runs)]
    best = best_step_sizes(runs)
    final = iqm_intervals(normalised_scores(runs, "final"))
    auc = iqm_intervals(normalised_scores(runs, "auc"))
    lines = [
        "# The paper's comparison, reproduced" + (" (SMOKE RUN: a pipeline check, no conclusion)" if smoke else ""),
        "",
        f"Command: `{command}`.",
        "",
        "Budgets (steps per run): "
        + ", ".join(f"{env} {max(r['budget'] for r in runs if r['env'] == env):,}" for env in envs),
        "",
        "Every run uses the zoo's hyperparameters of its env (`zoo_configs/trpo_plus.yml`) with the variant's",
        "arguments on top. Final return: mean return of the last 10 training episodes at the end of the budget.",
        "AUC: that curve's mean over the budget (50 evenly spaced points), a measure of learning speed.",
        "",
        "## Per env: final return, mean +- std over seeds (AUC in brackets)",
        "",
        "| variant | " + " | ".join(envs) + " |",
        "| --- | " + " | ".join("---:" for _ in envs) + " |",
    ]
    variants = [name for name in VARIANTS if any(run["variant"] == name for run in runs)]
    for variant in variants:
        cells = []
        for env in envs:
            chosen = [run for run in runs if run["env"] == env and run["variant"] == variant]
            if not chosen:
                cells.append("-")
                continue
            finals = [run["final_return"] for run in chosen]
            areas = [float(np.mean(curve_grid(run))) for run in chosen]
            mark = " **(best)**" if best.get(env) == variant else ""
            cells.append(f"{np.mean(finals):.1f} +- {np.std(finals):.1f} ({np.mean(areas):.1f}), n={len(chosen)}{mark}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**(best)**: the natural-gradient step size of highest mean final return on that env; it alone enters",
        "the rows below as `natural_gradient` (chosen on the same seeds, as the paper did: optimistic for it).",
        "",
        "## Aggregate over envs: IQM with 95% stratified-bootstrap intervals (rliable)",
        "",
        "Scores normalised per env: 0 is the initial policy's return (first rollout, mean over every run of",
        "the env), 1 the best variant's mean final return. IQM over runs and envs; intervals from",
        f"{BOOTSTRAP_REPS} stratified-bootstrap resamples (`rliable.library.get_interval_estimates`, percentile).",
        "",
        "| variant | final return IQM [95% CI] | AUC IQM [95% CI] |",
        "| --- | --- | --- |",
    ]
    for name in sorted(final, key=lambda item: -final[item][0]):
        point, low, high = final[name]
        cell = f"{auc[name][0]:.3f} [{auc[name][1]:.3f}, {auc[name][2]:.3f}]" if name in auc else "-"
        lines.append(f"| {name} | {point:.3f} [{low:.3f}, {high:.3f}] | {cell} |")
    lines += [
        "",
        "## Against single path, per env (raw returns, Welch's 95% interval of the difference of means)",
        "",
        "| variant - single path | measure | " + " | ".join(envs) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in envs) + " |",
    ]
    for variant in MAIN_VARIANTS[1:]:
        for measure in ("final", "auc"):
            cells = []
            for env in envs:
                found = difference_interval(runs, env, variant, "single_path", measure)
                cells.append("-" if found is None else f"{found[0]:+.1f} [{found[1]:+.1f}, {found[2]:+.1f}]")
            if any(cell != "-" for cell in cells):
                lines.append(f"| {variant} | {measure} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Figures",
        "",
        "![IQM of the normalised final return and AUC, 95% intervals](iqm.png)",
        "",
        "![Learning curves: mean over seeds, interquartile band](curves.png)",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if final:
        names = sorted(final, key=lambda name: final[name][0])
        figure, axes = plt.subplots(1, 2, figsize=(10, 0.4 * len(names) + 1.2), sharey=True)
        for axis, table, title in ((axes[0], final, "final return"), (axes[1], auc, "AUC (learning speed)")):
            for row, name in enumerate(names):
                if name in table:
                    point, low, high = table[name]
                    axis.plot([low, high], [row, row], color="tab:blue")
                    axis.plot([point], [row], "o", color="tab:blue")
            axis.set_yticks(range(len(names)), names)
            axis.set_xlabel(f"IQM of normalised {title} (95% CI)")
        figure.tight_layout()
        figure.savefig(out / "iqm.png", dpi=120)
        plt.close(figure)
    kept = kept_runs(runs)
    figure, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for axis, env in zip(axes[0], envs, strict=True):
        for name in MAIN_VARIANTS:
            chosen = [run for run in kept if run["env"] == env and run["variant"] == name and run["curve"]]
            if not chosen:
                continue
            budget = max(run["budget"] for run in chosen)
            grid = np.linspace(budget / 50, budget, 50)
            values = np.array([curve_grid(run) for run in chosen])
            label = name if name != "natural_gradient" else f"natural gradient ({best[env].rsplit('_', 1)[1]})"
            axis.plot(grid, values.mean(axis=0), label=f"{label} ({len(chosen)})")
            axis.fill_between(grid, *np.quantile(values, [0.25, 0.75], axis=0), alpha=0.15)
        axis.set_title(env)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("return (last 10 episodes)")
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=110)
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
