"""
Throughput: TRPOPlus against sb3-contrib's TRPO at identical hyperparameters, with the
environment alone as the floor.

    python benchmarks/throughput.py                      # every row of ROWS, 5 reps
    python benchmarks/throughput.py --rows Hopper-v5 Ant-v5 --reps 3 --iters 2
    python benchmarks/throughput.py --rows Pong-cnn --profile   # also a cProfile of TRPOPlus per row

A *row* is one training configuration (:data:`ROWS`): the env, its VecEnv (DummyVecEnv or
SubprocVecEnv, Monitor on every env, VecNormalize, Atari wrappers and frame stack as rl_zoo3
builds them) and the algorithm's hyperparameters (the zoo's TRPO settings unless the row says
otherwise). sb3-contrib's TRPO and TRPOPlus always get the same row.

For every row and repetition, three runners are timed one after the other in one
process, in an order rotated by one every repetition (so slow drifts of a shared machine hit
every runner alike): the env floor, sb3-contrib's ``TRPO`` and ``TRPOPlus`` with its defaults
(``fvp_subsample=1.0``: identical work to sb3-contrib, Fisher-vector products on the whole
batch). Each runner builds a fresh model with the repetition's seed and runs
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
  therefore cut at the same point of the algorithm (for TRPOPlus, the end of the trust-region
  step, or the start of a critic fit that comes first). ``_policy_step`` (TRPOPlus's trust-region
  step alone, without building the surrogate) is reported as well;
- env floor: the row's VecEnv, built the same way, stepped with actions from
  ``action_space.sample()``, the same number of steps as one iteration.

Peak memory: measured separately (timings are not disturbed), each runner in a fresh
subprocess: the peak resident set size (sampled every millisecond from /proc/self/statm by a
thread) while the model is built and runs warm-up + one iteration, minus the RSS just before
(after imports and a first env creation). tracemalloc is not used: it does not see PyTorch's
tensor allocations and slows Python down. Linux only.

Threads: torch runs with one thread by default (``--torch-threads 1``; ``--torch-threads
default`` keeps torch's own choice, one per core, for every runner), and by default NumPy's BLAS
too (``--blas-threads 1``,
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
import cProfile
import importlib
import subprocess
import tempfile
import pstats
import shlex
import concurrent.futures
import multiprocessing
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import pandas as pd
import torch as th
from sb3_contrib import TRPO
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack, VecNormalize

from zoo_settings import algo_kwargs, settings

from sb3_trpo_plus import TRPOPlus



@dataclass(frozen=True)
class Row:
    """
    One training configuration of the throughput table.

    :param name: the row's name (``--rows``)
    :param env_id: gymnasium id
    :param zoo_env: the entry of :data:`zoo_settings.ZOO_TRPO` whose settings the row starts from
        (``None``: sb3-contrib's constructor defaults)
    :param overrides: constructor arguments replacing the zoo's
    :param n_envs: number of environments (``None``: the zoo's)
    :param normalize: VecNormalize (``None``: the zoo's setting)
    :param vec_env: ``"dummy"`` or ``"subproc"``
    :param atari: rl_zoo3's Atari set-up: ``AtariWrapper`` on every env, then ``VecFrameStack(4)``
    :param policy: policy name (``None``: the zoo's)
    """

    name: str
    env_id: str
    zoo_env: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    n_envs: int | None = None
    normalize: bool | None = None
    vec_env: str = "dummy"
    atari: bool = False
    policy: str | None = None

    def algo_kwargs(self) -> dict[str, Any]:
        return {**(algo_kwargs(self.zoo_env) if self.zoo_env else {}), **self.overrides}

    def policy_name(self) -> str:
        return self.policy or (settings(self.zoo_env)["policy"] if self.zoo_env else "MlpPolicy")

    def batch(self) -> int:
        return self.num_envs() * self.algo_kwargs().get("n_steps", 2048)

    def num_envs(self) -> int:
        return self.n_envs or (settings(self.zoo_env)["n_envs"] if self.zoo_env else 1)

    def make_env(self, seed: int) -> VecEnv:
        """The row's training VecEnv, as rl_zoo3 builds it (Monitor on every env)."""
        vec_env_cls = SubprocVecEnv if self.vec_env == "subproc" else DummyVecEnv
        if self.atari:
            env: VecEnv = make_atari_env(self.env_id, n_envs=self.num_envs(), seed=seed, vec_env_cls=vec_env_cls)
            return VecFrameStack(env, n_stack=4)
        env = make_vec_env(self.env_id, n_envs=self.num_envs(), seed=seed, vec_env_cls=vec_env_cls)
        zoo_normalize = bool(settings(self.zoo_env).get("normalize", False)) if self.zoo_env else False
        if zoo_normalize if self.normalize is None else self.normalize:
            env = VecNormalize(env, gamma=self.algo_kwargs().get("gamma", 0.99))
        return env


_MUJOCO = "Hopper-v5"  # the zoo's MuJoCo defaults block (HalfCheetah adds target_kl)
ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row("Pendulum-v1", "Pendulum-v1", "Pendulum-v1"),  # zoo: gSDE, 2 envs
        Row("CartPole-v1", "CartPole-v1", "CartPole-v1"),
        Row("Hopper-v5", "Hopper-v5", _MUJOCO),  # zoo MuJoCo settings: 2 envs, n_steps 1024, VecNormalize
        Row("BipedalWalker-v3", "BipedalWalker-v3", _MUJOCO),  # the zoo's entry equals its MuJoCo block
        Row("LunarLander-v3", "LunarLander-v3", "LunarLander-v3"),
        Row(
            "Hopper-v5-wide",
            "Hopper-v5",
            _MUJOCO,
            overrides={"n_steps": 2048, "policy_kwargs": {"net_arch": [256, 256]}},
            n_envs=8,
            normalize=True,
        ),
        Row("Ant-v5", "Ant-v5", _MUJOCO),  # the zoo's Ant-v4 entry equals its MuJoCo block
        # no zoo TRPO entry for Atari: sb3-contrib's defaults, rl_zoo3's Atari env set-up
        # (8 envs, AtariWrapper, frame stack 4) with PPO's Atari rollout length
        Row("Pong-cnn", "PongNoFrameskip-v4", None, overrides={"n_steps": 128}, n_envs=8, atari=True, policy="CnnPolicy"),
        Row("Hopper-v5-subproc", "Hopper-v5", _MUJOCO, vec_env="subproc"),
    )
}
gym.register_envs(ale_py)
RUNNERS: dict[str, type | None] = {
    "env_floor": None,
    "sb3_contrib_trpo": TRPO,
    "trpo_plus": TRPOPlus,
}
STANDARD_RUNNERS = tuple(RUNNERS)  # the runners of the memory pass (baselines are timed only)


def rotated(names: list[str], shift: int) -> list[str]:
    """``names`` rotated left by ``shift``: runners alternate their order from one repetition to the next."""
    shift %= len(names)
    return names[shift:] + names[:shift]


def baseline_runner(commit: str) -> str:
    """
    Add TRPOPlus as it was at ``commit`` (``--baselines``) to :data:`RUNNERS` and return its name,
    ``trpo_plus@<commit>``: the package's files at that commit, read with ``git show``, are written
    to a temporary folder under another package name, so that both versions run in one process.
    """
    root = Path(__file__).resolve().parent.parent
    short = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=7", commit], check=True,
                           capture_output=True, text=True).stdout.strip()
    package = f"sb3_trpo_plus_{short}"
    target = Path(tempfile.gettempdir()) / "throughput_baselines" / short
    if not (target / package / "__init__.py").exists():
        listing = subprocess.run(["git", "-C", str(root), "ls-tree", "-r", "--name-only", short, "--", "sb3_trpo_plus"],
                                 check=True, capture_output=True, text=True).stdout.split()
        for name in listing:
            content = subprocess.run(["git", "-C", str(root), "show", f"{short}:{name}"], check=True,
                                     capture_output=True).stdout
            if name.endswith(".py"):
                content = content.replace(b"sb3_trpo_plus", package.encode())
            path = target / package / Path(name).relative_to("sb3_trpo_plus")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    runner = f"trpo_plus@{short}"
    RUNNERS[runner] = importlib.import_module(package).TRPOPlus
    return runner


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


def build_model(runner: str, row: Row, seed: int) -> Any:
    cls = RUNNERS[runner]
    assert cls is not None
    return cls(row.policy_name(), row.make_env(seed), seed=seed, device="cpu", **row.algo_kwargs())


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
    if hasattr(model, "_policy_step"):  # TRPOPlus, or a baseline version of it
        _wrap(model, "_fit_critic", critic_start)  # a fit before the step (the vine's critic first)

        def policy_step_end() -> None:
            marks["policy_step"].append(clock() - state["policy_step_start"])
            critic_start()  # after the step comes the critic fit

        _wrap(model, "_policy_step", lambda: state.__setitem__("policy_step_start", clock()), policy_step_end)
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


def time_floor(row: Row, seed: int, warmup: int, iters: int) -> dict[str, float]:
    """The env alone, stepped with random actions through the training VecEnv."""
    env = row.make_env(seed)
    env.reset()
    env.action_space.seed(seed)
    n_steps = row.algo_kwargs().get("n_steps", 2048)
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


def run_one(runner: str, row: Row, seed: int, warmup: int, iters: int) -> dict[str, float]:
    if runner == "env_floor":
        return time_floor(row, seed, warmup, iters)
    return time_model(build_model(runner, row, seed), warmup, iters)


def profile_row(row: Row, seed: int, warmup: int, iters: int, out: Path) -> Path:
    """cProfile of TRPOPlus on ``row`` (warm-up + measured iterations); the top entries by own and cumulative time."""
    model = build_model("trpo_plus", row, seed)
    profiler = cProfile.Profile()
    profiler.enable()
    time_model(model, warmup, iters)
    profiler.disable()
    path = out / f"throughput_profile_{row.name}.txt"
    with open(path, "w") as file:
        file.write(f"# cProfile of TRPOPlus on {row.name}: {warmup} warm-up + {iters} iterations of {row.batch()} steps\n")
        for key in ("tottime", "cumulative"):
            file.write(f"\n## sorted by {key}\n")
            pstats.Stats(profiler, stream=file).sort_stats(key).print_stats(30)
    return path


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


def set_torch_threads(value: str) -> None:
    """``--torch-threads``: a count, or ``default`` (torch's own choice, kept also by subprocesses)."""
    os.environ["THROUGHPUT_TORCH_THREADS"] = value
    if value != "default":
        th.set_num_threads(int(value))


def memory_child(runner: str, row: Row, seed: int, warmup: int) -> float:
    """In a fresh process: peak RSS (MB) over building the model and warm-up + 1 iteration, minus the RSS before."""
    set_torch_threads(os.environ.get("THROUGHPUT_TORCH_THREADS", "1"))
    row.make_env(seed).close()  # load the simulator's libraries first
    layer = th.nn.Linear(4, 4)  # and torch's lazily initialised autograd and optimizer machinery
    th.optim.Adam(layer.parameters()).step(lambda: layer(th.ones(2, 4)).sum().backward())  # type: ignore[arg-type]
    before = _rss_mb()
    with PeakRss() as peak:
        if runner == "env_floor":
            time_floor(row, seed, warmup, 1)
        else:
            time_model(build_model(runner, row, seed), warmup, 1)
    return peak.peak - before


def measure_memory(rows: list[Row], seed: int, warmup: int) -> dict[tuple[str, str], float]:
    out = {}
    context = multiprocessing.get_context("spawn")
    for row in rows:
        for runner in STANDARD_RUNNERS:
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                out[(row.name, runner)] = pool.submit(memory_child, runner, row, seed, warmup).result()
            print(f"  memory {row.name:18s} {runner:18s} peak RSS growth {out[(row.name, runner)]:7.1f} MB", flush=True)
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
        f"torch threads: {th.get_num_threads()}, BLAS threads: {BLAS_THREADS}; "
        f"load average before/after: {loads[0]} / {loads[1]}; "
        f"run took {elapsed / 60:.1f} min.  ",
        f"{args.reps} repetitions x ({args.warmup} warm-up + {args.iters} measured iterations) per runner, "
        "runners alternated. Medians over repetitions. "
        "Speed-up and wall/floor are medians of per-repetition paired ratios (min-max in brackets).",
        "",
        "The machine is shared: absolute figures move with the load of other processes; the paired ratios are",
        "the figures to read.",
        "",
        "| row | runner | steps/s | speed-up vs sb3-contrib | wall / env floor | ms/iter | collect | policy phase "
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
        *goal_table(summary),
    ]
    return "\n".join(lines)


