"""
TRPOPlus against sb3-contrib's TRPO at the RL Zoo's budgets and hyperparameters, reported with
rliable-style statistics beside the zoo's published TRPO numbers.

    python benchmarks/zoo_budgets.py run --workers 2               # 10 envs x 2 algos x 5 seeds, zoo budgets, then analyze
    python benchmarks/zoo_budgets.py run --envs Hopper-v5 --seeds 10  # more seeds for one env (finished runs are kept)
    python benchmarks/zoo_budgets.py analyze                        # tables and pictures from the finished runs
    python benchmarks/zoo_budgets.py run --smoke                    # 2 envs x 2 algos x 2 seeds, tiny budgets

**Runs.** Each (algorithm, env, seed) is one ``trpo-plus-zoo train`` process (``python -m
sb3_trpo_plus.zoo train --algo {trpo_plus|trpo} --env ENV --seed S -conf pkg:trpo_plus ...``): both
algorithms read the same hyperparameter file, the package's ``trpo_plus.yml``, which is rl_zoo3's
``trpo.yml`` with Gymnasium 1.x env ids (MuJoCo -v5, LunarLander-v3), budget included (1M steps
for MuJoCo and BipedalWalker, 100k-200k for classic control and LunarLander). rl_zoo3's
EvalCallback evaluates the deterministic policy every ``budget / --eval-points`` steps on
``--eval-episodes`` episodes (VecNormalize statistics synced, rewards unnormalised). A finished
run leaves ``<out>/per_run/<algo>__<env>__seed<S>.json`` (its command, evaluation curve, final score
= mean return of the last evaluation, wall time); a run whose file exists is skipped, so an
interrupted suite resumes by running the same command. ``--workers`` runs that many processes at
once (one torch/BLAS thread each); a progress line reports finished/running runs, the running
runs' progress (from their evaluations so far) and an ETA. rl_zoo3's logs (models, Monitor files)
go to ``<out>/logs/`` (not committed).

**Analysis** (``analyze``, also at the end of ``run``), in ``<out>/``:

- ``per_seed.csv``: every run's final score; ``curves.csv``: every evaluation of every run;
  ``commands.txt``: the exact commands;
- per env, the interquartile mean (IQM) over seeds of the final score with a 95% bootstrap
  confidence interval (percentile, ``--reps`` resamples), for each algorithm, beside the zoo's
  published TRPO score (``report.md``);
- aggregates over envs, on scores normalised per env as (score - random) / (published - random),
  random = mean return of a uniform random policy (measured once per env, ``random_scores.json``),
  published = rl-baselines3-zoo's TRPO score: IQM, median, mean and optimality gap with 95%
  *stratified* bootstrap CIs (runs resampled within each env), and the probability that a TRPOPlus
  run beats an sb3-contrib run on the same env, with its CI (``aggregates.png``);
- performance profiles: fraction of runs whose normalised score exceeds tau, with CI bands
  (``performance_profile.png``);
- sample-efficiency curves: IQM of the normalised evaluation score at 5%, 10%, ..., 100% of each
  env's budget, with CIs (``sample_efficiency.png``), and per-env mean curves (``curves.png``).

rliable 1.2's ``metrics`` (IQM, optimality gap) and ``plot_utils`` are used; its ``library`` module
(the bootstrap) needs ``arch < 8``, which does not import under pandas 3, so the stratified
bootstrap is re-implemented here (``stratified_bootstrap_ci``: the same percentile method, runs
resampled with replacement within each task).

Published numbers: rl-baselines3-zoo ``benchmark.md`` (github.com/DLR-RM/rl-baselines3-zoo, commit
0088472b): one trained agent per env, deterministic evaluation over ~150k steps, mean +- std over
the evaluation episodes, older env versions (MuJoCo -v3, LunarLander-v2). They are single agents,
not seed statistics: beside ours, not comparable to our CIs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import BLAS_THREADS  # noqa: I001  (first: sets the BLAS thread count before NumPy loads)

import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "zoo_budgets"
#: one result file per finished run, in <out>/per_run/ (committed; the repository ignores runs/ folders)
RUNS_DIR = "per_run"
ENVS = (
    "CartPole-v1",
    "Pendulum-v1",
    "Acrobot-v1",
    "LunarLander-v3",
    "BipedalWalker-v3",
    "Hopper-v5",
    "HalfCheetah-v5",
    "Walker2d-v5",
    "Ant-v5",
    "Swimmer-v5",
)
#: rl_zoo3 algorithm name -> label in tables and pictures
ALGOS = {"trpo_plus": "TRPOPlus", "trpo": "sb3-contrib TRPO"}
SMOKE_ENVS = ("CartPole-v1", "Pendulum-v1")
SMOKE_BUDGET = 4096

PUBLISHED_SOURCE = (
    "rl-baselines3-zoo benchmark.md (github.com/DLR-RM/rl-baselines3-zoo, commit 0088472b), sb3-contrib TRPO: "
    "one trained agent per env, deterministic evaluation over ~150k steps, mean +- std over evaluation episodes"
)
#: env -> (mean, std, zoo's env id, budget) from PUBLISHED_SOURCE
PUBLISHED: dict[str, tuple[float, float, str, str]] = {
    "CartPole-v1": (500.000, 0.000, "CartPole-v1", "100k"),
    "Pendulum-v1": (-174.631, 127.577, "Pendulum-v1", "100k"),
    "Acrobot-v1": (-83.114, 18.648, "Acrobot-v1", "100k"),
    "LunarLander-v3": (133.166, 112.173, "LunarLander-v2", "200k"),
    "BipedalWalker-v3": (182.339, 145.570, "BipedalWalker-v3", "1M"),
    "Hopper-v5": (3618.386, 356.768, "Hopper-v3", "1M"),
    "HalfCheetah-v5": (1785.476, 68.672, "HalfCheetah-v3", "1M"),
    "Walker2d-v5": (4933.148, 1452.538, "Walker2d-v3", "1M"),
    "Ant-v5": (4982.301, 663.761, "Ant-v3", "1M"),
    "Swimmer-v5": (365.663, 2.087, "Swimmer-v3", "1M"),
}
#: fractions of the budget of the sample-efficiency curves
FRACTIONS = np.round(np.arange(1, 21) / 20, 2)
TAUS = np.linspace(-0.25, 1.5, 71)


# ----------------------------------------------------------------------------- runs


def zoo_budget(env_id: str) -> int:
    """The zoo's ``n_timesteps`` of the env (the package's shipped ``trpo_plus.yml``)."""
    from sb3_trpo_plus.zoo import resolve_config

    hyperparams = yaml.safe_load(Path(resolve_config("pkg:trpo_plus")).read_text())
    return int(float(hyperparams[env_id]["n_timesteps"]))


@dataclass(frozen=True)
class Run:
    algo: str
    env: str
    seed: int
    budget: int
    eval_points: int
    eval_episodes: int
    budget_is_zoo: bool

    @property
    def name(self) -> str:
        return f"{self.algo}__{self.env}__seed{self.seed}"

    def command(self, out: Path) -> list[str]:
        """The command, run from the repository root (``out`` relative to it when inside)."""
        out = Path(os.path.relpath(out.resolve(), REPO)) if out.resolve().is_relative_to(REPO) else out.resolve()
        args = [
            "python", "-m", "sb3_trpo_plus.zoo", "train", "--algo", self.algo, "--env", self.env, "-conf", "pkg:trpo_plus",
            "--seed", str(self.seed), "-f", str(out / "logs" / self.name), "--eval-freq", str(self.budget // self.eval_points),
            "--eval-episodes", str(self.eval_episodes), "--n-eval-envs", "1", "--num-threads", "1", "--verbose", "0",
        ]  # fmt: skip
        if not self.budget_is_zoo:
            args += ["-n", str(self.budget)]
        return args


def run_one(run: Run, out: Path) -> dict[str, Any]:
    """Train and evaluate one run in a ``trpo-plus-zoo train`` process; write and return its result."""
    command = run.command(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{run.name} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    (evaluations,) = (out / "logs" / run.name / run.algo).glob(f"{run.env}_*/evaluations.npz")
    data = np.load(evaluations)
    record = {
        **asdict(run),
        "command": shlex.join(command),
        "timesteps": data["timesteps"].tolist(),
        "eval_mean": data["results"].mean(axis=1).tolist(),
        "final": float(data["results"][-1].mean()),
        "seconds": seconds,
    }
    path = out / RUNS_DIR / f"{run.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)  # a run is done once its file exists
    return record


def _progress(run: Run, out: Path) -> float:
    """Share of a running run's budget reached at its last evaluation (0 before the first)."""
    for path in (out / "logs" / run.name / run.algo).glob(f"{run.env}_*/evaluations.npz"):
        try:
            return float(np.load(path)["timesteps"][-1]) / run.budget
        except (OSError, ValueError, KeyError, IndexError):
            return 0.0
    return 0.0


