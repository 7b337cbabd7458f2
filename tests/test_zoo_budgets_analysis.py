"""
The analysis of ``benchmarks/zoo_budgets.py`` on synthetic per-run files: IQM, rliable's stratified
bootstrap CIs, probability of improvement, performance profiles, sample-efficiency curves, the
report and its pictures, partial results (too few runs on an env, uneven seeds); and the plan of
runs (zoo budgets, resumable result files, exact commands).
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
from scipy.stats import trim_mean

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
    # rliable's stratified bootstrap: a (runs, tasks) matrix, runs resampled within each task (column)
    tasks = np.array([[1.0, 100.0], [2.0, 200.0], [3.0, 300.0]])
    points, intervals = zb.interval_estimates({"a": tasks}, lambda s: np.array([np.mean(s)]), reps=500)
    estimate, interval = points["a"][0], intervals["a"][:, 0]
    assert estimate == pytest.approx(np.mean([1, 2, 3, 100, 200, 300]))
    # stratified: every resample keeps 3 runs of each task, so the mean stays within (3*1 + 3*100)/6 and
    # (3*3 + 3*300)/6 (resampling the 6 runs together would reach down to 1)
    assert 303 / 6 <= interval[0] < estimate < interval[1] <= 909 / 6
    # reproducible: rliable resamples with NumPy's global generator, which interval_estimates seeds
    again = zb.interval_estimates({"a": tasks}, lambda s: np.array([np.mean(s)]), reps=500)[1]["a"][:, 0]
    assert again.tolist() == interval.tolist()
    # one value per task: nothing to resample, a zero-width interval
    points, intervals = zb.interval_estimates({"a": np.array([[2.0, 4.0]])}, lambda s: np.array([np.mean(s)]), reps=50)
    assert intervals["a"][:, 0].tolist() == [3.0, 3.0]


def test_probability_of_improvement() -> None:
    """rliable's ``probability_of_improvement`` on (runs, tasks) matrices, as the report uses it."""
    from rliable import metrics

    better, worse = np.array([[3.0], [4.0]]), np.array([[1.0], [2.0]])
    assert metrics.probability_of_improvement(better, worse) == 1.0
    assert metrics.probability_of_improvement(worse, better) == 0.0
    assert metrics.probability_of_improvement(np.array([[1.0]]), np.array([[1.0]])) == 0.5
    # ties count half: (1 vs 1) 0.5, (1 vs 3) 0, (2 vs 1) 1, (2 vs 3) 0
    assert metrics.probability_of_improvement(np.array([[1.0], [2.0]]), np.array([[1.0], [3.0]])) == 0.375
    # mean over tasks
    x, y = np.array([[3.0, 0.0], [4.0, 0.0]]), np.array([[1.0, 1.0], [2.0, 1.0]])
    assert metrics.probability_of_improvement(x, y) == 0.5
    # the interval: both algorithms resampled within each task, independently
    points, intervals = zb.interval_estimates({"x,y": (better, worse)}, metrics.probability_of_improvement, reps=100)
    assert points["x,y"] == 1.0 and intervals["x,y"].reshape(-1).tolist() == [1.0, 1.0]


ENVS3 = ("CartPole-v1", "Hopper-v5", "Swimmer-v5")
RANDOM3 = {"CartPole-v1": 0.0, "Hopper-v5": 0.0, "Swimmer-v5": 0.0}


def _synthetic_runs(rng: np.random.Generator) -> pd.DataFrame:
    """TRPOPlus reaches the published score on every env, sb3-contrib half of it; 5 seeds, 5 evaluations."""
    rows = []
    for env in ENVS3:
        published = zb.PUBLISHED[env][0]
        for algo, level in (("trpo_plus", 1.0), ("trpo", 0.5)):
            for seed in range(5):
                rows.append(_synthetic_run(algo, env, seed, level * published * (1 + 0.01 * rng.standard_normal())))
    return pd.DataFrame(rows)


