"""
The analysis of ``benchmarks/zoo_budgets.py`` on synthetic per-seed data: IQM, stratified bootstrap
CIs, probability of improvement, performance profiles, sample-efficiency curves, the report and its
pictures; and the plan of runs (zoo budgets, resumable result files, exact commands).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_module():
    spec = importlib.util.spec_from_file_location("zoo_budgets", REPO / "benchmarks" / "zoo_budgets.py")
    assert spec is not None and spec.loader is not None
    saved = list(sys.argv)
    sys.argv = sys.argv[:1]  # (the module reads --blas-threads from sys.argv on import)
    try:
        module = importlib.util.module_from_spec(spec)
        sys.modules["zoo_budgets"] = module  # (dataclasses look their module up)
        spec.loader.exec_module(module)
    finally:
        sys.argv = saved
    return module


zb = _load_module()


def test_iqm_and_stratified_bootstrap() -> None:
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])
    assert zb.iqm(values) == pytest.approx(np.mean([2.0, 3.0, 4.0, 5.0]))  # the middle half: outliers do not count
    tasks = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0])]
    estimate, interval = zb.stratified_bootstrap_ci(tasks, zb.flat(np.mean), reps=500)
    assert estimate[0] == pytest.approx(np.mean([1, 2, 3, 10, 20]))
    # stratified: every resample keeps 3 runs of task 1 and 2 of task 2, so the mean stays within
    # (3*1 + 2*10)/5 and (3*3 + 2*20)/5
    assert 23 / 5 <= interval[0, 0] <= estimate[0] <= interval[1, 0] <= 49 / 5
    # one value per task: nothing to resample, a zero-width interval
    estimate, interval = zb.stratified_bootstrap_ci([np.array([2.0]), np.array([4.0])], zb.flat(np.mean), reps=50)
    assert interval[:, 0].tolist() == [3.0, 3.0]


def test_probability_of_improvement() -> None:
    better, worse = [np.array([3.0, 4.0])], [np.array([1.0, 2.0])]
    assert zb.probability_of_improvement(better, worse) == 1.0
    assert zb.probability_of_improvement(worse, better) == 0.0
    assert zb.probability_of_improvement([np.array([1.0])], [np.array([1.0])]) == 0.5
    # mean over tasks
    assert zb.probability_of_improvement([*better, np.array([0.0])], [*worse, np.array([1.0])]) == 0.5


def _synthetic_runs(rng: np.random.Generator) -> pd.DataFrame:
    """TRPOPlus reaches the published score on every env, sb3-contrib half of it; 5 seeds, 5 evaluations."""
    rows = []
    for env in ("CartPole-v1", "Hopper-v5", "Swimmer-v5"):
        published = zb.PUBLISHED[env][0]
        for algo, level in (("trpo_plus", 1.0), ("trpo", 0.5)):
            for seed in range(5):
                final = level * published * (1 + 0.01 * rng.standard_normal())
                timesteps = [200_000 * (i + 1) for i in range(5)]
                curve = [final * (i + 1) / 5 for i in range(5)]
                rows.append({"algo": algo, "env": env, "seed": seed, "budget": 1_000_000, "eval_points": 5,
                             "eval_episodes": 10, "budget_is_zoo": True, "final": curve[-1], "timesteps": timesteps,
                             "eval_mean": curve, "seconds": 1.0,
                             "command": f"trpo-plus-zoo train --algo {algo} --env {env} --seed {seed}"})  # fmt: skip
    return pd.DataFrame(rows)


def test_analysis_on_synthetic_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs = _synthetic_runs(rng)
    random = {"CartPole-v1": 0.0, "Hopper-v5": 0.0, "Swimmer-v5": 0.0}
    report = zb.analyze(tmp_path, reps=200, random=random, runs=runs)

    # per env: the IQM of the finals, inside its CI
    for env in random:
        for algo in ("trpo_plus", "trpo"):
            entry = report["per_env"][env][algo]
            finals = runs[(runs.env == env) & (runs.algo == algo)].final.to_numpy()
            assert entry["iqm"] == pytest.approx(zb.iqm(finals)) and entry["seeds"] == 5
            assert entry["ci"][0] <= entry["iqm"] <= entry["ci"][1]
    # normalised aggregates: ~1 for TRPOPlus, ~0.5 for sb3-contrib, CIs apart
    plus, contrib = report["aggregates"]["trpo_plus"], report["aggregates"]["trpo"]
    assert plus["IQM"]["estimate"] == pytest.approx(1.0, abs=0.02)
    assert contrib["IQM"]["estimate"] == pytest.approx(0.5, abs=0.02)
    assert contrib["IQM"]["ci"][1] < plus["IQM"]["ci"][0]
    assert plus["Optimality gap"]["estimate"] == pytest.approx(0.0, abs=0.02)
    assert contrib["Optimality gap"]["estimate"] == pytest.approx(0.5, abs=0.02)
    assert report["probability_of_improvement"]["estimate"] == 1.0

    # outputs: per-seed values, curves, commands, pictures, the report
    per_seed = pd.read_csv(tmp_path / "per_seed.csv")
    assert len(per_seed) == 30 and set(per_seed.columns) >= {"algo", "env", "seed", "final"}
    assert len(pd.read_csv(tmp_path / "curves.csv")) == 150
    assert len((tmp_path / "commands.txt").read_text().splitlines()) == 30
    for picture in ("aggregates.png", "performance_profile.png", "sample_efficiency.png", "curves.png"):
        assert (tmp_path / picture).read_bytes().startswith(b"\x89PNG"), picture
    text = (tmp_path / "report.md").read_text()
    hopper_plus = report["per_env"]["Hopper-v5"]["trpo_plus"]
    assert f"{hopper_plus['iqm']:.1f} [{hopper_plus['ci'][0]:.1f}, {hopper_plus['ci'][1]:.1f}] (5)" in text
    assert "3618.4 +- 356.8 (Hopper-v3, 1M)" in text
    assert json.loads((tmp_path / "summary.json").read_text())["random_scores"] == random


def test_sample_efficiency_curve_follows_the_runs() -> None:
    runs = _synthetic_runs(np.random.default_rng(1))
    random = {"CartPole-v1": 0.0, "Hopper-v5": 0.0, "Swimmer-v5": 0.0}
    curves = zb.sample_efficiency(runs, ["CartPole-v1", "Hopper-v5", "Swimmer-v5"], ["trpo_plus"], random, reps=100)
    estimate, interval = curves["trpo_plus"]
    # the synthetic curves rise linearly from 0.2 (20% of the budget) to 1.0
    at = {float(f): i for i, f in enumerate(zb.FRACTIONS)}
    assert estimate[at[0.2]] == pytest.approx(0.2, abs=0.01) and estimate[at[1.0]] == pytest.approx(1.0, abs=0.02)
    assert np.all(interval[0] <= estimate + 1e-12) and np.all(estimate <= interval[1] + 1e-12)


def test_plan_uses_the_zoo_budgets_and_skips_finished_runs(tmp_path: Path) -> None:
    import argparse

    args = argparse.Namespace(envs=None, smoke=False, seeds=None, timesteps=["CartPole-v1=5000"], algos=["trpo_plus", "trpo"],
                              seed_offset=0, eval_points=20, eval_episodes=10)  # fmt: skip
    runs = zb.plan(args)
    assert len(runs) == 10 * 2 * 5
    budgets = {run.env: run.budget for run in runs}
    assert budgets["Hopper-v5"] == budgets["Ant-v5"] == budgets["BipedalWalker-v3"] == 1_000_000
    assert budgets["LunarLander-v3"] == 200_000 and budgets["Acrobot-v1"] == 100_000 and budgets["CartPole-v1"] == 5000
    hopper = next(run for run in runs if run.env == "Hopper-v5" and run.algo == "trpo")
    command = hopper.command(tmp_path)
    assert command[:4] == ["python", "-m", "sb3_trpo_plus.zoo", "train"]
    assert shlex.join(command).count("-conf pkg:trpo_plus") == 1 and "-n" not in command  # the zoo's own budget
    assert command[command.index("--eval-freq") + 1] == "50000"
    cartpole = next(run for run in runs if run.env == "CartPole-v1")
    assert cartpole.command(tmp_path)[-2:] == ["-n", "5000"]
    # resumable: a run with a result file is not run again
    (tmp_path / zb.RUNS_DIR).mkdir()
    for run in runs:
        (tmp_path / zb.RUNS_DIR / f"{run.name}.json").write_text("{}")
    messages: list[str] = []
    assert zb.run_all(runs, tmp_path, workers=2, say=messages.append) == []
    assert messages[0].startswith("100 runs, 100 already done, 0 to do")
