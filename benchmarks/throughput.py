"""
Throughput: TRPOPlus against sb3-contrib's TRPO at identical hyperparameters, with the
environment alone as the floor.

    python benchmarks/throughput.py                      # Hopper-v5, Pendulum-v1, CartPole-v1, 5 reps
    python benchmarks/throughput.py --envs Hopper-v5 --reps 3 --iters 2

For every environment and repetition, four runners are timed one after the other in one
process, in an order rotated by one every repetition (so slow drifts of a shared machine hit
every runner alike): the env floor, sb3-contrib's ``TRPO``, ``TRPOPlus`` with its defaults,
and ``TRPOPlus(fvp_subsample=1.0)`` (identical work to sb3-contrib: Fisher-vector products on
the whole batch). Each runner builds a fresh model with the repetition's seed and runs
``--warmup`` + ``--iters`` iterations; only the last ``--iters`` count.

What is timed (``time.perf_counter``, one torch thread):

- iteration: from one ``collect_rollouts`` call to the next (the last ends when ``learn``
  returns); steps/s = measured steps / summed iteration times;
- collection: the ``collect_rollouts`` call;
- policy phase: from entering ``train`` to the start of the critic fit; critic phase: from
  there to leaving ``train``. For TRPOPlus the critic fit starts when ``_fit_critic`` is
  called. sb3-contrib's ``train`` does both in one method; its critic loop is the only place
  that calls ``rollout_buffer.get`` with a minibatch size, so the first such call marks the
  boundary (the policy step before it calls ``get(batch_size=None)``). Both phases are
  therefore cut at the same point of the algorithm. ``_policy_step`` (TRPOPlus's trust-region
  step alone, without building the surrogate) is reported as well;
- env floor: the same VecEnv (``make_vec_env``, Monitor on every env, DummyVecEnv) stepped
  with actions from ``action_space.sample()``, the same number of steps as one iteration.

Peak memory: measured separately (timings are not disturbed), each runner in a fresh
subprocess: the peak resident set size (sampled every millisecond from /proc/self/statm by a
thread) while the model is built and runs warm-up + one iteration, minus the RSS just before
(after imports and a first env creation). tracemalloc is not used: it does not see PyTorch's
tensor allocations and slows Python down. Linux only.

Threads: torch runs with one thread, and by default NumPy's BLAS too (``--blas-threads 1``,
set through OPENBLAS_NUM_THREADS/OMP_NUM_THREADS/MKL_NUM_THREADS before NumPy is imported).
TRPOPlus evaluates the policy and fits the critic with NumPy; with OpenBLAS's default thread
count on a busy 2-core machine those matmuls slow down many times over (measured: see
benchmarks/README.md), so ``--blas-threads default`` is the setting that shows it.

Outputs, in ``--out`` (default ``benchmarks/results``): ``throughput_raw.csv`` (one row per
runner, env and repetition), ``throughput.csv`` (medians and ratios) and ``throughput.md``.
Timings on a shared machine are noisy: read the medians and the paired ratios (each
repetition's TRPOPlus figure divided by the same repetition's sb3-contrib or floor figure).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import BLAS_THREADS  # noqa: I001  (first: sets the BLAS thread count before NumPy loads)

import argparse
import shlex
import concurrent.futures
import multiprocessing
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch as th
from sb3_contrib import TRPO

from zoo_settings import algo_kwargs, make_env, settings

from sb3_trpo_plus import TRPOPlus

ENVS = ("Hopper-v5", "Pendulum-v1", "CartPole-v1")
# The zoo's MuJoCo TRPO settings as the issue states them; VecNormalize only with --normalize.
RUNNERS: dict[str, tuple[type | None, dict[str, Any]]] = {
    "env_floor": (None, {}),
    "sb3_contrib_trpo": (TRPO, {}),
    "trpo_plus_default": (TRPOPlus, {}),
    "trpo_plus_fvp1.0": (TRPOPlus, {"fvp_subsample": 1.0}),
}


def _wrap(obj: Any, name: str, before: Callable[[], None] | None = None, after: Callable[[], None] | None = None) -> None:
    """Replace ``obj.name`` by an instance attribute calling hooks around the original method."""
    original = getattr(obj, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before()
        try:
            return original(*args, **kwargs)
        finally:
            if after is not None:
                after()

    setattr(obj, name, wrapped)


def build_model(runner: str, env_id: str, seed: int, normalize: bool) -> Any:
    cls, extra = RUNNERS[runner]
    assert cls is not None
    env = make_env(env_id, seed, normalize=normalize)
    return cls(settings(env_id)["policy"], env, seed=seed, device="cpu", **algo_kwargs(env_id), **extra)


def time_model(model: Any, warmup: int, iters: int) -> dict[str, float]:
    """Run warmup + iters iterations of ``model.learn`` and return per-iteration timings (seconds)."""
    clock = time.perf_counter
    marks: dict[str, list[float]] = {
        k: [] for k in ("collect_start", "collect_end", "train_start", "train_end", "critic_start", "policy_step")
    }
    state = {"critic_marked": False, "policy_step_start": 0.0}

    def train_start() -> None:
        state["critic_marked"] = False
        marks["train_start"].append(clock())

    def critic_start() -> None:
        if not state["critic_marked"]:
            state["critic_marked"] = True
            marks["critic_start"].append(clock())

    _wrap(
        model,
        "collect_rollouts",
        lambda: marks["collect_start"].append(clock()),
        lambda: marks["collect_end"].append(clock()),
    )
    _wrap(model, "train", train_start, lambda: marks["train_end"].append(clock()))
    if isinstance(model, TRPOPlus):
        _wrap(model, "_fit_critic", critic_start)
        _wrap(
            model,
            "_policy_step",
            lambda: state.__setitem__("policy_step_start", clock()),
            lambda: marks["policy_step"].append(clock() - state["policy_step_start"]),
        )
    else:
        buffer = model.rollout_buffer
        original_get = buffer.get

        def get(batch_size: int | None = None) -> Any:
            if batch_size is not None:
                critic_start()
            return original_get(batch_size)

        buffer.get = get

    batch = model.n_steps * model.env.num_envs
    model.learn(total_timesteps=(warmup + iters) * batch)
    end = clock()
    starts = [*marks["collect_start"], end]
    if len(marks["collect_start"]) != warmup + iters or len(marks["critic_start"]) != warmup + iters:
        raise RuntimeError(f"instrumentation saw {len(marks['collect_start'])} iterations, expected {warmup + iters}")
    keep = range(warmup, warmup + iters)
    out = {
        "steps": float(iters * batch),
        "wall": sum(starts[i + 1] - starts[i] for i in keep),
        "collect": sum(marks["collect_end"][i] - marks["collect_start"][i] for i in keep),
        "policy_phase": sum(marks["critic_start"][i] - marks["train_start"][i] for i in keep),
        "critic_phase": sum(marks["train_end"][i] - marks["critic_start"][i] for i in keep),
        "policy_step": sum(marks["policy_step"][i] for i in keep) if marks["policy_step"] else float("nan"),
    }
    model.env.close()
    return out


def time_floor(env_id: str, seed: int, warmup: int, iters: int, normalize: bool) -> dict[str, float]:
    """The env alone, stepped with random actions through the training VecEnv."""
    conf = settings(env_id)
    env = make_env(env_id, seed, normalize=normalize)
    env.reset()
    env.action_space.seed(seed)
    n_steps = conf["n_steps"] if "n_steps" in conf else 2048
    n_envs = env.num_envs

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            env.step(np.stack([env.action_space.sample() for _ in range(n_envs)]))
        return time.perf_counter() - start

    run(warmup * n_steps)
    wall = run(iters * n_steps)
    env.close()
    nan = float("nan")
    return {"steps": float(iters * n_steps * n_envs), "wall": wall, "collect": wall, "policy_phase": nan,
            "critic_phase": nan, "policy_step": nan}


def run_one(runner: str, env_id: str, seed: int, warmup: int, iters: int, normalize: bool) -> dict[str, float]:
    if runner == "env_floor":
        return time_floor(env_id, seed, warmup, iters, normalize)
    return time_model(build_model(runner, env_id, seed, normalize), warmup, iters)


def _rss_mb() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """Samples the current resident set size every millisecond in a thread and keeps the maximum."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def memory_child(runner: str, env_id: str, seed: int, warmup: int, normalize: bool) -> float:
    """In a fresh process: peak RSS (MB) over building the model and warm-up + 1 iteration, minus the RSS before."""
    th.set_num_threads(1)
    make_env(env_id, seed, normalize=normalize).close()  # load the simulator's libraries first
    layer = th.nn.Linear(4, 4)  # and torch's lazily initialised autograd and optimizer machinery
    th.optim.Adam(layer.parameters()).step(lambda: layer(th.ones(2, 4)).sum().backward())  # type: ignore[arg-type]
    before = _rss_mb()
    with PeakRss() as peak:
        if runner == "env_floor":
            time_floor(env_id, seed, warmup, 1, normalize)
        else:
            time_model(build_model(runner, env_id, seed, normalize), warmup, 1)
    return peak.peak - before


