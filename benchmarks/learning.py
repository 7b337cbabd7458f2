"""
Learning curves and final evaluation returns: TRPOPlus against sb3-contrib's TRPO at the RL
Zoo's tuned TRPO hyperparameters, several seeds, runs in parallel processes.

    python benchmarks/learning.py                                   # full suite, zoo budgets, 3 seeds
    python benchmarks/learning.py --budget-scale 0.25 --jobs 2      # every budget cut to a quarter
    python benchmarks/learning.py --envs CartPole-v1 --timesteps CartPole-v1=5000 --seeds 1

Configurations (``--configs``): ``trpo_plus`` (TRPOPlus defaults), ``sb3_trpo`` (sb3-contrib's
TRPO), ``trpo_plus_vine`` (TRPOPlus ``sampling="vine"`` with its default ``vine_kwargs``), and
any of them with constructor overrides: ``NAME:key=value,key=value`` (values are Python
literals), e.g. ``trpo_plus:fvp_subsample=0.1``. A configuration the installed TRPOPlus rejects
at construction is skipped with its error message.

Environments: CartPole-v1, Pendulum-v1, LunarLander-v3, Hopper-v5, HalfCheetah-v5, Walker2d-v5
with the zoo's trpo.yml settings (:mod:`zoo_settings`). ``normalize: true`` (the MuJoCo block)
wraps the training env in VecNormalize; evaluation then uses a copy of the training
observation statistics, frozen (``training=False``), and raw rewards.

Budgets: the zoo's ``n_timesteps`` times ``--budget-scale``, or ``--timesteps ENV=N``. Vine
branch steps are real environment steps and count in the budget.

Per run (in ``<out>/runs/``, so an interrupted suite resumes with ``--resume``): the curve, one
row per iteration: timesteps, mean return of the episodes finished in that iteration and of the
last 10 finished episodes (from the Monitor's episode statistics); the final evaluation:
deterministic policy, ``--eval-episodes`` episodes (default 10) on a separate env seeded with
seed + 10000. Aggregated in ``<out>``: ``curves.csv``, ``final_eval.csv``, ``learning.png``
(mean +- std over seeds of the last-10-episode return) and ``learning.md`` (table with the
commands, the budgets and published reference numbers).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import BLAS_THREADS  # noqa: I001  (first: sets the BLAS thread count before NumPy loads)

import argparse
import shlex
import ast
import concurrent.futures
import copy
import json
import multiprocessing
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from zoo_settings import ZOO_TRPO, algo_kwargs, make_env, settings

from sb3_trpo_plus.settings import FORMER_VINE_DEFAULTS

ENVS = ("CartPole-v1", "Pendulum-v1", "LunarLander-v3", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5")
BASE_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "trpo_plus": ("TRPOPlus", {}),
    "sb3_trpo": ("TRPO", {}),
    # the committed results were measured with the vine defaults of the time
    "trpo_plus_vine": ("TRPOPlus", {"sampling": "vine", "vine_kwargs": FORMER_VINE_DEFAULTS}),
}
DEFAULT_CONFIGS = ("trpo_plus", "sb3_trpo", "trpo_plus_vine")

# Published reference numbers, with their budgets and sources (looked up, not measured here).
ZOO_SOURCE = (
    "rl-baselines3-zoo benchmark.md (github.com/DLR-RM/rl-baselines3-zoo, commit 0088472b): one trained agent, "
    "deterministic evaluation over ~150k steps, mean +- std over evaluation episodes; older env versions"
)
ZOO_PUBLISHED = {
    "CartPole-v1": "500.0 +- 0.0 (CartPole-v1, 100k)",
    "Pendulum-v1": "-174.6 +- 127.6 (Pendulum-v1, 100k)",
    "LunarLander-v3": "133.2 +- 112.2 (LunarLander-v2, 200k)",
    "Hopper-v5": "3618.4 +- 356.8 (Hopper-v3, 1M)",
    "HalfCheetah-v5": "1785.5 +- 68.7 (HalfCheetah-v3, 1M)",
    "Walker2d-v5": "4933.1 +- 1452.5 (Walker2d-v3, 1M)",
}
TIANSHOU_SOURCE = (
    "Tianshou examples/mujoco/README.md, TRPO table (github.com/thu-ml/tianshou, commit 1da9b86c): "
    "max over training of the average return on 10 test episodes, mean +- std over 10 seeds, first 1M steps, "
    "gym MuJoCo -v3; Tianshou's own TRPO hyperparameters (not the zoo's)"
)
TIANSHOU_PUBLISHED = {
    "Hopper-v5": "2046.0 +- 1037.9 (Hopper-v3, 1M)",
    "HalfCheetah-v5": "4471.2 +- 804.9 (HalfCheetah-v3, 1M)",
    "Walker2d-v5": "3826.7 +- 782.7 (Walker2d-v3, 1M)",
}
NOT_IN_TIANSHOU = "not in Tianshou's table (MuJoCo only)"


@dataclass
class RunSpec:
    env_id: str
    config: str
    seed: int
    timesteps: int
    eval_episodes: int
    out: str
    command: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        safe = self.config.replace(":", "__").replace("=", "-").replace(",", "_").replace("/", "-")
        return f"{self.env_id}__{safe}__seed{self.seed}"


def parse_config(config: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,...`` -> (algorithm class name, constructor overrides)."""
    base, _, overrides = config.partition(":")
    if base not in BASE_CONFIGS:
        raise ValueError(f"unknown configuration {base!r}; known: {sorted(BASE_CONFIGS)}")
    algo, kwargs = BASE_CONFIGS[base]
    kwargs = copy.deepcopy(kwargs)
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return algo, kwargs


