"""
Vine against single path at equal total environment steps (branch steps counted), several seeds.

Both schemes use the same base hyperparameters (the RL Zoo's tuned TRPO settings for the env);
vine adds its ``vine_kwargs``. Budgets are total environment steps, trunk and branches.

    python benchmarks/vine_vs_single_path.py                       # every row x 2 schemes x 5 seeds, 2 processes
    python benchmarks/vine_vs_single_path.py --envs CartPole-v1 --seeds 1 --scale 0.1
    python benchmarks/vine_vs_single_path.py --vine-kwargs '{"branch_share": 0.25}' --out /tmp/share25

Vine runs with ``vine_kwargs`` left to their defaults (plus ``--vine-kwargs``, which every vine run
of the invocation gets). Finished runs are kept in ``<out>/results.json`` and skipped when the
command is run again (same env, scheme, seed and settings), so an interrupted run resumes.
The row ``CartPole-v1-defaults`` is the issue's new-user check: every TRPOPlus argument at its
default (one env, n_steps 2048), vine against single path.

Outputs in ``benchmarks/results/vine/``: ``curves.csv`` (per run and iteration: total steps,
mean return of the last 10 training episodes), ``final_eval.csv`` (deterministic evaluation,
20 episodes on a separately seeded env), ``vine_weights.csv`` (per vine run and iteration: the
combined estimator's weight of the vine part, ``train/vine_weight``, with the variances it came
from), ``vine_vs_single_path.png`` and ``vine_vs_single_path.md`` (its table gives the
distribution of the vine weight over every iteration of every vine run of the row: how much the
vine actually votes).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing as mp
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: rl_zoo3 hyperparams/trpo.yml Hopper-v5 (Hopper-v5 and NoisyHopper-v5)
HOPPER_KWARGS: dict[str, Any] = {
    "n_steps": 1024,
    "batch_size": 128,
    "cg_max_steps": 25,
    "cg_damping": 0.1,
    "n_critic_updates": 20,
    "gae_lambda": 0.95,
    "learning_rate": 1e-3,
}

ENVS: dict[str, dict[str, Any]] = {
    # rl_zoo3 hyperparams/trpo.yml entries; vine: its defaults (see docs/vine.md and docs/benchmarks.md)
    "CartPole-v1-defaults": {
        "env_id": "CartPole-v1",
        "budget": 150_000,
        "normalize": False,
        "n_envs": 1,
        "kwargs": {},
        "vine": {},
    },
    "CartPole-v1": {
        "budget": 150_000,
        "normalize": False,
        "kwargs": {"n_steps": 512, "batch_size": 512, "cg_damping": 1e-3, "gae_lambda": 0.98, "n_critic_updates": 20},
        "vine": {},
    },
    "Acrobot-v1": {
        "budget": 200_000,
        "normalize": True,
        "kwargs": {"n_steps": 1024},
        "vine": {},
    },
    "Pendulum-v1": {
        "budget": 400_000,
        "normalize": False,
        "kwargs": {"n_steps": 1024, "gamma": 0.9, "n_critic_updates": 15, "use_sde": True, "sde_sample_freq": 4},
        "vine": {},
    },
    "Hopper-v5": {
        "budget": 300_000,
        "normalize": True,
        "kwargs": HOPPER_KWARGS,
        "vine": {},
    },
    # the noisy family (sb3_trpo_plus.noisy_envs) at its default noise levels, the zoo's settings of the
    # deterministic task and its budget (issue 26: is vine ahead where the dynamics are noisy?)
    "NoisyCartPole-v1": {
        "budget": 100_000,
        "normalize": False,
        "kwargs": {"n_steps": 512, "batch_size": 512, "cg_damping": 1e-3, "gae_lambda": 0.98, "n_critic_updates": 20},
        "vine": {},
    },
    "NoisyAcrobot-v1": {
        "budget": 100_000,
        "normalize": True,
        "kwargs": {"n_steps": 1024},
        "vine": {},
    },
    "NoisyPendulum-v1": {
        "budget": 100_000,
        "normalize": False,
        "kwargs": {"n_steps": 1024, "gamma": 0.9, "n_critic_updates": 15, "use_sde": True, "sde_sample_freq": 4},
        "vine": {},
    },
    # MuJoCo with action noise inside the env: Hopper-v5's settings above, the family's 100k budget
    "NoisyHopper-v5": {
        "budget": 100_000,
        "normalize": True,
        "kwargs": HOPPER_KWARGS,
        "vine": {},
    },
}


def _make_env(env_id: str, seed: int, normalize: bool, training: bool = True, n_envs: int = 2) -> Any:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    import sb3_trpo_plus.noisy_envs  # noqa: F401  (registers the noisy ids)

    env = make_vec_env(env_id, n_envs=n_envs if training else 1, seed=seed)
    if normalize:
        env = VecNormalize(env, training=training, norm_reward=training)
    return env


EVAL_EPISODES = 20

#: the combined estimator's statistics recorded per iteration (``train/<key>``; ``vine_bias_sq`` only
#: with ``combined_weight="min_mse"``, nan otherwise and in runs recorded before it existed)
WEIGHT_KEYS = ("vine_weight", "grad_variance_trunk", "grad_variance_vine", "grad_variance_vine_bound", "vine_bias_sq")


def iteration_weights(logged: dict[str, Any]) -> dict[str, float] | None:
    """The combined estimator's statistics of one iteration from the logger's values (None when absent)."""
    if "train/vine_weight" not in logged:
        return None
    return {key: float(logged.get(f"train/{key}", np.nan)) for key in WEIGHT_KEYS}


def weight_summary(weights: list[float]) -> dict[str, float]:
    """The distribution of the vine weight over iterations: count, mean, 10/50/90% quantiles, min, max."""
    if not weights:
        return {"n": 0}
    values = np.asarray(weights, dtype=float)
    p10, p50, p90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "p10": float(p10),
        "median": float(p50),
        "p90": float(p90),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def curve_area(result: dict[str, Any], budget: int, points: int = 50) -> float:
    """The training curve's mean over the budget (``points`` evenly spaced steps): learning speed.

    Before the curve's first point its first value is used, after its last point its last.
    """
    steps, values = zip(*result["curve"], strict=True)
    return float(np.mean(np.interp(np.linspace(budget / points, budget, points), steps, values)))


def welch_difference(first: list[float], second: list[float]) -> str:
    """mean(first) - mean(second) with Welch's 95% interval, as table text ('-' under 2 values each)."""
    if len(first) < 2 or len(second) < 2:
        return "-"
    from scipy import stats

    delta = float(np.mean(first) - np.mean(second))
    if np.std(first) == 0 and np.std(second) == 0:
        return f"{delta:+.1f} [{delta:+.1f}, {delta:+.1f}]"
    low, high = stats.ttest_ind(first, second, equal_var=False).confidence_interval(0.95)
    return f"{delta:+.1f} [{low:+.1f}, {high:+.1f}]"


