"""
Wall clock of one vine iteration with in-process branches against branches in worker processes
(``vine_kwargs={"branch_vec_env": "subproc", "n_branch_workers": W}``), and a projection for
machines with more cores.

    python benchmarks/vine_branch_workers.py                         # Hopper-v5 and CartPole-v1
    python benchmarks/vine_branch_workers.py --envs Hopper-v5 --workers 1 2 4 --iters 3

For every env and backend the same model (same seed, same settings) runs ``--warmup`` +
``--iters`` iterations; only the last ``--iters`` count. Timed per iteration: the trunk (the
single-path collection), the branches (``VineSampler.branch``), and, inside the branches, the
time spent stepping the environment copies (``BranchPool.step``: the environments' own time
in-process; with workers, the round trip through the pipes) and restoring them.

The projection assumes W workers on W free cores: the branches' policy evaluations, bookkeeping
and restores stay as measured in-process, the environment stepping measured in-process is
divided by W, and every step pays the pipe round trip measured with one worker (its stepping
time minus the in-process stepping time), taken as independent of W. On a 2-core machine shared
with other jobs, workers compete with the main process: read the measured ratios for this
machine and the projection for a larger one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.branch_pool import BranchPool
from sb3_trpo_plus.vine.sampler import VineSampler

SETTINGS: dict[str, dict[str, Any]] = {
    "Hopper-v5": {"n_steps": 1024, "batch_size": 128, "n_critic_updates": 20, "vine": {"n_actions": 4}},
    "CartPole-v1": {"n_steps": 512, "batch_size": 512, "n_critic_updates": 20, "vine": {}},
}


class Timer:
    """Accumulates the time spent in wrapped methods."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj: Any, name: str, key: str) -> None:
        original = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

        setattr(obj, name, timed)


def measure(env_id: str, backend: str, workers: int | None, warmup: int, iters: int, seed: int) -> dict[str, float]:
    """Per-iteration seconds of the trunk, the branches and the branch env steps, for one backend."""
    spec = SETTINGS[env_id]
    vine = dict(spec["vine"], branch_vec_env=backend)
    if backend == "subproc":
        vine["n_branch_workers"] = workers
    kwargs = {key: value for key, value in spec.items() if key != "vine"}
    model = TRPOPlus(
        "MlpPolicy", make_vec_env(env_id, n_envs=2, seed=seed), seed=seed, sampling="vine", vine_kwargs=vine, **kwargs
    )
    sampler = model._vine
    assert isinstance(sampler, VineSampler)
    timer = Timer()
    pool: BranchPool = sampler.pool
    timer.wrap(sampler, "branch", "branches")
    timer.wrap(pool, "step", "env_steps")
    timer.wrap(pool, "restore", "restores")
    timer.wrap(model, "collect_rollouts", "collect")
    timer.wrap(model, "train", "train")
    n_steps = model.n_steps * model.n_envs
    model.learn(warmup * n_steps, reset_num_timesteps=True)
    timer.seconds.clear()
    started = time.perf_counter()
    model.learn(iters * n_steps, reset_num_timesteps=False)
    wall = time.perf_counter() - started
    sampler.close()
    per = {key: value / iters for key, value in timer.seconds.items()}
    per["iteration"] = wall / iters
    per["trunk"] = per["collect"] - per["branches"]
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--project", nargs="+", type=int, default=[2, 4, 8, 16], help="worker counts to project for")
    parser.add_argument("--out", default="benchmarks/results/vine_branch_workers.json")
    args = parser.parse_args()
    th.set_num_threads(1)
    rows = []
    for env_id in args.envs:
        inprocess = measure(env_id, "dummy", None, args.warmup, args.iters, args.seed)
        rows.append({"env": env_id, "backend": "dummy", "workers": 0, **inprocess})
        round_trip = None
        for workers in sorted(set(args.workers) | {1}):
            measured = measure(env_id, "subproc", workers, args.warmup, args.iters, args.seed)
            if workers == 1:
                round_trip = max(0.0, measured["env_steps"] - inprocess["env_steps"])
            rows.append(
                {
                    "env": env_id,
                    "backend": "subproc",
                    "workers": workers,
                    **measured,
                    "branches_vs_inprocess": measured["branches"] / inprocess["branches"],
                }
            )
        assert round_trip is not None
        for workers in args.project:
            branches = inprocess["branches"] - inprocess["env_steps"] + inprocess["env_steps"] / workers + round_trip
            rows.append(
                {
                    "env": env_id,
                    "backend": "projection",
                    "workers": workers,
                    "branches": branches,
                    "iteration": inprocess["iteration"] - inprocess["branches"] + branches,
                    "branches_vs_inprocess": branches / inprocess["branches"],
                }
            )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "python benchmarks/vine_branch_workers.py", "rows": rows}, indent=2))
    print("| env | branches | iteration s | trunk s | branches s | branch env steps s | branches vs in-process |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        name = {"dummy": "in-process", "subproc": f"{row['workers']} worker(s), measured"}.get(
            row["backend"], f"{row['workers']} workers on {row['workers']} cores, projected"
        )

        def cell(key: str, row: dict[str, Any] = row) -> str:
            return f"{row[key]:.3f}" if key in row else "-"

        ratio = f"{row.get('branches_vs_inprocess', 1.0):.2f}x"
        print(
            f"| {row['env']} | {name} | {cell('iteration')} | {cell('trunk')} | {cell('branches')} | "
            f"{cell('env_steps')} | {ratio} |"
        )


if __name__ == "__main__":
    main()