def baseline_table(raw: pd.DataFrame, baselines: list[str]) -> list[str]:
    """Before/after: each baseline's and the current TRPOPlus's wall / env floor, and the current one's speed-up over each."""
    if not baselines:
        return []
    lines = [
        "",
        "## Against earlier versions (--baselines)",
        "",
        "Wall / env floor of each version, and the current TRPOPlus's speed-up over each, as medians of",
        "per-repetition paired ratios (min-max over repetitions in brackets).",
        "",
        "| row | " + " | ".join(f"{name} wall / floor" for name in [*baselines, "trpo_plus"])
        + " | " + " | ".join(f"trpo_plus over {name}" for name in baselines) + " |",
        "| --- |" + " ---: |" * (2 * len(baselines) + 1),
    ]

    def cell(values: list[float]) -> str:
        return f"{np.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})" if values else "–"

    for env_id in raw.env.unique():
        floors = [cell(_paired_ratio(raw, env_id, name, "env_floor", "wall_per_step")) for name in [*baselines, "trpo_plus"]]
        gains = [cell(_paired_ratio(raw, env_id, "trpo_plus", name, "steps_per_s")) for name in baselines]
        lines.append(f"| {env_id} | " + " | ".join(floors + gains) + " |")
    return lines


def goal_table(summary: pd.DataFrame) -> list[str]:
    """
    Each row against the speed goal, with the ceiling the environment sets: an algorithm that
    cost nothing beyond stepping the environment would run at the env floor's speed, so no
    speed-up over sb3-contrib can exceed sb3-contrib's wall / env floor on that row.
    """
    lines = [
        "## Against the goal",
        "",
        "Ceiling = sb3-contrib's wall / env floor: the speed-up of an algorithm that cost nothing but the",
        "environment's steps. Own time = ms per iteration beyond the env floor (wall - floor at the median).",
        "",
        "| row | speed-up | ceiling | speed-up / ceiling | TRPOPlus wall / floor "
        "| TRPOPlus own ms/iter | sb3-contrib own ms/iter |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for env_id in summary.env.unique():
        part = summary[summary.env == env_id].set_index("runner")
        if not {"env_floor", "sb3_contrib_trpo", "trpo_plus"} <= set(part.index):
            continue
        ours, theirs, floor = part.loc["trpo_plus"], part.loc["sb3_contrib_trpo"], part.loc["env_floor"]
        ceiling = theirs.wall_over_floor
        lines.append(
            f"| {env_id} | {ours.speedup_vs_sb3:.2f}x | {ceiling:.2f}x | {ours.speedup_vs_sb3 / ceiling:.0%} "
            f"| {ours.wall_over_floor:.2f}x | {ours.wall_ms_per_iter - floor.wall_ms_per_iter:,.0f} "
            f"| {theirs.wall_ms_per_iter - floor.wall_ms_per_iter:,.0f} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="ROW",
                        help=f"rows to measure (default: all): {', '.join(ROWS)}")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="iterations run before timing")
    parser.add_argument("--iters", type=int, default=3, help="measured iterations per repetition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of TRPOPlus per row")
    parser.add_argument(
        "--blas-threads",
        default="1",
        help="OpenBLAS/OpenMP/MKL threads for NumPy (set before NumPy loads); 'default' leaves the library's choice",
    )
    parser.add_argument(
        "--torch-threads", default="1", help="torch's thread count for every runner; 'default' leaves torch's choice"
    )
    parser.add_argument(
        "--baselines", nargs="*", default=[], metavar="COMMIT",
        help="also time TRPOPlus as it was at these git commits (runners trpo_plus@<commit>), for before/after",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess peak-memory pass")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    set_torch_threads(args.torch_threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loads = (" ".join(f"{x:.2f}" for x in os.getloadavg()), "")
    started = time.perf_counter()

    baselines = [baseline_runner(commit) for commit in args.baselines]
    rows = []
    names = list(RUNNERS)
    selected = [ROWS[name] for name in args.rows]
    for row in selected:
        for rep in range(args.reps):
            order = rotated(names, rep)
            for runner in order:
                result = run_one(runner, row, args.seed + rep, args.warmup, args.iters)
                result.update(env=row.name, runner=runner, rep=rep, batch=row.batch())
                result["steps_per_s"] = result["steps"] / result["wall"]
                result["wall_per_step"] = result["wall"] / result["steps"]
                rows.append(result)
                print(f"{row.name:18s} rep {rep} {runner:18s} {result['steps_per_s']:8.0f} steps/s", flush=True)
        if args.profile:
            print(f"  profile written to {profile_row(row, args.seed, args.warmup, args.iters, out)}", flush=True)
    raw = pd.DataFrame(rows)
    raw.to_csv(out / "throughput_raw.csv", index=False)
    memory = {} if args.no_memory else measure_memory(selected, args.seed, args.warmup)
    summary = summarise(raw, memory)
    summary.to_csv(out / "throughput.csv", index=False)
    loads = (loads[0], " ".join(f"{x:.2f}" for x in os.getloadavg()))
    text = markdown(summary, args, loads, time.perf_counter() - started) + "\n".join(baseline_table(raw, baselines))
    (out / "throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