def measure_memory(envs: list[str], seed: int, warmup: int, normalize: bool) -> dict[tuple[str, str], float]:
    out = {}
    context = multiprocessing.get_context("spawn")
    for env_id in envs:
        for runner in RUNNERS:
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                out[(env_id, runner)] = pool.submit(memory_child, runner, env_id, seed, warmup, normalize).result()
            print(f"  memory {env_id:12s} {runner:20s} peak RSS growth {out[(env_id, runner)]:7.1f} MB", flush=True)
    return out


def _paired_ratio(raw: pd.DataFrame, env_id: str, runner: str, other: str, column: str) -> list[float]:
    mine = raw[(raw.env == env_id) & (raw.runner == runner)].set_index("rep")[column]
    theirs = raw[(raw.env == env_id) & (raw.runner == other)].set_index("rep")[column]
    return list((mine / theirs).dropna())


def summarise(raw: pd.DataFrame, memory: dict[tuple[str, str], float]) -> pd.DataFrame:
    rows = []
    for env_id in raw.env.unique():
        for runner in RUNNERS:
            part = raw[(raw.env == env_id) & (raw.runner == runner)]
            if part.empty:
                continue
            iters = part.steps / part.batch
            row: dict[str, Any] = {"env": env_id, "runner": runner, "reps": len(part)}
            row["steps_per_s"] = float(np.median(part.steps / part.wall))
            for column in ("wall", "collect", "policy_phase", "critic_phase", "policy_step"):
                row[f"{column}_ms_per_iter"] = float(np.median(1000 * part[column] / iters))
            spr = _paired_ratio(raw, env_id, runner, "sb3_contrib_trpo", "steps_per_s")
            row["speedup_vs_sb3"] = float(np.median(spr)) if spr else float("nan")
            row["speedup_vs_sb3_min"] = min(spr) if spr else float("nan")
            row["speedup_vs_sb3_max"] = max(spr) if spr else float("nan")
            wpf = _paired_ratio(raw, env_id, runner, "env_floor", "wall_per_step")
            row["wall_over_floor"] = float(np.median(wpf)) if wpf else float("nan")
            row["peak_rss_growth_mb"] = memory.get((env_id, runner), float("nan"))
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: float, pattern: str) -> str:
    return "–" if value != value else pattern.format(value)  # NaN check