def run_all(runs: list[Run], out: Path, workers: int, say: Callable[[str], None] = print) -> list[str]:
    """Run the runs without a result file, ``workers`` at a time, with a progress display; return the failures."""
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    todo = [run for run in runs if not (out / RUNS_DIR / f"{run.name}.json").is_file()]
    say(f"{len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to do; {workers} workers (BLAS {BLAS_THREADS})")
    started: dict[str, tuple[Run, float]] = {}
    lock = threading.Lock()
    failures: list[str] = []
    done_seconds: list[float] = []
    begin = time.perf_counter()

    def work(run: Run) -> dict[str, Any]:
        with lock:
            started[run.name] = (run, time.perf_counter())
        try:
            return run_one(run, out)
        finally:
            with lock:
                started.pop(run.name, None)

    def status() -> str:
        with lock:
            running = [f"{run.name} {100 * _progress(run, out):.0f}%" for run, _ in started.values()]
        finished = len(done_seconds) + len(failures)
        eta = ""
        if done_seconds:
            remaining = (len(todo) - finished) * float(np.mean(done_seconds)) / max(workers, 1)
            eta = f", ETA {remaining / 60:.0f} min"
        elapsed = time.perf_counter() - begin
        head = f"[{finished}/{len(todo)} finished, {len(failures)} failed, {elapsed:.0f} s{eta}]"
        return f"{head} running: " + (", ".join(running) or "-")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(work, run): run for run in todo}
        pending = set(futures)
        while pending:
            finished_now, pending = concurrent.futures.wait(
                pending, timeout=30, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished_now:
                run = futures[future]
                try:
                    record = future.result()
                    done_seconds.append(record["seconds"])
                    say(f"done {run.name}: final {record['final']:.1f} in {record['seconds']:.0f} s")
                except RuntimeError as error:
                    failures.append(str(error))
                    say(f"FAILED {error}")
            say(status())
    return failures


def random_scores(envs: Sequence[str], out: Path, episodes: int = 10) -> dict[str, float]:
    """Mean return of a uniform random policy per env (cached in ``random_scores.json``)."""
    import gymnasium as gym

    path = out / "random_scores.json"
    scores: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
    for env_id in envs:
        if env_id in scores:
            continue
        env = gym.make(env_id)
        env.action_space.seed(0)
        returns = []
        for episode in range(episodes):
            env.reset(seed=episode)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        env.close()
        scores[env_id] = float(np.mean(returns))
    path.write_text(json.dumps(scores, indent=1))
    return scores


# ----------------------------------------------------------------------------- statistics


def iqm(values: np.ndarray) -> float:
    """Interquartile mean (rliable's ``aggregate_iqm``: the mean of the middle 50%)."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(np.asarray(values, dtype=float).reshape(-1)))


def stratified_bootstrap_ci(
    tasks: Sequence[np.ndarray],
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Point estimate and percentile confidence interval of ``statistic`` under the stratified
    bootstrap: each resample draws, within every task, as many runs as it has, with replacement.

    :param tasks: one array of run scores per task (strata; sizes may differ)
    :param statistic: maps a list of per-task arrays to a vector
    :return: (estimate, interval of shape (2, len(estimate)))
    """
    rng = np.random.default_rng(seed)
    tasks = [np.asarray(task, dtype=float) for task in tasks]
    estimate = np.atleast_1d(statistic(tasks))
    samples = np.empty((reps, estimate.size))
    for rep in range(reps):
        samples[rep] = np.atleast_1d(statistic([task[rng.integers(0, len(task), len(task))] for task in tasks]))
    tail = 100 * (1 - confidence) / 2
    return estimate, np.percentile(samples, [tail, 100 - tail], axis=0)


def flat(statistic: Callable[[np.ndarray], float]) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A statistic of all runs of all tasks together."""
    return lambda tasks: np.array([statistic(np.concatenate(tasks))])


def optimality_gap(values: np.ndarray) -> float:
    from rliable import metrics

    return float(metrics.aggregate_optimality_gap(np.asarray(values).reshape(1, -1), gamma=1.0))


AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "IQM": iqm,
    "Median": lambda values: float(np.median(values)),
    "Mean": lambda values: float(np.mean(values)),
    "Optimality gap": optimality_gap,
}


def probability_of_improvement(x_tasks: Sequence[np.ndarray], y_tasks: Sequence[np.ndarray]) -> float:
    """Mean over tasks of P(X > Y) + P(X = Y) / 2, X a run of the first algorithm, Y of the second."""
    values = []
    for x, y in zip(x_tasks, y_tasks, strict=True):
        diff = np.asarray(x)[:, None] - np.asarray(y)[None, :]
        values.append(float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0)))
    return float(np.mean(values))


def poi_ci(x_tasks: list[np.ndarray], y_tasks: list[np.ndarray], reps: int, seed: int = 0) -> tuple[float, np.ndarray]:
    """Probability of improvement and its stratified-bootstrap CI (both algorithms resampled per task)."""
    n = len(x_tasks)
    estimate, interval = stratified_bootstrap_ci(
        [*x_tasks, *y_tasks], lambda tasks: np.array([probability_of_improvement(tasks[:n], tasks[n:])]), reps, seed=seed
    )
    return float(estimate[0]), interval[:, 0]


def normalise(score: np.ndarray | float, env_id: str, random: dict[str, float]) -> np.ndarray:
    """0 = uniform random policy, 1 = the zoo's published TRPO score."""
    low, high = random[env_id], PUBLISHED[env_id][0]
    return (np.asarray(score, dtype=float) - low) / (high - low)


# ----------------------------------------------------------------------------- analysis


def load_runs(out: Path) -> pd.DataFrame:
    records = [json.loads(path.read_text()) for path in sorted((out / RUNS_DIR).glob("*.json"))]
    return pd.DataFrame(records)


def analyze(
    out: Path, reps: int = 2000, random: dict[str, float] | None = None, runs: pd.DataFrame | None = None
) -> dict[str, Any]:
    """
    Tables and pictures from the finished runs (see the module docstring).

    :param out: results folder (``per_run/`` inside it; outputs written there)
    :param reps: bootstrap resamples
    :param random: random-policy score per env (default: measured, ``random_scores.json``)
    :param runs: the runs (default: read from ``out/per_run``)
    :return: the numbers of the report (per env and aggregate)
    """
    runs = load_runs(out) if runs is None else runs
    if runs.empty:
        raise SystemExit(f"no finished runs in {out / 'runs'}")
    envs = [env for env in ENVS if env in set(runs.env)]
    algos = [algo for algo in ALGOS if algo in set(runs.algo)]
    random = random if random is not None else random_scores(envs, out)

    per_seed = runs[["algo", "env", "seed", "budget", "final", "seconds"]].sort_values(["env", "algo", "seed"])
    per_seed.to_csv(out / "per_seed.csv", index=False)
    curve_rows = [
        {"algo": r.algo, "env": r.env, "seed": r.seed, "timesteps": t, "eval_mean": m}
        for r in runs.itertuples()
        for t, m in zip(r.timesteps, r.eval_mean, strict=True)
    ]
    pd.DataFrame(curve_rows).to_csv(out / "curves.csv", index=False)
    (out / "commands.txt").write_text("\n".join(sorted(runs.command)) + "\n")

    # per env: IQM over seeds, bootstrap CI (one stratum)
    per_env: dict[str, dict[str, Any]] = {}
    for env_id in envs:
        per_env[env_id] = {}
        for index, algo in enumerate(algos):
            scores = runs[(runs.env == env_id) & (runs.algo == algo)].final.to_numpy()
            if len(scores) == 0:
                continue
            estimate, interval = stratified_bootstrap_ci([scores], flat(iqm), reps, seed=index)
            per_env[env_id][algo] = {
                "iqm": float(estimate[0]),
                "ci": interval[:, 0].tolist(),
                "seeds": len(scores),
                "budget": int(runs[(runs.env == env_id) & (runs.algo == algo)].budget.max()),
            }

    # aggregates over envs on normalised scores (stratified by env)
    normalised = {
        algo: [normalise(runs[(runs.env == e) & (runs.algo == algo)].final.to_numpy(), e, random) for e in envs]
        for algo in algos
    }
    complete = {algo: tasks for algo, tasks in normalised.items() if all(len(task) for task in tasks)}
    aggregates: dict[str, dict[str, Any]] = {}
    for index, (algo, tasks) in enumerate(complete.items()):
        aggregates[algo] = {}
        for name, function in AGGREGATES.items():
            estimate, interval = stratified_bootstrap_ci(tasks, flat(function), reps, seed=10 + index)
            aggregates[algo][name] = {"estimate": float(estimate[0]), "ci": interval[:, 0].tolist()}
    poi = None
    if set(complete) == {"trpo_plus", "trpo"}:
        value, interval = poi_ci(complete["trpo_plus"], complete["trpo"], reps)
        poi = {"estimate": value, "ci": interval.tolist()}

    profiles = {
        algo: stratified_bootstrap_ci(
            tasks, lambda ts: np.array([np.mean(np.concatenate(ts) > tau) for tau in TAUS]), max(reps // 4, 100), seed=20
        )
        for algo, tasks in complete.items()
    }
    efficiency = sample_efficiency(runs, envs, algos, random, reps)

    report = {"per_env": per_env, "aggregates": aggregates, "probability_of_improvement": poi, "random_scores": random}
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    plots(out, runs, envs, algos, aggregates, profiles, efficiency)
    (out / "report.md").write_text(markdown(report, runs, envs, algos))
    return report


def sample_efficiency(
    runs: pd.DataFrame, envs: list[str], algos: list[str], random: dict[str, float], reps: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """IQM (and CI) over envs x seeds of the normalised evaluation score at each fraction of the budget."""
    result = {}
    for index, algo in enumerate(algos):
        tasks = []  # per env: (runs, fractions) normalised scores, interpolated at the fractions
        for env_id in envs:
            part = runs[(runs.env == env_id) & (runs.algo == algo)]
            if part.empty:
                break
            rows = [
                np.interp(FRACTIONS * r.budget, r.timesteps, normalise(np.array(r.eval_mean), env_id, random))
                for r in part.itertuples()
            ]
            tasks.append(np.array(rows))
        else:
            estimate, interval = stratified_bootstrap_ci_rows(tasks, max(reps // 4, 100), seed=30 + index)
            result[algo] = (estimate, interval)
    return result


def stratified_bootstrap_ci_rows(tasks: list[np.ndarray], reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`stratified_bootstrap_ci` for a column-wise IQM of per-task (runs, points) arrays."""
    from scipy.stats import trim_mean

    rng = np.random.default_rng(seed)

    def statistic(parts: list[np.ndarray]) -> np.ndarray:
        return np.asarray(trim_mean(np.concatenate(parts, axis=0), 0.25, axis=0))

    estimate = statistic(tasks)
    samples = np.array(
        [statistic([task[rng.integers(0, len(task), len(task))] for task in tasks]) for _ in range(reps)]
    )
    return estimate, np.percentile(samples, [2.5, 97.5], axis=0)


def plots(
    out: Path,
    runs: pd.DataFrame,
    envs: list[str],
    algos: list[str],
    aggregates: dict[str, dict[str, Any]],
    profiles: dict[str, tuple[np.ndarray, np.ndarray]],
    efficiency: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter
    from rliable import plot_utils

    labels = {algo: ALGOS[algo] for algo in algos}
    colors = dict(zip([labels[a] for a in algos], ["tab:blue", "tab:orange"], strict=False))

    def legend(ax: Any, shown: Sequence[str], loc: str) -> None:
        handles = [Line2D([0], [0], color=colors[labels[a]], linewidth=2) for a in shown]
        ax.legend(handles, [labels[a] for a in shown], loc=loc, fontsize=8)

    if aggregates:
        names = list(AGGREGATES)
        point = {labels[a]: np.array([aggregates[a][n]["estimate"] for n in names]) for a in aggregates}
        interval = {labels[a]: np.array([aggregates[a][n]["ci"] for n in names]).T for a in aggregates}
        fig, _ = plot_utils.plot_interval_estimates(
            point, interval, metric_names=names, algorithms=list(point), colors=colors, xlabel="", row_height=0.6
        )
        fig.suptitle("normalised score (0 random policy, 1 zoo's published TRPO), 95% stratified bootstrap CIs", y=1.12)
        fig.savefig(out / "aggregates.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    if profiles:
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_utils.plot_performance_profiles(
            {labels[a]: p[0] for a, p in profiles.items()},
            TAUS,
            performance_profile_cis={labels[a]: p[1] for a, p in profiles.items()},
            colors=colors,
            xlabel=r"normalised score $\tau$ (0 random, 1 zoo's published TRPO)",
            ax=ax,
        )
        legend(ax, list(profiles), "upper right")
        fig.savefig(out / "performance_profile.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    if efficiency:
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_utils.plot_sample_efficiency_curve(
            FRACTIONS * 100,
            {labels[a]: e[0] for a, e in efficiency.items()},
            {labels[a]: e[1] for a, e in efficiency.items()},
            algorithms=[labels[a] for a in efficiency],
            colors=colors,
            xlabel="% of the run's budget (the zoo's, except with --smoke or --timesteps)",
            ylabel="IQM normalised score",
            ax=ax,
        )
        legend(ax, list(efficiency), "lower right")
        fig.savefig(out / "sample_efficiency.png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    cols = min(5, len(envs))
    rows = (len(envs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, env_id in zip(axes.flat, envs, strict=False):
        for algo in algos:
            part = runs[(runs.env == env_id) & (runs.algo == algo)]
            if part.empty:
                continue
            grid = np.linspace(0, part.budget.max(), 50)
            data = np.array([np.interp(grid, r.timesteps, r.eval_mean) for r in part.itertuples()])
            mean, std = data.mean(axis=0), data.std(axis=0)
            ax.plot(grid, mean, label=f"{ALGOS[algo]} ({len(part)})", color=colors[labels[algo]])
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2, color=colors[labels[algo]])
        ax.axhline(PUBLISHED[env_id][0], color="grey", linestyle=":", linewidth=1)
        ax.set_title(env_id, fontsize=9)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6)
    for ax in list(axes.flat)[len(envs) :]:
        ax.axis("off")
    fig.suptitle("evaluation return, mean +- std over seeds (dotted: zoo's published TRPO)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def _ci(entry: dict[str, Any], digits: int = 1) -> str:
    low, high = entry["ci"]
    value = entry.get("iqm", entry.get("estimate"))
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(report: dict[str, Any], runs: pd.DataFrame, envs: list[str], algos: list[str]) -> str:
    lines = [
        "# TRPOPlus vs sb3-contrib TRPO at the RL Zoo's budgets",
        "",
        "Both algorithms with the zoo's TRPO hyperparameters (the package's `trpo_plus.yml` = rl_zoo3's `trpo.yml`,",
        "Gymnasium 1.x ids), trained by `trpo-plus-zoo train`; score = mean return of the last deterministic evaluation.",
        "IQM over seeds with a 95% bootstrap CI (percentile, stratified by env for aggregates).",
        "Per-seed values: `per_seed.csv`; evaluation curves: `curves.csv`; exact commands: `commands.txt`.",
        "",
        "| env | steps | " + " | ".join(f"{ALGOS[a]} IQM [95% CI] (seeds)" for a in algos) + " | zoo published TRPO |",
        "| --- | ---: | " + " | ".join("---:" for _ in algos) + " | --- |",
    ]
    for env_id in envs:
        cells = []
        budget = 0
        for algo in algos:
            entry = report["per_env"][env_id].get(algo)
            cells.append(f"{_ci(entry)} ({entry['seeds']})" if entry else "-")
            budget = max(budget, entry["budget"] if entry else 0)
        mean, std, zoo_id, zoo_budget_text = PUBLISHED[env_id]
        published = f"{mean:.1f} +- {std:.1f} ({zoo_id}, {zoo_budget_text})"
        lines.append(f"| {env_id} | {budget:,} | " + " | ".join(cells) + f" | {published} |")
    lines += ["", f"Published column: {PUBLISHED_SOURCE}; older env versions than ours.", ""]
    if report["aggregates"]:
        lines += [
            "## Aggregates over the envs (normalised: 0 = uniform random policy, 1 = zoo's published TRPO)",
            "",
            "| algorithm | " + " | ".join(AGGREGATES) + " |",
            "| --- | " + " | ".join("---:" for _ in AGGREGATES) + " |",
        ]
        for algo, values in report["aggregates"].items():
            lines.append(f"| {ALGOS[algo]} | " + " | ".join(_ci(values[name], 3) for name in AGGREGATES) + " |")
        lines.append("")
    if report["probability_of_improvement"]:
        lines += [f"P(TRPOPlus run > sb3-contrib run), mean over envs: {_ci(report['probability_of_improvement'], 3)}", ""]
    lines += [
        "Pictures: `aggregates.png`, `performance_profile.png`, `sample_efficiency.png`, `curves.png`.",
        "Random-policy scores (10 episodes): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["random_scores"].items() if k in envs),
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def plan(args: argparse.Namespace) -> list[Run]:
    envs = list(SMOKE_ENVS) if args.smoke and args.envs is None else list(args.envs or ENVS)
    seeds = args.seeds if args.seeds is not None else (2 if args.smoke else 5)
    overrides = dict(item.split("=", 1) for item in args.timesteps)
    runs = []
    for env_id in envs:
        if env_id in overrides:
            budget, is_zoo = int(float(overrides[env_id])), False
        elif args.smoke:
            budget, is_zoo = SMOKE_BUDGET, False
        else:
            budget, is_zoo = zoo_budget(env_id), True
        for algo in args.algos:
            for seed in range(args.seed_offset, args.seed_offset + seeds):
                runs.append(Run(algo, env_id, seed, budget, args.eval_points, args.eval_episodes, is_zoo))
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "analyze"))
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default {DEFAULT_OUT}, smoke: *_smoke)")
    parser.add_argument("--envs", nargs="+", default=None, choices=ENVS)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--seeds", type=int, default=None, help="seeds per (algo, env) (default 5; smoke 2)")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--timesteps", nargs="*", default=[], metavar="ENV=N", help="budget override (not the zoo's)")
    parser.add_argument("--eval-points", type=int, default=None, help="evaluations per run (default 20; smoke 4)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default 10; smoke 3)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    smoke_help = f"CartPole and Pendulum, {SMOKE_BUDGET} steps, 2 seeds, 4 evaluations of 3 episodes"
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--blas-threads", default="1", help="BLAS threads per process (read before NumPy loads)")
    args = parser.parse_args(argv)
    args.eval_points = args.eval_points or (4 if args.smoke else 20)
    args.eval_episodes = args.eval_episodes or (3 if args.smoke else 10)
    out = args.out or (DEFAULT_OUT.with_name(DEFAULT_OUT.name + "_smoke") if args.smoke else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("logs/\n*.tmp\n")
    if args.command == "run":
        failures = run_all(plan(args), out, args.workers)
        if failures:
            print(f"{len(failures)} runs failed; the analysis uses the finished ones")
    analyze(out, reps=args.reps)
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
