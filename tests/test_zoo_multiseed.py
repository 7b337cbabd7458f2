"""
``trpo-plus-zoo train -optimize --trial-seeds K``: each trial trains K seeds and reports their mean or
median; the pruner sees the running aggregate. End to end on CartPole-v1 with tiny budgets, on a
journal file, SQLite and PostgreSQL, with two workers on one study.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from test_zoo_postgres import HEARTBEAT, postgres_url  # noqa: F401  (fixture: a throw-away PostgreSQL server)
from zoo_utils import TINY_OPTIMIZE, ZOO, zoo_env

from sb3_trpo_plus.zoo import TRPOPlusExperimentManager, ZooOptions, cli, current_zoo_options, zoo_options
from sb3_trpo_plus.zoo.multiseed import TrialSeeds

#: 2 evaluations of 2 episodes, 2048 steps per seed (2 rollouts of CartPole's 2 x 512 steps), no pruning
BUDGET = 2048
MULTI = [*TINY_OPTIMIZE, "-n", str(BUDGET), "--n-evaluations", "2", "--pruner", "none", "-f", "logs"]


def _worker(workdir: Path, name: str, args: list[str]) -> subprocess.Popen[str]:
    (workdir / name).mkdir()
    return subprocess.Popen(
        [*ZOO, "train", *MULTI, *args], cwd=workdir / name, env=zoo_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(worker: subprocess.Popen[str]) -> None:
    output, _ = worker.communicate(timeout=600)
    assert worker.returncode == 0, output


def _check_aggregates(
    trial: FrozenTrial, n_seeds: int, aggregate: str, n_evaluations: int = 2, budget: int = BUDGET
) -> None:
    """The trial's reported values are the aggregates of its per-seed evaluation rewards."""
    combine = statistics.fmean if aggregate == "mean" else statistics.median
    assert trial.user_attrs["trial_seeds"] == [n_seeds * trial.number + k for k in range(n_seeds)]
    assert trial.user_attrs["trial_aggregate"] == aggregate
    rewards = trial.user_attrs["seed_rewards"]
    assert len(rewards) == n_evaluations and all(len(row) == n_seeds for row in rewards)
    expected = [combine(row) for row in rewards]
    assert trial.user_attrs["aggregate_rewards"] == pytest.approx(expected)
    assert trial.intermediate_values == pytest.approx(dict(enumerate(expected)))
    if trial.state == TrialState.COMPLETE:
        assert trial.value == pytest.approx(expected[-1])
    # every seed learned up to (at least) its share of the budget at each evaluation
    for index, steps in enumerate(trial.user_attrs["seed_timesteps"]):
        assert all(step >= (index + 1) * budget // n_evaluations for step in steps)


def test_trial_seeds_settings() -> None:
    settings = TrialSeeds(3, "median")
    assert settings.seeds(0) == [0, 1, 2] and settings.seeds(4) == [12, 13, 14]
    assert settings.combine([1.0, 10.0, 2.0]) == 2.0 and TrialSeeds(3).combine([1.0, 10.0, 1.0]) == 4.0
    with pytest.raises(ValueError, match="trial-seeds"):
        TrialSeeds(0)
    with pytest.raises(ValueError, match="trial-aggregate"):
        TrialSeeds(2, "max")


def test_cli_refuses_zero_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    with pytest.raises(SystemExit, match="--trial-seeds must be >= 1"):
        cli.main(["train", *MULTI, "--trial-seeds", "0"])


@pytest.mark.slow  # (two workers on one study: PostgreSQL in the default run; the journal file: test_zoo.py)
def test_two_workers_on_a_journal_file(tmp_path: Path) -> None:
    storage = str(tmp_path / "study.log")
    workers = [
        _worker(tmp_path, f"w{seed}", ["--trial-seeds", "2", "--n-trials", "1", "--seed", str(seed),
                                       "--storage", storage, "--study-name", "journal"])
        for seed in (1, 2)
    ]  # fmt: skip
    for worker in workers:
        _finish(worker)
    study = optuna.load_study(
        study_name="journal", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    )
    assert sorted(t.number for t in study.trials) == [0, 1]
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        _check_aggregates(trial, 2, "mean")


def test_median_of_three_seeds_on_sqlite(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _finish(_worker(tmp_path, "w", ["--trial-seeds", "3", "--trial-aggregate", "median", "--n-trials", "1",
                                    "--seed", "3", "--storage", storage, "--study-name", "sqlite"]))  # fmt: skip
    (trial,) = optuna.load_study(study_name="sqlite", storage=storage).trials
    assert trial.state == TrialState.COMPLETE
    _check_aggregates(trial, 3, "median")


def test_two_workers_on_postgresql(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    workers = [
        _worker(tmp_path, f"w{seed}", ["--trial-seeds", "2", "--n-trials", "1", "--seed", str(seed),
                                       "--storage", postgres_url, "--study-name", "multiseed", *HEARTBEAT])
        for seed in (1, 2)
    ]  # fmt: skip
    for worker in workers:
        _finish(worker)
    trials = optuna.load_study(study_name="multiseed", storage=postgres_url).trials
    assert sorted(t.number for t in trials) == [0, 1]
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} == {str(w.pid) for w in workers}
    for trial in trials:
        assert trial.state == TrialState.COMPLETE
        _check_aggregates(trial, 2, "mean")


class RecordingPruner(optuna.pruners.ThresholdPruner):
    """Records what the pruner sees; prunes trial 0 only (module level: rl_zoo3 pickles the study's pruner)."""

    def __init__(self, reported: list[tuple[int, int, float]], **kwargs: float) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.reported = reported

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        assert step is not None
        self.reported.append((trial.number, step, trial.intermediate_values[step]))
        return trial.number == 0 and super().prune(study, trial)


def test_pruning_acts_on_the_running_aggregate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    In process, through the CLI: a pruner that stops trial 0 if its reported value is below 1e9 after
    one warm-up step (trial 1 runs to its end: rl_zoo3 needs one finished trial for its report).
    Trial 0 is pruned at its second evaluation (of 4), having reported the aggregates of its seeds,
    and no seed trained past that evaluation.
    """
    reported: list[tuple[int, int, float]] = []
    monkeypatch.setattr(
        TRPOPlusExperimentManager, "_create_pruner", lambda self, name: RecordingPruner(reported, lower=1e9, n_warmup_steps=1)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    storage = str(tmp_path / "study.log")
    cli.main(["train", *MULTI, "-n", "4096", "--n-evaluations", "4", "--trial-seeds", "2", "--n-trials", "2", "--seed", "0",
              "--storage", storage, "--study-name", "pruned"])  # fmt: skip
    study = optuna.load_study(
        study_name="pruned", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    )
    trial, finished = study.trials
    assert trial.state == TrialState.PRUNED and finished.state == TrialState.COMPLETE
    _check_aggregates(finished, 2, "mean", n_evaluations=4, budget=4096)
    rewards = trial.user_attrs["seed_rewards"]
    assert len(rewards) == 2  # evaluations 0 and 1 of 4: pruned at step 1, after the warm-up step 0
    means = [statistics.fmean(row) for row in rewards]
    assert reported[:2] == [(0, 0, pytest.approx(means[0])), (0, 1, pytest.approx(means[1]))]
    assert [(number, step) for number, step, _ in reported[2:]] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert trial.intermediate_values == {0: pytest.approx(reported[0][2]), 1: pytest.approx(reported[1][2])}
    # the seeds stopped after evaluation 1 (a rollout is n_steps x 2 envs, sampled: 512 to 4096 steps)
    steps = trial.user_attrs["seed_timesteps"]
    assert len(steps) == 2 and all(2048 <= step < 2048 + 4096 for step in steps[1])
    # the command's options lived only while it ran: nothing of it is left in the package's state
    assert current_zoo_options() == ZooOptions()


def test_zoo_options_are_scoped_and_given_to_the_manager() -> None:
    options = ZooOptions(trial_seeds=TrialSeeds(3, "median"), search_vine=True)
    with zoo_options(options):
        manager = TRPOPlusExperimentManager(argparse.Namespace(), "trpo_plus", "CartPole-v1", "logs")
        with zoo_options(ZooOptions()):
            assert current_zoo_options() == ZooOptions()
        assert current_zoo_options() is options
    assert manager.options is options and current_zoo_options() == ZooOptions()
    explicit = TRPOPlusExperimentManager(argparse.Namespace(), "trpo_plus", "CartPole-v1", "logs", options=options)
    assert explicit.options is options
    assert TRPOPlusExperimentManager(argparse.Namespace(), "trpo_plus", "CartPole-v1", "logs").options == ZooOptions()
    # no switch lives on the class or in a module any more
    assert not hasattr(TRPOPlusExperimentManager, "trial_seeds") and not hasattr(TRPOPlusExperimentManager, "heartbeat")
    from sb3_trpo_plus.zoo import hyperparams_opt

    assert not hasattr(hyperparams_opt, "SEARCH_VINE")


def test_search_vine_reaches_every_trial_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # in process: --search-vine is carried by the command's options to each trial (user attribute),
    # and the sampler then searches the sampling scheme; nothing is left behind for the next command
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    storage = str(tmp_path / "study.log")
    cli.main(["train", *MULTI, "-n", "1024", "--n-trials", "2", "--seed", "0", "--search-vine",
              "--storage", storage, "--study-name", "vine"])  # fmt: skip
    study = optuna.load_study(
        study_name="vine", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    )
    assert len(study.trials) == 2
    assert all(trial.user_attrs["search_vine"] is True and "sampling" in trial.params for trial in study.trials)
    assert current_zoo_options() == ZooOptions()