def markdown(summary: pd.DataFrame, args: argparse.Namespace, loads: tuple[str, str], elapsed: float) -> str:
    lines = [
        "# Throughput: TRPOPlus vs sb3-contrib TRPO",
        "",
        f"Command: `python {shlex.join(sys.argv)}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {th.__version__}, "
        f"1 torch thread, BLAS threads: {BLAS_THREADS}; load average before/after: {loads[0]} / {loads[1]}; "
        f"run took {elapsed / 60:.1f} min.  ",
        f"{args.reps} repetitions x ({args.warmup} warm-up + {args.iters} measured iterations) per runner, "
        f"runners alternated; VecNormalize: {'on' if args.normalize else 'off'}. Medians over repetitions. "
        "Speed-up and wall/floor are medians of per-repetition paired ratios (min-max in brackets).",
        "",
        "The machine is shared: absolute figures move with the load of other processes; the paired ratios are",
        "the figures to read.",
        "",
        "| env | runner | steps/s | speed-up vs sb3-contrib | wall / env floor | ms/iter | collect | policy phase "
        "| (_policy_step) | critic phase | peak RSS growth (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for _, r in summary.iterrows():
        speed = _fmt(r.speedup_vs_sb3, "{:.2f}x")
        if r.runner not in ("sb3_contrib_trpo", "env_floor") and r.speedup_vs_sb3 == r.speedup_vs_sb3:
            speed += f" ({r.speedup_vs_sb3_min:.2f}-{r.speedup_vs_sb3_max:.2f})"
        lines.append(
            f"| {r.env} | {r.runner} | {r.steps_per_s:,.0f} | {speed} | {_fmt(r.wall_over_floor, '{:.2f}x')} "
            f"| {r.wall_ms_per_iter:.0f} | {r.collect_ms_per_iter:.0f} | {_fmt(r.policy_phase_ms_per_iter, '{:.0f}')} "
            f"| {_fmt(r.policy_step_ms_per_iter, '{:.0f}')} | {_fmt(r.critic_phase_ms_per_iter, '{:.0f}')} "
            f"| {_fmt(r.peak_rss_growth_mb, '{:.1f}')} |"
        )
    lines += [
        "",
        "Columns: steps/s = measured env steps / summed iteration wall time; ms/iter and the phase columns are per",
        "iteration (collect = `collect_rollouts`; policy phase = entering `train` to the start of the critic fit;",
        "critic phase = the rest of `train`; `_policy_step` = TRPOPlus's trust-region step alone). Env floor = the",
        "same VecEnv stepped with random actions. Peak RSS growth: in a fresh subprocess, the peak resident set",
        "size (sampled every ms) over building the model and warm-up + 1 iteration, minus the RSS just before.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="iterations run before timing")
    parser.add_argument("--iters", type=int, default=3, help="measured iterations per repetition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--normalize", action="store_true", help="wrap every env in VecNormalize (zoo MuJoCo setting)")
    parser.add_argument(
        "--blas-threads",
        default="1",
        help="OpenBLAS/OpenMP/MKL threads for NumPy (set before NumPy loads); 'default' leaves the library's choice",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess peak-memory pass")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    th.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loads = (" ".join(f"{x:.2f}" for x in os.getloadavg()), "")
    started = time.perf_counter()

    rows = []
    names = list(RUNNERS)
    for env_id in args.envs:
        batch = settings(env_id)["n_envs"] * settings(env_id).get("n_steps", 2048)
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for runner in order:
                result = run_one(runner, env_id, args.seed + rep, args.warmup, args.iters, args.normalize)
                result.update(env=env_id, runner=runner, rep=rep, batch=batch)
                result["steps_per_s"] = result["steps"] / result["wall"]
                result["wall_per_step"] = result["wall"] / result["steps"]
                rows.append(result)
                print(f"{env_id:12s} rep {rep} {runner:20s} {result['steps_per_s']:8.0f} steps/s", flush=True)
    raw = pd.DataFrame(rows)
    raw.to_csv(out / "throughput_raw.csv", index=False)
    memory = {} if args.no_memory else measure_memory(args.envs, args.seed, args.warmup, args.normalize)
    summary = summarise(raw, memory)
    summary.to_csv(out / "throughput.csv", index=False)
    loads = (loads[0], " ".join(f"{x:.2f}" for x in os.getloadavg()))
    text = markdown(summary, args, loads, time.perf_counter() - started)
    (out / "throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
