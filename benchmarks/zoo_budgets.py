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
  published = rl-baselines3-zoo's TRPO score: IQM, median (of the per-env means), mean and
  optimality gap with 95% *stratified* bootstrap CIs (runs resampled within each env), and the
  probability that a TRPOPlus run beats an sb3-contrib run on the same env, with its CI
  (``aggregates.png``);
- performance profiles: fraction of runs whose normalised score exceeds tau, with CI bands
  (``performance_profile.png``);
- sample-efficiency curves: IQM of the normalised evaluation score at 5%, 10%, ..., 100% of each
  env's budget, with CIs (``sample_efficiency.png``), and per-env mean curves (``curves.png``).

The statistics and pictures are rliable's: ``library.get_interval_estimates`` (stratified
bootstrap, percentile CIs) over ``metrics.aggregate_iqm`` / ``aggregate_median`` /
``aggregate_mean`` / ``aggregate_optimality_gap`` / ``probability_of_improvement``,
``library.create_performance_profile``, and ``plot_utils`` for the figures.

Partial results: an (algorithm, env) with fewer than 2 runs gets no CI, and its env is left out of
the aggregates, profiles and curves (a note in ``report.md`` says so). rliable's arrays have as many
runs on every env, so an algorithm uses the seeds it has on every aggregated env; of the envs with
enough runs, the aggregates take the ones that put the most runs in, and on a tie the fewer envs: an
env still filling in (say 4 of 5 seeds on one of ten envs) stays out instead of cutting every other
env to 4 seeds (``aggregate_selection``).

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
import itertools
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml
from rliable import library as rly
from rliable import metrics

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
    # A run without a result file starts afresh: the logs of an interrupted attempt would leave rl_zoo3
    # a second experiment folder beside the first, and the evaluations read below would be ambiguous.
    shutil.rmtree(out / "logs" / run.name, ignore_errors=True)
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

#: an (algorithm, env) with fewer runs gets no CI, and its env leaves the aggregates (report.md says so)
MIN_RUNS = 2
#: the aggregate metrics, in the order of :func:`aggregate_metrics`
AGGREGATES = ("IQM", "Median", "Mean", "Optimality gap")


def iqm(values: np.ndarray) -> float:
    """Interquartile mean (rliable's ``aggregate_iqm``: the mean of the middle 50%)."""
    return float(metrics.aggregate_iqm(np.asarray(values, dtype=float).reshape(-1)))