def _synthetic_run(algo: str, env: str, seed: int, final: float, budget: int = 1_000_000) -> dict:
    timesteps = [budget // 5 * (i + 1) for i in range(5)]
    curve = [final * (i + 1) / 5 for i in range(5)]
    return {"algo": algo, "env": env, "seed": seed, "budget": budget, "eval_points": 5, "eval_episodes": 10,
            "budget_is_zoo": True, "final": curve[-1], "timesteps": timesteps, "eval_mean": curve, "seconds": 1.0,
            "command": f"trpo-plus-zoo train --algo {algo} --env {env} --seed {seed}"}  # fmt: skip


def _write_runs(out: Path, runs: pd.DataFrame, random: dict[str, float]) -> None:
    """Per-run files as ``run`` leaves them, and the random-policy scores (so that none is measured)."""
    (out / zb.RUNS_DIR).mkdir(parents=True)
    for record in runs.to_dict("records"):
        (out / zb.RUNS_DIR / f"{record['algo']}__{record['env']}__seed{record['seed']}.json").write_text(json.dumps(record))
    (out / "random_scores.json").write_text(json.dumps(random))


def test_analysis_on_synthetic_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs = _synthetic_runs(rng)
    random = dict(RANDOM3)
    _write_runs(tmp_path, runs, random)
    zb.main(["analyze", "--out", str(tmp_path), "--reps", "200"])  # the command line, on the per-run files
    report = json.loads((tmp_path / "summary.json").read_text())

    # per env: the IQM of the finals (scipy's 25%-trimmed mean), inside its CI, which has a width
    for env in random:
        for algo in ("trpo_plus", "trpo"):
            entry = report["per_env"][env][algo]
            finals = runs[(runs.env == env) & (runs.algo == algo)].final.to_numpy()
            assert entry["iqm"] == pytest.approx(zb.iqm(finals)) and entry["seeds"] == 5
            assert entry["iqm"] == pytest.approx(float(trim_mean(finals, 0.25)))
            assert entry["ci"][0] <= entry["iqm"] <= entry["ci"][1]
            assert entry["ci"][0] < entry["ci"][1]
    # normalised aggregates: ~1 for TRPOPlus, ~0.5 for sb3-contrib, CIs apart
    assert report["aggregate_envs"] == list(ENVS3) and report["notes"] == []
    plus, contrib = report["aggregates"]["trpo_plus"], report["aggregates"]["trpo"]
    assert plus["IQM"]["estimate"] == pytest.approx(1.0, abs=0.02)
    assert contrib["IQM"]["estimate"] == pytest.approx(0.5, abs=0.02)
    for entry in (plus["IQM"], contrib["IQM"]):
        assert entry["ci"][0] < entry["estimate"] < entry["ci"][1]
    assert contrib["IQM"]["ci"][1] < plus["IQM"]["ci"][0]
    assert plus["Optimality gap"]["estimate"] == pytest.approx(0.0, abs=0.02)
    assert contrib["Optimality gap"]["estimate"] == pytest.approx(0.5, abs=0.02)
    # TRPOPlus better on every env: every resample says so
    poi = report["probability_of_improvement"]
    assert poi["estimate"] == 1.0
    assert 0.5 < poi["ci"][0] <= poi["estimate"] <= poi["ci"][1]

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
    assert f"{poi['estimate']:.3f} [{poi['ci'][0]:.3f}, {poi['ci'][1]:.3f}]" in text
    assert report["random_scores"] == random
    # reproducible: the same files give the same numbers
    first = (tmp_path / "summary.json").read_text()
    zb.analyze(tmp_path, reps=200)
    assert (tmp_path / "summary.json").read_text() == first


def test_analysis_of_partial_results(tmp_path: Path) -> None:
    """Too few runs on an env: no CI and out of the aggregates, said in the report; uneven seeds: the common ones."""
    runs = _synthetic_runs(np.random.default_rng(2))
    runs = runs[~((runs.algo == "trpo") & (runs.env == "Hopper-v5") & (runs.seed == 4))]  # trpo: 4 seeds on Hopper
    lunar = _synthetic_run("trpo_plus", "LunarLander-v3", 0, 100.0, budget=200_000)  # one run, none of sb3-contrib
    runs = pd.concat([runs, pd.DataFrame([lunar])], ignore_index=True)
    random = {**RANDOM3, "LunarLander-v3": -200.0}
    _write_runs(tmp_path, runs, random)
    report = zb.analyze(tmp_path, reps=100)

    assert report["aggregate_envs"] == list(ENVS3)
    assert report["per_env"]["LunarLander-v3"] == {}
    assert report["per_env"]["Hopper-v5"]["trpo"]["seeds"] == 4
    assert report["aggregate_seeds"] == {"trpo_plus": [0, 1, 2, 3, 4], "trpo": [0, 1, 2, 3]}
    lunar_note, seeds_note = report["notes"]
    assert lunar_note.startswith("LunarLander-v3 (TRPOPlus 1 run, sb3-contrib TRPO 0 runs)")
    assert "left out of the aggregates" in lunar_note
    assert seeds_note.startswith("sb3-contrib TRPO: the aggregates use seeds [0, 1, 2, 3]") and "2 other runs" in seeds_note
    assert report["aggregates"]["trpo"]["IQM"]["estimate"] == pytest.approx(0.5, abs=0.02)
    assert report["probability_of_improvement"]["ci"][0] > 0.5
    text = (tmp_path / "report.md").read_text()
    assert "| LunarLander-v3 | 200,000 | no CI (1) | - |" in text
    assert "## Aggregates over CartPole-v1, Hopper-v5, Swimmer-v5" in text
    assert "## Left out" in text and lunar_note in text
    # the single run still shows in the per-seed table and the curves
    assert "LunarLander-v3" in (tmp_path / "per_seed.csv").read_text()
    for picture in ("aggregates.png", "performance_profile.png", "sample_efficiency.png", "curves.png"):
        assert (tmp_path / picture).read_bytes().startswith(b"\x89PNG"), picture


ENVS5 = ("CartPole-v1", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Swimmer-v5")  # (in ENVS order)
WITHOUT_ANT = tuple(env for env in ENVS5 if env != "Ant-v5")


@pytest.mark.parametrize(
    ("ant_seeds", "envs", "contrib_seeds"),
    [
        # 5 envs with Ant cut to 4 seeds: 5 x (5 + 4) = 45 runs, against 4 x 10 = 40 without Ant: Ant in
        (4, ENVS5, [0, 1, 2, 3]),
        # 5 x (5 + 3) = 40, a tie with the 4 complete envs: Ant out, the other envs keep all their seeds
        (3, WITHOUT_ANT, [0, 1, 2, 3, 4]),
        # 5 x (5 + 2) = 35 < 40: Ant out
        (2, WITHOUT_ANT, [0, 1, 2, 3, 4]),
    ],
)
def test_an_env_still_filling_in_is_left_out_rather_than_cutting_the_seeds(
    tmp_path: Path, ant_seeds: int, envs: tuple[str, ...], contrib_seeds: list[int]
) -> None:
    """sb3-contrib has fewer seeds on one env: the aggregates take whichever of (that env in, every env cut to
    its seeds) or (that env out, all seeds) puts more runs in, and on a tie leave the env out."""
    rng = np.random.default_rng(4)
    rows = [
        _synthetic_run(algo, env, seed, level * zb.PUBLISHED[env][0] * (1 + 0.01 * rng.standard_normal()))
        for env in ENVS5
        for algo, level in (("trpo_plus", 1.0), ("trpo", 0.5))
        for seed in range(ant_seeds if (algo, env) == ("trpo", "Ant-v5") else 5)
    ]
    _write_runs(tmp_path, pd.DataFrame(rows), dict.fromkeys(ENVS5, 0.0))
    report = zb.analyze(tmp_path, reps=100)

    assert report["aggregate_envs"] == list(envs)
    assert report["aggregate_seeds"] == {"trpo_plus": [0, 1, 2, 3, 4], "trpo": contrib_seeds}
    assert report["per_env"]["Ant-v5"]["trpo"]["seeds"] == ant_seeds  # the per-env table has every run
    (note,) = report["notes"]
    if "Ant-v5" in envs:
        assert note.startswith(f"sb3-contrib TRPO: the aggregates use seeds {contrib_seeds}")
        assert f"{4 * (5 - ant_seeds)} other runs" in note  # seed 4 on the four complete envs
    else:
        assert note.startswith("Ant-v5: left out of the aggregates, the probability of improvement, the performance")
        assert f"sb3-contrib TRPO has seeds {list(range(ant_seeds))} there, not all of [0, 1, 2, 3, 4]" in note
        assert f"## Aggregates over {', '.join(envs)}" in (tmp_path / "report.md").read_text()
    # the aggregates are those of the chosen envs and seeds (random scores 0: normalised = final / published)
    used = pd.DataFrame(rows)
    used = used[(used.algo == "trpo") & used.env.isin(envs) & used.seed.isin(contrib_seeds)]
    assert len(used) == len(envs) * len(contrib_seeds)
    normalised = used.final / used.env.map(lambda env: zb.PUBLISHED[env][0])
    assert report["aggregates"]["trpo"]["Mean"]["estimate"] == pytest.approx(normalised.mean())


def test_a_per_env_interval_depends_on_its_own_runs_only(tmp_path: Path) -> None:
    """Runs finishing on another env (one earlier in the suite's order) or of the other algorithm leave an
    (env, algorithm)'s CI as it was: a figure already quoted stays valid while the suite fills in."""
    runs = _synthetic_runs(np.random.default_rng(3))
    swimmer_plus = runs[(runs.env == "Swimmer-v5") & (runs.algo == "trpo_plus")]
    (tmp_path / "alone").mkdir()
    (tmp_path / "full").mkdir()
    _write_runs(tmp_path / "alone", swimmer_plus, {"Swimmer-v5": RANDOM3["Swimmer-v5"]})
    _write_runs(tmp_path / "full", runs, dict(RANDOM3))  # + two envs before Swimmer in ENVS, + sb3-contrib's runs
    alone = zb.analyze(tmp_path / "alone", reps=200)["per_env"]["Swimmer-v5"]["trpo_plus"]
    full = zb.analyze(tmp_path / "full", reps=200)["per_env"]["Swimmer-v5"]["trpo_plus"]
    assert alone["ci"][0] < alone["ci"][1]
    assert full == alone


def test_sample_efficiency_curve_follows_the_runs() -> None:
    runs = _synthetic_runs(np.random.default_rng(1))
    curves = zb.sample_efficiency(runs, list(ENVS3), {"trpo_plus": [0, 1, 2, 3, 4]}, dict(RANDOM3), reps=100)
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


def test_a_run_interrupted_before_its_result_file_starts_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = zb.Run("trpo", "Walker2d-v5", 2, 1_000_000, 20, 10, True)
    experiments = tmp_path / "logs" / run.name / run.algo

    def write_evaluations(folder: Path, means: list[float]) -> None:
        folder.mkdir(parents=True)
        results = np.repeat(np.array(means)[:, None], 10, axis=1)
        np.savez(folder / "evaluations.npz", timesteps=np.arange(1, len(means) + 1) * 50_000, results=results)

    # the killed attempt: rl_zoo3's first experiment folder, with the evaluations it reached
    write_evaluations(experiments / f"{run.env}_1", [10.0, 20.0])

    def fake_zoo_train(command: list[str], **kwargs: object) -> object:
        # like rl_zoo3: the new experiment goes into the folder after the last one there
        taken = [int(p.name.rsplit("_", 1)[1]) for p in experiments.glob(f"{run.env}_*")] if experiments.exists() else []
        write_evaluations(experiments / f"{run.env}_{max(taken, default=0) + 1}", [100.0, 200.0, 300.0])
        return type("Completed", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(zb.subprocess, "run", fake_zoo_train)
    (tmp_path / zb.RUNS_DIR).mkdir()
    record = zb.run_one(run, tmp_path)
    assert record["final"] == 300.0 and record["eval_mean"] == [100.0, 200.0, 300.0]
    assert [p.name for p in experiments.iterdir()] == [f"{run.env}_1"]  # only the new attempt's logs
    assert json.loads((tmp_path / zb.RUNS_DIR / f"{run.name}.json").read_text())["final"] == 300.0