def run(job: tuple[str, str, int, float, str]) -> dict[str, Any]:
    """Train one (row, scheme, seed) and return its curve and final evaluation."""
    row, scheme, seed, scale, vine_json = job
    import torch as th
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_trpo_plus import TRPOPlus

    th.set_num_threads(1)
    spec = ENVS[row]
    env_id = spec.get("env_id", row)
    env = _make_env(env_id, seed, spec["normalize"], n_envs=spec.get("n_envs", 2))
    vine_kwargs = {**spec["vine"], **json.loads(vine_json)}
    extra = {"sampling": "vine", "vine_kwargs": vine_kwargs} if scheme == "vine" else {}
    model = TRPOPlus("MlpPolicy", env, seed=seed, **spec["kwargs"], **extra)
    curve: list[tuple[int, float]] = []
    weights: list[dict[str, float]] = []

    def record_weights() -> None:  # the train/ values of the last update, before the next dump
        found = iteration_weights(model.logger.name_to_value)
        if found is not None:
            weights.append(found)

    class Curve(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            if self.model._n_updates > len(weights):  # type: ignore[attr-defined]
                record_weights()

        def _on_rollout_end(self) -> None:
            episodes = [info["r"] for info in self.model.ep_info_buffer][-10:]
            if episodes:
                curve.append((self.model.num_timesteps, float(np.mean(episodes))))

    started = time.perf_counter()
    budget = int(spec["budget"] * scale)
    model.learn(budget, callback=Curve())
    seconds = time.perf_counter() - started
    if model._n_updates > len(weights):  # the last update's values
        record_weights()
    eval_env = _make_env(env_id, seed + 10_000, spec["normalize"], training=False)
    if spec["normalize"]:
        eval_env.obs_rms = env.obs_rms  # training statistics, frozen
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    return {
        "env": row,
        "scheme": scheme,
        "seed": seed,
        "vine_kwargs": vine_json if scheme == "vine" else "",
        "timesteps": model.num_timesteps,
        "eval_mean": float(mean),
        "eval_std": float(std),
        "seconds": seconds,
        "curve": curve,
        "vine_weights": weights,
    }


def report(results: list[dict[str, Any]], out: Path, commands: list[str]) -> None:
    """Write the CSVs, the figure and the markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    with open(out / "curves.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["env", "scheme", "vine_kwargs", "seed", "timesteps", "return_last10"])
        for result in results:
            for steps, value in result["curve"]:
                writer.writerow([result["env"], result["scheme"], result["vine_kwargs"], result["seed"], steps, value])
    with open(out / "final_eval.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = ("env", "scheme", "vine_kwargs", "seed", "timesteps", "eval_mean", "eval_std", "seconds")
        writer.writerow(keys)
        for result in results:
            writer.writerow([result[k] for k in keys])

    with open(out / "vine_weights.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["env", "seed", "vine_kwargs", "iteration", *WEIGHT_KEYS])
        for result in results:
            for iteration, row in enumerate(result.get("vine_weights", [])):
                settings = result.get("vine_kwargs", "")
                values = [row.get(k, np.nan) for k in WEIGHT_KEYS]
                writer.writerow([result["env"], result["seed"], settings, iteration, *values])

    envs = [env for env in ENVS if any(r["env"] == env for r in results)]
    figure, axes = plt.subplots(1, len(envs), figsize=(4.5 * len(envs), 3.6), squeeze=False)
    lines = [
        "# Vine against single path at equal total environment steps",
        "",
        "Commands (each adds its runs to `results.json`; a run already there is skipped):",
        "",
        *(f"    {command}" for command in commands),
        "",
        "Both schemes: the RL Zoo's TRPO settings for the env (the row",
        "`CartPole-v1-defaults`: every argument at its default); vine adds `sampling='vine'` and the",
        "`vine_kwargs` shown (`{}`: all defaults). Steps are total environment steps, vine's branch steps",
        f"included. Final evaluation: deterministic policy, {EVAL_EPISODES} episodes on a separately seeded env;",
        "mean +- std over seeds, and the 95% confidence interval of the difference of the means (Welch's t).",
        "",
        "vine weight: the combined estimator's weight w of the vine part (`train/vine_weight`), over every",
        "iteration of every vine run of the row: median [10%, 90%] (iterations); '-' where not recorded.",
        "",
        "| env | total steps | vine_kwargs | seeds | single path | vine | vine - single path [95% CI] | "
        "within 1 std of single path | vine weight | single path per seed | vine per seed |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    speed = [
        "",
        "## Learning speed: the training curve's mean over the budget",
        "",
        "Training return (last 10 episodes) averaged over 50 evenly spaced points of the budget, mean +- std",
        "over seeds, and Welch's 95% interval of the difference: a higher value learned sooner.",
        "",
        "| env | total steps | vine_kwargs | seeds | single path | vine | vine - single path [95% CI] |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for axis, env_id in zip(axes[0], envs, strict=True):
        # one line per vine setting of the row, each against the row's single-path runs
        settings = sorted({r.get("vine_kwargs", "") for r in results if r["env"] == env_id and r["scheme"] == "vine"})
        groups = [("single_path", "", "single path")] + [
            ("vine", text, "vine" + ("" if json.loads(text or "{}") == {} else f" {text}")) for text in settings
        ]
        finals: dict[tuple[str, str], list[float]] = {}
        colors = itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])  # more settings than colors: reuse
        for (scheme, text, label), color in zip(groups, colors, strict=False):
            runs = sorted(
                (r for r in results if r["env"] == env_id and r["scheme"] == scheme and r.get("vine_kwargs", "") == text),
                key=lambda r: r["seed"],
            )
            finals[(scheme, text)] = [r["eval_mean"] for r in runs]
            if not runs:
                continue
            grid = np.linspace(0, max(r["timesteps"] for r in runs), 60)
            interpolated = np.array([np.interp(grid, *zip(*r["curve"], strict=True), left=np.nan) for r in runs if r["curve"]])
            mean, std = np.nanmean(interpolated, axis=0), np.nanstd(interpolated, axis=0)
            axis.plot(grid, mean, color=color, label=f"{label} ({len(runs)} seeds)")
            axis.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2)
        axis.set_title(env_id)
        axis.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
        axis.set_xlabel("total environment steps")
        axis.set_ylabel("training return (last 10 episodes)")
        axis.legend(fontsize=7)

        def cell(values: list[float]) -> str:
            return f"{np.mean(values):.1f} +- {np.std(values):.1f}" if values else "-"

        single = finals[("single_path", "")]
        budget = max((r["timesteps"] for r in results if r["env"] == env_id), default=0)
        for text in settings or [""]:
            vine = finals.get(("vine", text), [])
            difference = welch_difference(vine, single)
            within = "-" if difference == "-" else ("yes" if np.mean(vine) - np.mean(single) >= -np.std(single) else "no")
            shown = json.dumps({**ENVS[env_id]["vine"], **json.loads(text or "{}")}) if settings else "-"
            vine_runs = [
                r for r in results if r["env"] == env_id and r["scheme"] == "vine" and r.get("vine_kwargs", "") == text
            ]
            summary = weight_summary([row["vine_weight"] for r in vine_runs for row in r.get("vine_weights", [])])
            voted = "-"
            if summary["n"]:
                voted = f"{summary['median']:.2f} [{summary['p10']:.2f}, {summary['p90']:.2f}] ({summary['n']})"
            areas_single = [
                curve_area(r, budget) for r in results if r["env"] == env_id and r["scheme"] == "single_path" and r["curve"]
            ]
            areas_vine = [curve_area(r, budget) for r in vine_runs if r["curve"]]
            speed.append(
                f"| {env_id} | {budget:,} | `{shown}` | {len(areas_single)} / {len(areas_vine)} | {cell(areas_single)} | "
                f"{cell(areas_vine)} | {welch_difference(areas_vine, areas_single)} |"
            )
            lines.append(
                f"| {env_id} | {budget:,} | `{shown}` | {len(single)} / {len(vine)} | {cell(single)} | {cell(vine)} | "
                f"{difference} | {within} | {voted} | {', '.join(f'{v:.1f}' for v in single)} | "
                f"{', '.join(f'{v:.1f}' for v in vine)} |"
            )
    figure.tight_layout()
    figure.savefig(out / "vine_vs_single_path.png", dpi=110)
    (out / "vine_vs_single_path.md").write_text("\n".join(lines + speed) + "\n")


def read_commands(out: Path) -> list[str]:
    """The commands that wrote ``out/results.json`` (``out/commands.txt``, one per line)."""
    path = out / "commands.txt"
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--schemes", nargs="+", default=["single_path", "vine"], choices=["single_path", "vine"])
    parser.add_argument("--vine-kwargs", default="{}", help="JSON merged into every vine run's vine_kwargs")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every budget")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/vine")
    parser.add_argument("--report-only", action="store_true", help="rebuild the outputs from <out>/results.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report(json.loads((out / "results.json").read_text()), out, read_commands(out))
        return
    command = "python " + " ".join(shlex.quote(arg) for arg in sys.argv)
    if command not in read_commands(out):
        with open(out / "commands.txt", "a") as handle:
            handle.write(command + "\n")
    saved = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else []
    vine_json = json.dumps(json.loads(args.vine_kwargs), sort_keys=True)
    done = {(r["env"], r["scheme"], r["seed"], r.get("vine_kwargs", "")) for r in saved}
    jobs = [
        (env, scheme, seed, args.scale, vine_json)
        for env in args.envs
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for scheme in args.schemes
        if (env, scheme, seed, vine_json if scheme == "vine" else "") not in done
    ]
    print(f"{len(jobs)} runs to do ({len(saved)} kept from {out / 'results.json'})", flush=True)
    # longest first, so that the processes finish together
    jobs.sort(key=lambda job: -ENVS[job[0]]["budget"] * (1.5 if job[0].startswith(("Hopper", "Pendulum")) else 1))
    results = list(saved)
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for result in pool.imap_unordered(run, jobs):
            summary = f"{result['eval_mean']:.1f} after {result['timesteps']} steps ({result['seconds']:.0f} s)"
            print(f"{result['env']} {result['scheme']} seed {result['seed']}: {summary}", flush=True)
            results.append(result)
            (out / "results.json").write_text(json.dumps(results))
    report(results, out, read_commands(out))


if __name__ == "__main__":
    main()
