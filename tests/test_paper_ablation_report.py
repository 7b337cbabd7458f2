"""The paper-comparison report (benchmarks/paper_ablation.py) on made-up runs: the best step size per env, the scores."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import paper_ablation as ablation  # noqa: E402


def make_run(variant: str, env: str, seed: int, final: float, start: float = 0.0) -> dict[str, Any]:
    curve = [(250, start), (500, (start + final) / 2), (1000, final)]
    return {"variant": variant, "env": env, "seed": seed, "budget": 1000, "final_return": final} | {
        "rejected_steps": 0,
        "seconds": 1.0,
        "curve": curve,
    }


@pytest.fixture
def runs() -> list[dict[str, Any]]:
    made = []
    for seed in range(3):
        for env, scale in (("CartPole-v1", 1.0), ("Hopper-v5", 10.0)):
            made.append(make_run("single_path", env, seed, scale * (100 + seed)))
            made.append(make_run("max_kl", env, seed, scale * (50 + seed)))
            # the best step size differs between the envs
            made.append(make_run("natural_gradient_0.1", env, seed, scale * (80 if env == "CartPole-v1" else 20)))
            made.append(make_run("natural_gradient_0.3", env, seed, scale * (20 if env == "CartPole-v1" else 60)))
    return made


def test_the_best_step_size_is_chosen_per_env_and_alone_kept(runs: list[dict[str, Any]]) -> None:
    assert ablation.best_step_sizes(runs) == {"CartPole-v1": "natural_gradient_0.1", "Hopper-v5": "natural_gradient_0.3"}
    kept = ablation.kept_runs(runs)
    natural = [run for run in kept if run["variant"] == "natural_gradient"]
    assert len(natural) == 6
    assert {(run["env"], run["step_size_variant"]) for run in natural} == {
        ("CartPole-v1", "natural_gradient_0.1"),
        ("Hopper-v5", "natural_gradient_0.3"),
    }
    assert not any(run["variant"].startswith("natural_gradient_") for run in kept)


def test_scores_are_normalised_from_the_initial_return_to_the_best_mean(runs: list[dict[str, Any]]) -> None:
    scores = ablation.normalised_scores(runs, "final")
    # 0 is the first rollout's return (0 here), 1 single path's mean (101 and 1010): the best variant's
    np.testing.assert_allclose(scores["single_path"][:, 0], np.array([100, 101, 102]) / 101)
    np.testing.assert_allclose(scores["single_path"][:, 1], np.array([100, 101, 102]) / 101)
    np.testing.assert_allclose(scores["natural_gradient"][:, 0], 80 / 101)
    np.testing.assert_allclose(scores["natural_gradient"][:, 1], 600 / 1010)
    auc = ablation.normalised_scores(runs, "auc")
    # the curve's mean over the budget is below its final value for a rising curve
    assert (auc["single_path"] < scores["single_path"]).all()


def test_the_report_has_its_tables_and_pictures(runs: list[dict[str, Any]], tmp_path: Path) -> None:
    ablation.write_report(tmp_path, runs, "test")
    report = (tmp_path / "report.md").read_text()
    area = float(np.mean(ablation.curve_grid(make_run("natural_gradient_0.1", "CartPole-v1", 0, 80))))
    assert f"| natural_gradient_0.1 | 80.0 +- 0.0 ({area:.1f}), n=3 **(best)** |" in report
    assert "| max_kl | final | -50.0 [" in report  # CartPole's difference against single path
    assert (tmp_path / "per_seed.csv").read_text().count("\n") == len(runs) + 1
    for picture in ("iqm.png", "curves.png"):
        assert (tmp_path / picture).stat().st_size > 1000
