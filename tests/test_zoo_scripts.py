"""
The rest of rl_zoo3's scripts through ``trpo-plus-zoo``, offline: ``push_to_hub --local-only``
(packaging a trained model into its local repository folder), ``load_from_hub`` (from that folder;
without network, a clean error), ``benchmark``; experiment tracking with ``--track`` (Weights &
Biases in offline mode) and the tensorboard logs of the diagnostics keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from design_keys import DESIGN_KEYS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from zoo_utils import ZOO, run_zoo, zoo_env

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.zoo import cli
from sb3_trpo_plus.zoo.hub import adapt_model_card

#: no network: W&B offline, the Hub offline
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "WANDB_DISABLE_CODE": "true"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tracked `train` run: 2 iterations of 2 envs x 512 steps, evaluations every 1024 steps."""
    workdir = tmp_path_factory.mktemp("zoo_scripts")
    run_zoo(
        ["train", "--env", "CartPole-v1", "-n", "2048", "--eval-freq", "1024", "--eval-episodes", "2", "--seed", "0",
         "--num-threads", "1", "-f", "logs", "--track", "--wandb-project-name", "trpo-plus-offline-test"],
        workdir, WANDB_DIR=str(workdir), **OFFLINE,
    )  # fmt: skip
    return workdir


def test_track_writes_an_offline_wandb_run(tracked: Path) -> None:
    (run,) = (tracked / "wandb").glob("offline-run-*")
    (records,) = run.glob("run-*.wandb")
    data = records.read_bytes()
    # the run's configuration (project, algorithm) and its history (synced from tensorboard)
    for text in ("trpo-plus-offline-test", "trpo_plus", *DESIGN_KEYS):
        assert text.encode() in data, text
    # the tensorboard event files are saved with the run
    assert list((run / "files" / "runs").rglob("events.out.tfevents.*"))


def test_tensorboard_logs_every_diagnostics_key(tracked: Path) -> None:
    (log_dir,) = (tracked / "runs").glob("CartPole-v1__trpo_plus__0__*/CartPole-v1/TRPOPlus_1")
    events = EventAccumulator(str(log_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(DESIGN_KEYS) <= scalars, set(DESIGN_KEYS) - scalars
    for key in DESIGN_KEYS:
        values = [event.value for event in events.Scalars(key)]
        # SB3 dumps an iteration's train/ values at the next iteration's start: 1 of the 2 iterations
        assert len(values) == 1 and np.all(np.isfinite(values)), key
    kl = [event.value for event in events.Scalars("train/kl")]
    success = [event.value for event in events.Scalars("train/line_search_success")]
    assert all(0.0 <= value <= 0.01 * 1.0001 for value in kl)  # target_kl of the zoo's CartPole entry (0.01)
    assert set(success) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def packaged(tracked: Path) -> Path:
    """``push_to_hub --local-only``: the local repository folder of the tracked run's model."""
    run_zoo(["push_to_hub", "--env", "CartPole-v1", "-f", "logs", "-orga", "someone", "--no-render", "--local-only",
             "--seed", "0"], tracked, **OFFLINE)  # fmt: skip
    return tracked / "hub" / "trpo_plus-CartPole-v1"


def test_push_to_hub_packages_the_model_locally(tracked: Path, packaged: Path) -> None:
    names = {path.name for path in packaged.iterdir()}
    assert {"trpo_plus-CartPole-v1.zip", "config.yml", "args.yml", "env_kwargs.yml", "train_eval_metrics.zip",
            "results.json", "README.md"} <= names  # fmt: skip
    model = TRPOPlus.load(packaged / "trpo_plus-CartPole-v1.zip")
    assert model.num_timesteps == 2048
    assert (packaged / "trpo_plus-CartPole-v1" / "policy.pth").is_file()  # the unzipped model
    results = json.loads((packaged / "results.json").read_text())
    assert results["n_eval_episodes"] == 10 and results["is_deterministic"] is True
    assert yaml.unsafe_load((packaged / "config.yml").read_text()) == yaml.unsafe_load(
        (tracked / "logs" / "trpo_plus" / "CartPole-v1_1" / "CartPole-v1" / "config.yml").read_text()
    )
    assert "evaluations.npz" in zipfile.ZipFile(packaged / "train_eval_metrics.zip").namelist()
    card = (packaged / "README.md").read_text()
    # metadata of the card: the fresh evaluation
    assert f"value: {results['mean_reward']:.2f} +/- {results['std_reward']:.2f}" in card
    assert "name: TRPOPlus" in card
    # its commands work for trpo_plus
    assert "trpo-plus-zoo load_from_hub --algo trpo_plus --env CartPole-v1 -orga someone" in card
    assert "python -m rl_zoo3" not in card


def test_model_card_of_other_algorithms_is_left_alone(tmp_path: Path) -> None:
    card = "```\npython -m rl_zoo3.enjoy --algo ppo --env CartPole-v1 -f logs/\n```\n"
    (tmp_path / "README.md").write_text(card)
    adapt_model_card(tmp_path)
    assert (tmp_path / "README.md").read_text() == card


def test_load_from_hub_reads_a_local_repository_and_enjoy_runs_it(tracked: Path, packaged: Path) -> None:
    run_zoo(["load_from_hub", "--env", "CartPole-v1", "-f", "downloaded", "-orga", "someone", "--local-repo", str(packaged)],
            tracked, **OFFLINE)  # fmt: skip
    run = tracked / "downloaded" / "trpo_plus" / "CartPole-v1_1"
    assert {p.name for p in (run / "CartPole-v1").iterdir()} == {"args.yml", "config.yml", "env_kwargs.yml"}
    assert (run / "evaluations.npz").is_file()  # from train_eval_metrics.zip
    loaded, original = TRPOPlus.load(run / "CartPole-v1.zip"), TRPOPlus.load(packaged / "trpo_plus-CartPole-v1.zip")
    for key, value in original.policy.state_dict().items():
        assert (loaded.policy.state_dict()[key] == value).all()
    result = run_zoo(["enjoy", "--env", "CartPole-v1", "-f", "downloaded", "--no-render", "-n", "300", "--deterministic"],
                     tracked)  # fmt: skip
    assert "Mean reward" in result.stdout


def test_load_from_hub_without_network_fails_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ZOO, "load_from_hub", "--env", "CartPole-v1", "-f", "logs", "-orga", "sb3"],
        cwd=tmp_path, env=zoo_env(TRUST_REMOTE_CODE="True", **OFFLINE), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("trpo-plus-zoo load_from_hub: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists()


def test_benchmark_evaluates_the_trained_agents(tracked: Path) -> None:
    run_zoo(["benchmark", "--log-dir", "logs", "--benchmark-dir", "bench", "--no-hub", "-n", "300", "--num-threads", "1",
             "--test-mode"], tracked, **OFFLINE)  # fmt: skip
    table = (tracked / "bench" / "benchmark.md").read_text()
    (row,) = [line for line in table.splitlines() if line.startswith("|trpo_plus")]
    assert "CartPole-v1" in row and "100k" in row
    assert (tracked / "bench" / "trpo_plus-CartPole-v1" / "0.monitor.csv").is_file()


def test_new_commands_are_listed_and_take_help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """In process (each script's --help exits before doing anything)."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in ("push_to_hub", "load_from_hub", "benchmark"))
    for command, flag in (("push_to_hub", "--organization"), ("load_from_hub", "--organization"), ("benchmark", "--no-hub")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0, command
        assert flag in capsys.readouterr().out, command