class CurveRecorder(BaseCallback):
    """Per iteration: timesteps and the returns of episodes finished so far (Monitor statistics in ``infos``)."""

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[float] = []
        self.iteration_start = 0
        self.rows: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.episodes.append(float(info["episode"]["r"]))
        return True

    def _on_rollout_end(self) -> None:
        new = self.episodes[self.iteration_start :]
        self.iteration_start = len(self.episodes)
        self.rows.append(
            {
                "timesteps": self.num_timesteps,
                "episodes": len(self.episodes),
                "ep_return_iter": float(np.mean(new)) if new else float("nan"),
                "ep_return_last10": float(np.mean(self.episodes[-10:])) if self.episodes else float("nan"),
            }
        )


def evaluate(model: Any, train_env: Any, env_id: str, seed: int, n_episodes: int) -> tuple[float, float]:
    """Deterministic evaluation; VecNormalize statistics copied from training and frozen."""
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if isinstance(train_env, VecNormalize):
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, gamma=train_env.gamma)
        eval_env.obs_rms = copy.deepcopy(train_env.obs_rms)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_episodes, deterministic=True, return_episode_rewards=True)
    eval_env.close()
    return float(np.mean(returns)), float(np.std(returns))


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train and evaluate one (env, config, seed); write its result file and return its summary."""
    th.set_num_threads(1)
    from sb3_contrib import TRPO

    from sb3_trpo_plus import TRPOPlus

    classes = {"TRPO": TRPO, "TRPOPlus": TRPOPlus}
    algo, overrides = parse_config(spec.config)
    result: dict[str, Any] = {"spec": asdict(spec), "name": spec.name}
    env = make_env(spec.env_id, spec.seed)
    kwargs = {**algo_kwargs(spec.env_id), **overrides}
    try:
        model = classes[algo](settings(spec.env_id)["policy"], env, seed=spec.seed, device="cpu", **kwargs)
    except (ValueError, NotImplementedError, TypeError) as error:
        env.close()
        result["skipped"] = f"{algo}({', '.join(f'{k}={v!r}' for k, v in overrides.items())}) rejected: {error}"
        print(f"SKIP {spec.name}: {result['skipped']}", flush=True)
        return result
    recorder = CurveRecorder()
    start = time.perf_counter()
    model.learn(total_timesteps=spec.timesteps, callback=recorder)
    result["train_seconds"] = time.perf_counter() - start
    result["timesteps"] = int(model.num_timesteps)
    result["curve"] = recorder.rows
    result["eval_mean"], result["eval_std"] = evaluate(model, env, spec.env_id, spec.seed, spec.eval_episodes)
    result["eval_episodes"] = spec.eval_episodes
    env.close()
    path = Path(spec.out) / "runs" / f"{spec.name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(
        f"done {spec.name}: eval {result['eval_mean']:.1f} +- {result['eval_std']:.1f} "
        f"after {result['timesteps']} steps in {result['train_seconds']:.0f} s",
        flush=True,
    )
    return result


def budgets(envs: list[str], scale: float, overrides: list[str]) -> dict[str, int]:
    out = {env_id: round(settings(env_id)["n_timesteps"] * scale) for env_id in envs}
    for item in overrides:
        env_id, _, value = item.partition("=")
        if env_id not in out:
            raise ValueError(f"--timesteps {item!r}: {env_id!r} is not among --envs")
        out[env_id] = int(float(value))
    return out


def aggregate(results: list[dict[str, Any]], out: Path, commands: list[str], budget: dict[str, int]) -> None:
    done = [r for r in results if "skipped" not in r]
    skipped = sorted({r["skipped"] for r in results if "skipped" in r})
    curve_rows, final_rows = [], []
    for r in done:
        spec = r["spec"]
        ident = {"env": spec["env_id"], "config": spec["config"], "seed": spec["seed"]}
        curve_rows += [{**ident, **row} for row in r["curve"]]
        final_rows.append(
            {
                **ident,
                "timesteps": r["timesteps"],
                "eval_mean": r["eval_mean"],
                "eval_std": r["eval_std"],
                "eval_episodes": r["eval_episodes"],
                "train_seconds": r["train_seconds"],
            }
        )
    curves = pd.DataFrame(curve_rows)
    finals = pd.DataFrame(final_rows)
    curves.to_csv(out / "curves.csv", index=False)
    finals.to_csv(out / "final_eval.csv", index=False)
    if not finals.empty:
        plot(curves, out / "learning.png")
    (out / "learning.md").write_text(markdown(finals, skipped, commands, budget))


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    envs = list(dict.fromkeys(curves.env))
    cols = min(3, len(envs))
    rows = (len(envs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, env_id in zip(axes.flat, envs, strict=False):
        part = curves[curves.env == env_id]
        grid = np.linspace(0, part.timesteps.max(), 100)
        for config in dict.fromkeys(part.config):
            runs = []
            for _, run in part[part.config == config].groupby("seed"):
                valid = run.dropna(subset=["ep_return_last10"])
                if len(valid) >= 1:
                    y = np.interp(grid, valid.timesteps, valid.ep_return_last10, left=np.nan, right=np.nan)
                    runs.append(y)
            if not runs:
                continue
            data = np.array(runs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # grid points before a seed's first episode
                mean, std = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
            ax.plot(grid, mean, label=f"{config} ({len(runs)} seeds)")
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        ax.set_title(env_id)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel("environment steps")
        ax.set_ylabel("return (last 10 episodes)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(envs) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(finals: pd.DataFrame, skipped: list[str], commands: list[str], budget: dict[str, int]) -> str:
    lines = [
        "# Learning: TRPOPlus vs sb3-contrib TRPO (zoo hyperparameters)",
        "",
        "Made by:",
        "",
        *[f"    {command}" for command in commands],
        "",
        "Final return: deterministic policy, evaluated after training on a separate env (VecNormalize statistics",
        "frozen), mean over evaluation episodes per seed; the table gives the mean +- std of that over seeds.",
        "Curves: `curves.csv` and `learning.png` (return of the last 10 training episodes, mean +- std over seeds).",
        "",
        "| env | config | steps (zoo budget) | seeds | final return | zoo published (sb3-contrib TRPO) | Tianshou TRPO |",
        "| --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    if not finals.empty:
        for (env_id, config), part in finals.groupby(["env", "config"], sort=False):
            steps = int(part.timesteps.median())
            zoo_budget = ZOO_TRPO[env_id]["n_timesteps"]
            cut = "" if steps >= zoo_budget else " **cut**"
            lines.append(
                f"| {env_id} | {config} | {steps:,} ({zoo_budget:,}){cut} | {len(part)} "
                f"| {part.eval_mean.mean():.1f} +- {part.eval_mean.std(ddof=0):.1f} "
                f"| {ZOO_PUBLISHED.get(env_id, 'not found')} | {TIANSHOU_PUBLISHED.get(env_id, NOT_IN_TIANSHOU)} |"
            )
    lines += ["", f"Zoo column: {ZOO_SOURCE}.", "", f"Tianshou column: {TIANSHOU_SOURCE}.", ""]
    if skipped:
        lines += ["Skipped configurations:", "", *[f"- {s}" for s in skipped], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=sorted(ZOO_TRPO))
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="NAME or NAME:key=value,...")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. N-1, shifted by --seed-offset)")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies the zoo's n_timesteps")
    parser.add_argument("--timesteps", nargs="*", default=[], metavar="ENV=N", help="per-env budget override")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs found in <out>/runs")
    parser.add_argument("--blas-threads", default="1", help="BLAS threads per process (read before NumPy loads)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "learning"))
    args = parser.parse_args()
    if args.eval_episodes < 1:
        parser.error("--eval-episodes must be >= 1")
    for config in args.configs:
        parse_config(config)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    budget = budgets(args.envs, args.budget_scale, args.timesteps)
    command = "python " + shlex.join(sys.argv)
    specs = [
        RunSpec(env_id, config, args.seed_offset + s, budget[env_id], args.eval_episodes, str(out), command)
        for env_id in args.envs
        for config in args.configs
        for s in range(args.seeds)
    ]
    results, todo = [], []
    for spec in specs:
        path = out / "runs" / f"{spec.name}.json"
        if args.resume and path.exists():
            previous = json.loads(path.read_text())
            if previous["spec"]["timesteps"] == spec.timesteps:
                results.append(previous)
                continue
        todo.append(spec)
    print(f"{len(todo)} runs to do, {len(results)} reused; BLAS threads {BLAS_THREADS}, jobs {args.jobs}", flush=True)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        results += list(pool.map(run_one, todo))
    commands = list(dict.fromkeys(r["spec"]["command"] for r in results))
    aggregate(results, out, commands, budget)
    print((out / "learning.md").read_text())


if __name__ == "__main__":
    main()