def interval_estimates(
    score_dict: Mapping[str, Any], func: Callable[..., Any], reps: int, seed: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """
    rliable's ``library.get_interval_estimates``: point estimates and 95% percentile CIs under the
    stratified bootstrap (within each task, i.e. each column, runs resampled with replacement).
    rliable draws the resampled indices from NumPy's global generator, so it is seeded here.

    :param score_dict: name -> (runs, tasks, ...) array, or a tuple of such arrays (e.g. a pair for
        ``metrics.probability_of_improvement``, each resampled independently)
    :param func: maps the array(s) to a 1D array (or a scalar)
    :return: (name -> estimate, name -> interval of shape (2, ...))
    """
    np.random.seed(seed)
    return rly.get_interval_estimates(score_dict, func, method="percentile", reps=reps)


def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """rliable's IQM, median, mean and optimality gap (:data:`AGGREGATES`) of a (runs, envs) score matrix."""
    return np.array(
        [
            metrics.aggregate_iqm(scores),
            metrics.aggregate_median(scores),
            metrics.aggregate_mean(scores),
            metrics.aggregate_optimality_gap(scores, gamma=1.0),
        ]
    )


def iqm_at_each_point(scores: np.ndarray) -> np.ndarray:
    """IQM over runs and envs at each evaluation point of a (runs, envs, points) array."""
    return np.array([metrics.aggregate_iqm(scores[..., point]) for point in range(scores.shape[-1])])


def normalise(score: np.ndarray | float, env_id: str, random: dict[str, float]) -> np.ndarray:
    """0 = uniform random policy, 1 = the zoo's published TRPO score."""
    low, high = random[env_id], PUBLISHED[env_id][0]
    return (np.asarray(score, dtype=float) - low) / (high - low)


# ----------------------------------------------------------------------------- analysis


def load_runs(out: Path) -> pd.DataFrame:
    records = [json.loads(path.read_text()) for path in sorted((out / RUNS_DIR).glob("*.json"))]
    return pd.DataFrame(records)


def _run(runs: pd.DataFrame, algo: str, env_id: str, seed: int) -> Any:
    return next(runs[(runs.env == env_id) & (runs.algo == algo) & (runs.seed == seed)].itertuples())


def final_matrix(
    runs: pd.DataFrame, algo: str, envs: Sequence[str], seeds: Sequence[int], random: dict[str, float]
) -> np.ndarray:
    """(runs, envs) normalised final scores of ``algo``, one row per seed."""
    return np.array([[normalise(_run(runs, algo, e, s).final, e, random) for e in envs] for s in seeds], dtype=float)


def curve_array(
    runs: pd.DataFrame, algo: str, envs: Sequence[str], seeds: Sequence[int], random: dict[str, float]
) -> np.ndarray:
    """(runs, envs, len(FRACTIONS)) normalised evaluation scores, interpolated at the fractions of each run's budget."""
    rows = []
    for seed in seeds:
        row = []
        for env_id in envs:
            r = _run(runs, algo, env_id, seed)
            row.append(np.interp(FRACTIONS * r.budget, r.timesteps, normalise(np.array(r.eval_mean), env_id, random)))
        rows.append(row)
    return np.array(rows, dtype=float)


def analysed_envs(runs: pd.DataFrame, envs: Sequence[str], algos: Sequence[str]) -> tuple[list[str], list[str]]:
    """The envs on which every algorithm has at least :data:`MIN_RUNS` runs, and a note for each other env."""
    kept, notes = [], []
    for env_id in envs:
        counts = {algo: int(((runs.env == env_id) & (runs.algo == algo)).sum()) for algo in algos}
        if min(counts.values()) >= MIN_RUNS:
            kept.append(env_id)
            continue
        have = ", ".join(f"{ALGOS[algo]} {n} run{'s' if n != 1 else ''}" for algo, n in counts.items())
        notes.append(
            f"{env_id} ({have}): an algorithm with fewer than {MIN_RUNS} runs gets no CI here, and the env is left out of "
            "the aggregates, the probability of improvement, the performance profiles and the sample-efficiency curves."
        )
    return kept, notes


def aggregate_selection(
    runs: pd.DataFrame, envs: Sequence[str], algos: Sequence[str]
) -> tuple[list[str], dict[str, list[int]], list[str]]:
    """
    The envs of the aggregates, the seeds each algorithm uses on them, and a note for each env or run left out.

    rliable's arrays have as many runs on every env, so an algorithm can only use the seeds it has on every
    aggregated env. Among the envs on which every algorithm has at least :data:`MIN_RUNS` runs, the subset chosen
    puts the most runs into the aggregates (each algorithm keeping at least :data:`MIN_RUNS` seeds); on a tie, the
    one with fewer envs, so that an env still filling in stays out instead of cutting the seeds of the finished
    ones. Exhaustive over subsets: :data:`ENVS` has 10 envs, 1023 subsets.

    :param runs: the finished runs
    :param envs: the envs that have runs, in :data:`ENVS` order
    :param algos: the algorithms that have runs
    :return: aggregated envs (in ``envs`` order), seeds per algorithm, notes
    """
    candidates, notes = analysed_envs(runs, envs, algos)
    have = {
        (algo, env_id): {int(seed) for seed in runs[(runs.env == env_id) & (runs.algo == algo)].seed}
        for algo in algos
        for env_id in candidates
    }
    best_key, kept, seeds = (0, 0), [], {}
    for size in range(len(candidates), 0, -1):
        for subset in itertools.combinations(candidates, size):
            common = {algo: set.intersection(*(have[algo, env_id] for env_id in subset)) for algo in algos}
            if min(len(common[algo]) for algo in algos) < MIN_RUNS:
                continue
            key = (size * sum(len(common[algo]) for algo in algos), -size)
            if key > best_key:  # (strict: on a full tie, the first subset in ENVS order)
                best_key, kept, seeds = key, list(subset), {algo: sorted(common[algo]) for algo in algos}
    for env_id in candidates:
        if env_id in kept:
            continue
        short = "; ".join(
            f"{ALGOS[algo]} has seeds {sorted(have[algo, env_id])} there, not all of {seeds[algo]}"
            for algo in algos
            if not set(seeds[algo]) <= have[algo, env_id]
        )
        notes.append(
            f"{env_id}: left out of the aggregates, the probability of improvement, the performance profiles and "
            f"the sample-efficiency curves ({short}; taking it in would cut the seeds on every aggregated env to the "
            "ones it has)."
        )
    for algo in seeds:
        left_out = int(((runs.algo == algo) & runs.env.isin(kept)).sum()) - len(seeds[algo]) * len(kept)
        if left_out:
            notes.append(
                f"{ALGOS[algo]}: the aggregates use seeds {seeds[algo]}, the ones it has on every aggregated env; "
                f"{left_out} other runs on these envs are left out of them."
            )
    return kept, seeds, notes


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
        raise SystemExit(f"no finished runs in {out / RUNS_DIR}")
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

    # per env: IQM over seeds with its CI (rliable, one task), for each algorithm with enough runs; each
    # (env, algorithm) bootstraps from its own fixed stream, so its CI depends on its runs only, not on which
    # other envs or algorithms have finished runs
    per_env: dict[str, dict[str, Any]] = {}
    for env_id in envs:
        per_env[env_id] = {}
        for algo in algos:
            part = runs[(runs.env == env_id) & (runs.algo == algo)]
            if len(part) < MIN_RUNS:
                continue
            stream = 10 * ENVS.index(env_id) + list(ALGOS).index(algo)
            points, intervals = interval_estimates({algo: part.final.to_numpy()[:, None]}, iqm, reps, seed=stream)
            per_env[env_id][algo] = {
                "iqm": float(np.asarray(points[algo]).reshape(-1)[0]),
                "ci": np.asarray(intervals[algo]).reshape(-1).tolist(),
                "seeds": len(part),
                "budget": int(part.budget.max()),
            }

    # aggregates over the envs and seeds that put the most runs in (see aggregate_selection), normalised,
    # stratified by env
    kept, seeds, notes = aggregate_selection(runs, envs, algos)
    matrices = {algo: final_matrix(runs, algo, kept, s, random) for algo, s in seeds.items()}  # (none if kept is empty)
    aggregates: dict[str, dict[str, Any]] = {}
    if matrices:
        points, intervals = interval_estimates(matrices, aggregate_metrics, reps, seed=100)
        for algo in matrices:
            aggregates[algo] = {
                name: {"estimate": float(points[algo][i]), "ci": intervals[algo][:, i].tolist()}
                for i, name in enumerate(AGGREGATES)
            }
    poi = None
    if {"trpo_plus", "trpo"} <= set(matrices):
        pair = {"trpo_plus,trpo": (matrices["trpo_plus"], matrices["trpo"])}
        points, intervals = interval_estimates(pair, metrics.probability_of_improvement, reps, seed=101)
        poi = {"estimate": float(points["trpo_plus,trpo"]), "ci": np.asarray(intervals["trpo_plus,trpo"]).reshape(-1).tolist()}

    profiles: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if matrices:
        np.random.seed(102)  # (rliable resamples with NumPy's global generator)
        profile, profile_cis = rly.create_performance_profile(matrices, TAUS, reps=max(reps // 4, 100))
        profiles = {algo: (profile[algo], profile_cis[algo]) for algo in matrices}
    efficiency = sample_efficiency(runs, kept, seeds, random, reps)

    report = {
        "per_env": per_env,
        "aggregate_envs": kept,
        "aggregate_seeds": seeds,
        "aggregates": aggregates,
        "probability_of_improvement": poi,
        "notes": notes,
        "bootstrap_reps": reps,
        "random_scores": random,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    plots(out, runs, envs, algos, aggregates, profiles, efficiency)
    (out / "report.md").write_text(markdown(report, runs, envs, algos))
    return report


def sample_efficiency(
    runs: pd.DataFrame, envs: list[str], seeds: Mapping[str, Sequence[int]], random: dict[str, float], reps: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """IQM (and CI) over envs x seeds of the normalised evaluation score at each fraction of the budget."""
    arrays = {
        algo: curve_array(runs, algo, envs, algo_seeds, random)
        for algo, algo_seeds in seeds.items()
        if envs and len(algo_seeds) >= MIN_RUNS
    }
    if not arrays:
        return {}
    points, intervals = interval_estimates(arrays, iqm_at_each_point, max(reps // 4, 100), seed=103)
    return {algo: (np.asarray(points[algo]), np.asarray(intervals[algo])) for algo in arrays}


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
            point, interval, metric_names=names, algorithms=list(point), colors=colors, xlabel="", row_height=0.6, max_ticks=3
        )
        fig.suptitle(
            "normalised score (0 random policy, 1 zoo's published TRPO), 95% stratified bootstrap CIs (rliable)",
            y=1 + 0.5 / fig.get_size_inches()[1],  # above the metric names, whatever the number of algorithms
        )
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
        "Statistics: rliable's (`library.get_interval_estimates`: stratified bootstrap, 95% percentile CIs, "
        f"{report['bootstrap_reps']} resamples).",
        "Per env: IQM over seeds with its CI; an (algorithm, env) with fewer than 2 runs has none (see Left out below).",
        "Per-seed values: `per_seed.csv`; evaluation curves: `curves.csv`; exact commands: `commands.txt`.",
        "",
        "| env | steps | " + " | ".join(f"{ALGOS[a]} IQM [95% CI] (seeds)" for a in algos) + " | zoo published TRPO |",
        "| --- | ---: | " + " | ".join("---:" for _ in algos) + " | --- |",
    ]
    for env_id in envs:
        cells = []
        for algo in algos:
            entry = report["per_env"][env_id].get(algo)
            count = int(((runs.env == env_id) & (runs.algo == algo)).sum())
            cells.append(f"{_ci(entry)} ({entry['seeds']})" if entry else f"no CI ({count})" if count else "-")
        budget = int(runs[runs.env == env_id].budget.max())
        mean, std, zoo_id, zoo_budget_text = PUBLISHED[env_id]
        published = f"{mean:.1f} +- {std:.1f} ({zoo_id}, {zoo_budget_text})"
        lines.append(f"| {env_id} | {budget:,} | " + " | ".join(cells) + f" | {published} |")
    lines += ["", f"Published column: {PUBLISHED_SOURCE}; older env versions than ours.", ""]
    if report["aggregates"]:
        lines += [
            f"## Aggregates over {', '.join(report['aggregate_envs'])}",
            "",
            "Scores normalised per env: 0 = uniform random policy, 1 = zoo's published TRPO. rliable's metrics on the",
            "(runs x envs) matrix, CIs stratified by env: IQM and mean of all runs, median of the per-env mean scores,",
            "optimality gap = mean shortfall below 1. Seeds: "
            + "; ".join(f"{ALGOS[a]} {s}" for a, s in report["aggregate_seeds"].items() if a in report["aggregates"])
            + ".",
            "",
            "| algorithm | " + " | ".join(AGGREGATES) + " |",
            "| --- | " + " | ".join("---:" for _ in AGGREGATES) + " |",
        ]
        for algo, values in report["aggregates"].items():
            lines.append(f"| {ALGOS[algo]} | " + " | ".join(_ci(values[name], 3) for name in AGGREGATES) + " |")
        lines.append("")
    if report["probability_of_improvement"]:
        lines += [
            "P(TRPOPlus run > sb3-contrib run on the same env, ties counting half), mean over these envs "
            "(rliable's `probability_of_improvement`, both resampled per env): "
            + _ci(report["probability_of_improvement"], 3),
            "",
        ]
    if report["notes"]:
        lines += ["## Left out", "", *(f"- {note}" for note in report["notes"]), ""]
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
