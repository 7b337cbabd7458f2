"""
RL Zoo integration: registration, default configuration, the Optuna search space, and every
``trpo-plus-zoo`` command end to end (subprocesses, CartPole-v1, budgets of a few thousand steps).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import optuna
import pytest
import rl_zoo3
import yaml
from optuna.trial import TrialState
from rl_zoo3.exp_manager import ExperimentManager
from sb3_contrib import TRPO
from zoo_utils import TINY_OPTIMIZE, ZOO, run_zoo, zoo_env

import sb3_trpo_plus.zoo
from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.zoo import HeartbeatSettings, TRPOPlusExperimentManager, convert_trpo_plus_params, sample_trpo_plus_params

REPO = Path(__file__).resolve().parent.parent
RL_ZOO_DIR = Path(rl_zoo3.__file__).resolve().parent
# rl_zoo3's trpo.yml names -> Gymnasium 1.x names
RENAMED = {f"{name}-v4": f"{name}-v5" for name in ("Ant", "HalfCheetah", "Hopper", "Walker2d", "Humanoid", "Swimmer")}


# ----------------------------------------------------------------------------- registration


def test_registration_reaches_every_table() -> None:
    import rl_zoo3.enjoy
    import rl_zoo3.exp_manager
    import rl_zoo3.hyperparams_opt
    import rl_zoo3.load_from_hub
    import rl_zoo3.record_training
    import rl_zoo3.train
    import rl_zoo3.utils

    # (rl_zoo3.push_to_hub shares the same dictionary but cannot be imported with huggingface_sb3 3.x)
    for module in (
        rl_zoo3,
        rl_zoo3.utils,
        rl_zoo3.train,
        rl_zoo3.exp_manager,
        rl_zoo3.enjoy,
        rl_zoo3.load_from_hub,
        rl_zoo3.record_training,
    ):
        assert module.ALGOS["trpo_plus"] is TRPOPlus, module.__name__
    assert rl_zoo3.exp_manager.HYPERPARAMS_SAMPLER["trpo_plus"] is sample_trpo_plus_params
    assert rl_zoo3.exp_manager.HYPERPARAMS_CONVERTER["trpo_plus"] is convert_trpo_plus_params
    assert rl_zoo3.train.ExperimentManager is TRPOPlusExperimentManager
    # idempotent
    sb3_trpo_plus.zoo.register()
    assert rl_zoo3.utils.ALGOS["trpo_plus"] is TRPOPlus


def test_registration_leaves_rl_zoo3_algorithms_alone() -> None:
    """Every table holds exactly what a fresh interpreter without this package holds, plus trpo_plus."""
    dump = (
        "import json, rl_zoo3.utils as u, rl_zoo3.hyperparams_opt as h\n"
        "print(json.dumps({'algos': {k: v.__module__ + '.' + v.__qualname__ for k, v in u.ALGOS.items()},"
        " 'sampler': {k: v.__qualname__ for k, v in h.HYPERPARAMS_SAMPLER.items()},"
        " 'converter': {k: v.__qualname__ for k, v in h.HYPERPARAMS_CONVERTER.items()}}))"
    )
    fresh = json.loads(subprocess.run([sys.executable, "-c", dump], capture_output=True, text=True, check=True).stdout)
    here = {
        "algos": {k: v.__module__ + "." + v.__qualname__ for k, v in rl_zoo3.utils.ALGOS.items() if k != "trpo_plus"},
        "sampler": {k: v.__qualname__ for k, v in rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER.items() if k != "trpo_plus"},
        "converter": {k: v.__qualname__ for k, v in rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER.items() if k != "trpo_plus"},
    }
    assert here == fresh
    assert "trpo_plus" not in fresh["algos"]
    assert rl_zoo3.utils.ALGOS["trpo"] is TRPO


def test_registration_refuses_to_replace_a_foreign_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rl_zoo3.utils.ALGOS, "trpo_plus", TRPO)
    with pytest.raises(RuntimeError, match="different entry for 'trpo_plus'"):
        sb3_trpo_plus.zoo.register()


def _manager(algo: str, config: str | None = None) -> ExperimentManager:
    return TRPOPlusExperimentManager(argparse.Namespace(), algo, "CartPole-v1", "logs", config=config)


def test_default_configuration_file() -> None:
    assert _manager("trpo_plus").config == str(REPO / "zoo_configs" / "trpo_plus.yml")
    # rl_zoo3's algorithms keep rl_zoo3's files, and -conf wins for everyone
    assert _manager("trpo").config == str(RL_ZOO_DIR / "hyperparams" / "trpo.yml")
    assert _manager("trpo_plus", "mine.yml").config == "mine.yml"
    # positional arguments are understood too
    manager = TRPOPlusExperimentManager(argparse.Namespace(), "trpo_plus", "CartPole-v1", "logs", "", 5)
    assert manager.n_timesteps == 5
    assert manager.config.endswith("zoo_configs/trpo_plus.yml")


# ----------------------------------------------------------------------------- zoo_configs


def test_zoo_config_covers_rl_zoo3_trpo_yml() -> None:
    ours = yaml.safe_load((REPO / "zoo_configs" / "trpo_plus.yml").read_text())
    theirs = yaml.safe_load((RL_ZOO_DIR / "hyperparams" / "trpo.yml").read_text())
    assert {RENAMED.get(name, name) for name in theirs} == set(ours)
    for name, hyperparams in theirs.items():
        # taken over unchanged (see the provenance comments)
        assert ours[RENAMED.get(name, name)] == hyperparams, name
    registry = set(gym.envs.registry)
    for name in ours:
        if name != "default" and "Bullet" not in name:
            assert name in registry, f"{name} is not a Gymnasium id"


def test_zoo_config_comments_every_entry() -> None:
    lines = (REPO / "zoo_configs" / "trpo_plus.yml").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Za-z][\w-]*:", line):
            assert lines[index - 1].startswith("#"), f"no provenance comment above {line!r}"
            assert "rl_zoo3" in lines[index - 1] or "rl_zoo3" in lines[index - 2] or line.startswith("default"), line


def test_every_zoo_config_builds_a_model() -> None:
    """The classic-control entries are valid TRPOPlus arguments (rl_zoo3-only keys removed)."""
    ours = yaml.safe_load((REPO / "zoo_configs" / "trpo_plus.yml").read_text())
    for name in ("CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0"):
        kwargs = {k: v for k, v in ours[name].items() if k not in ("n_envs", "n_timesteps", "normalize", "policy")}
        model = TRPOPlus(ours[name]["policy"], name, **kwargs)
        assert model.n_steps == ours[name].get("n_steps", 2048)
        model.env.close()


# ----------------------------------------------------------------------------- Optuna search space


def test_sampler_bounds_and_converter_round_trip() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_fisher, seen_subsample = set(), set()
    for _ in range(200):
        trial = study.ask()
        hyperparams = sample_trpo_plus_params(trial, 0, 1, {})
        assert 256 <= hyperparams["n_steps"] <= 2048
        assert 64 <= hyperparams["batch_size"] <= hyperparams["n_steps"]
        assert hyperparams["n_steps"] % hyperparams["batch_size"] == 0
        assert 0.9 <= hyperparams["gamma"] < 1.0 and 0.8 <= hyperparams["gae_lambda"] < 1.0
        assert 1e-3 <= hyperparams["cg_damping"] <= 0.3 and 5 <= hyperparams["cg_max_steps"] <= 30
        assert 0.0 < hyperparams["fvp_subsample"] <= 1.0
        seen_fisher.add(hyperparams["fisher"])
        seen_subsample.add(hyperparams["fvp_subsample"])
        # what --trial-id rebuilds from the storage is what the trial ran with
        assert convert_trpo_plus_params(trial.params) == hyperparams
        study.tell(trial, 0.0)
    assert seen_fisher == {"analytic", "kl_hessian"}
    assert seen_subsample == {0.1, 0.25, 0.5, 1.0}


def test_sampled_hyperparameters_are_trpo_plus_arguments() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(3):
        hyperparams = sample_trpo_plus_params(study.ask(), 0, 1, {})
        model = TRPOPlus("MlpPolicy", "CartPole-v1", **hyperparams)
        assert model.fisher == hyperparams["fisher"] and model.fvp_subsample == hyperparams["fvp_subsample"]
        model.env.close()


def test_heartbeat_settings_validation() -> None:
    with pytest.raises(ValueError, match="grace period"):
        HeartbeatSettings(interval=10, grace_period=10)
    with pytest.raises(ValueError, match="positive"):
        HeartbeatSettings(interval=0)
    with pytest.raises(ValueError, match="max_retry"):
        HeartbeatSettings(max_retry=-1)


# ----------------------------------------------------------------------------- end to end


def test_cli_rejects_unknown_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sb3_trpo_plus.zoo", "tune"], capture_output=True, text=True, env=zoo_env(), check=False
    )
    assert result.returncode == 2 and "unknown command 'tune'" in result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    Two `train` runs side by side (seeds 0 and 1; rl_zoo3's plot_from_file needs two runs): 2048 steps
    each (2 iterations of 2 envs x 512 steps), evaluations and checkpoints every 1024 steps
    (rl_zoo3 divides both frequencies by n_envs).
    """
    workdir = tmp_path_factory.mktemp("zoo_train")
    runs: list[subprocess.Popen[str]] = []
    for seed in (0, 1):
        if runs:
            # rl_zoo3 numbers the run folders CartPole-v1_<n>: start the second run once the first has its folder
            while not (workdir / "logs" / "trpo_plus" / "CartPole-v1_1").is_dir():
                assert runs[0].poll() is None, runs[0].communicate()
                time.sleep(0.2)
        runs.append(
            subprocess.Popen(
                [
                    *ZOO,
                    "train",
                    "--env",
                    "CartPole-v1",
                    "-n",
                    "2048",
                    "--eval-freq",
                    "1024",
                    "--eval-episodes",
                    "2",
                    "--save-freq",
                    "1024",
                    "--seed",
                    str(seed),
                    "--num-threads",
                    "1",
                    "-f",
                    "logs",
                ],
                cwd=workdir,
                env=zoo_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, f"{stdout}\n{stderr}"
        assert f"Loading hyperparameters from: {REPO / 'zoo_configs' / 'trpo_plus.yml'}" in stdout
    return workdir


def test_train(trained: Path) -> None:
    run = trained / "logs" / "trpo_plus" / "CartPole-v1_1"
    model = TRPOPlus.load(run / "CartPole-v1.zip")
    assert model.num_timesteps == 2048 and model._n_updates == 2
    # the hyperparameters of zoo_configs/trpo_plus.yml were used
    assert model.n_steps == 512 and model.n_critic_updates == 20 and model.cg_damping == 1e-3
    config = yaml.unsafe_load((run / "CartPole-v1" / "config.yml").read_text())
    assert dict(config)["n_envs"] == 2
    evaluations = np.load(run / "evaluations.npz")
    assert evaluations["results"].shape == (2, 2)
    assert sorted(p.name for p in run.glob("rl_model_*_steps.zip")) == ["rl_model_1024_steps.zip", "rl_model_2048_steps.zip"]


def test_enjoy_reports_returns(trained: Path) -> None:
    result = run_zoo(
        ["enjoy", "--env", "CartPole-v1", "-f", "logs", "--no-render", "-n", "400", "--deterministic", "--seed", "0"], trained
    )
    returns = [float(x) for x in re.findall(r"^Episode Reward: ([-\d.]+)$", result.stdout, re.MULTILINE)]
    assert returns and all(r >= 1.0 for r in returns)
    mean = float(re.search(r"^Mean reward: ([-\d.]+)", result.stdout, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert mean == pytest.approx(np.mean(returns), abs=0.01)


def test_continue_training(trained: Path) -> None:
    agent = trained / "logs" / "trpo_plus" / "CartPole-v1_1" / "CartPole-v1.zip"
    result = run_zoo(
        [
            "train",
            "--env",
            "CartPole-v1",
            "-i",
            str(agent),
            "-n",
            "1024",
            "--eval-freq",
            "-1",
            "--seed",
            "1",
            "--num-threads",
            "1",
            "-f",
            "continued",
        ],
        trained,
    )
    assert "Loading pretrained agent" in result.stdout
    continued = TRPOPlus.load(trained / "continued" / "trpo_plus" / "CartPole-v1_1" / "CartPole-v1.zip")
    # the loaded agent had done 2 trust-region updates; one more iteration of 2 x 512 steps
    assert continued._n_updates == 3


def test_plot_commands_read_the_logs(trained: Path) -> None:
    record = trained / "plots.jsonl"
    run_zoo(["plot_train", "--env", "CartPole-v1", "-f", "logs", "-w", "5"], trained, ZOO_PLOT_RECORD=str(record))
    (figure,) = json.loads(record.read_text().splitlines()[-1])
    # one smoothed training curve per run, from the Monitor files
    assert sorted(line["label"] for line in figure["lines"]) == ["CartPole-v1_1", "CartPole-v1_2"]
    assert all(line["n_points"] > 10 for line in figure["lines"])

    run_zoo(
        ["all_plots", "--env", "CartPole-v1", "-f", "logs", "--no-display", "-o", "results", "-max", "2048"],
        trained,
    )
    results = pickle.loads((trained / "results.pkl").read_bytes())
    curve = results["CartPole-v1"]["TRPO_PLUS-logs"]
    evaluations = np.load(trained / "logs" / "trpo_plus" / "CartPole-v1_1" / "evaluations.npz")
    evaluations_2 = np.load(trained / "logs" / "trpo_plus" / "CartPole-v1_2" / "evaluations.npz")
    np.testing.assert_array_equal(curve["timesteps"], [1024, 2048])
    # mean over both runs and their evaluation episodes
    np.testing.assert_allclose(
        curve["mean"], (evaluations["results"].mean(axis=1) + evaluations_2["results"].mean(axis=1)) / 2
    )
    assert curve["last_evals"].shape == (2,)

    run_zoo(
        ["plot_from_file", "-i", "results.pkl", "-o", "curves.png", "--format", "png", "-l", "trpo_plus"],
        trained,
        ZOO_PLOT_RECORD=str(record),
    )
    assert (trained / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_optimize_two_trials_on_a_journal_file(tmp_path: Path) -> None:
    storage = tmp_path / "study.log"
    run_zoo(
        [
            "train",
            *TINY_OPTIMIZE,
            "-n",
            "1024",
            "--n-trials",
            "2",
            "--storage",
            str(storage),
            "--study-name",
            "e2e",
            "--seed",
            "1",
            "-f",
            "logs",
        ],
        tmp_path,
    )
    study = optuna.load_study(
        study_name="e2e", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage)))
    )
    assert [t.number for t in study.trials] == [0, 1]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert all(set(t.params) >= {"fisher", "fvp_subsample", "cg_damping"} for t in study.trials)
    (report,) = (tmp_path / "logs" / "trpo_plus").glob("report_CartPole-v1_2-trials-1024-*.csv")
    assert len(report.read_text().strip().splitlines()) == 3
    # --trial-id's path: rl_zoo3 converts the stored parameters with our converter
    manager = TRPOPlusExperimentManager(argparse.Namespace(), "trpo_plus", "CartPole-v1", "logs")
    hyperparams = manager.load_trial(str(storage), "e2e", 1)
    assert hyperparams == convert_trpo_plus_params(study.trials[1].params)


@pytest.mark.slow  # (the default run installs the wheel in a fresh venv: test_zoo_shipped_configs.py)
def test_wheel_ships_the_configuration(tmp_path: Path) -> None:
    """A regular (non-editable) install finds zoo_configs inside the package."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("sb3_trpo_plus-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sb3_trpo_plus/zoo_configs/trpo_plus.yml" in names and "sb3_trpo_plus/zoo/cli.py" in names
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import sb3_trpo_plus.zoo as z, argparse; "
        "m = z.TRPOPlusExperimentManager(argparse.Namespace(), 'trpo_plus', 'CartPole-v1', 'logs'); "
        "print(z.__file__); print(m.config)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=zoo_env(PYTHONPATH=str(tmp_path / "site")),
        capture_output=True,
        text=True,
        check=True,
    )
    module_file, config = result.stdout.split()
    site = tmp_path / "site"
    assert Path(module_file).is_relative_to(site)
    assert Path(config) == site / "sb3_trpo_plus" / "zoo_configs" / "trpo_plus.yml"
    assert yaml.safe_load(Path(config).read_text())["CartPole-v1"]["n_steps"] == 512


def test_record_video(trained: Path) -> None:
    run_zoo(["record_video", "--env", "CartPole-v1", "-f", "logs", "-n", "50", "-o", "videos"], trained)
    (video,) = (trained / "videos").glob("*trpo_plus-CartPole-v1*.mp4")
    assert video.stat().st_size > 0


# ----------------------------------------------------------------------------- vine through the zoo


def test_vine_configuration_file_builds_vine_models() -> None:
    vine = yaml.safe_load((REPO / "zoo_configs" / "trpo_plus_vine.yml").read_text())
    text = (REPO / "zoo_configs" / "trpo_plus_vine.yml").read_text()
    for name in ("CartPole-v1", "Pendulum-v1", "Acrobot-v1", "LunarLander-v3", "Hopper-v5"):
        assert vine[name]["sampling"] == "vine"
        assert f"\n{name}:" in text
        kwargs = {k: v for k, v in vine[name].items() if k not in ("n_envs", "n_timesteps", "normalize", "policy")}
        model = TRPOPlus(vine[name]["policy"], name, **kwargs)
        assert model.sampling == "vine" and model.vine_kwargs == vine[name].get("vine_kwargs", {})
        model.env.close()


def test_vine_search_space_is_opt_in() -> None:
    from sb3_trpo_plus.zoo.hyperparams_opt import SEARCH_VINE_ATTR

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    assert all("sampling" not in sample_trpo_plus_params(study.ask(), 0, 1, {}) for _ in range(20))
    schemes = set()
    for _ in range(40):
        trial = study.ask()
        trial.set_user_attr(SEARCH_VINE_ATTR, True)  # what the experiment manager does with --search-vine
        hyperparams = sample_trpo_plus_params(trial, 0, 1, {})
        schemes.add(hyperparams.get("sampling", "single_path"))
        assert convert_trpo_plus_params(trial.params) == hyperparams
        if hyperparams.get("sampling") == "vine":
            vine = hyperparams["vine_kwargs"]
            assert "n_states" not in vine and 2 <= vine["n_actions"] <= 8
            model = TRPOPlus("MlpPolicy", "CartPole-v1", **hyperparams)
            assert model.q == hyperparams["q"]
            # the rollout set is sized from the searched share: the branches stay within it
            settings = model._settings().vine
            assert settings is not None and settings.branch_share == vine["branch_share"]
            assert vine["branch_share"] in (0.1, 0.2, 0.3, 0.5)
            every_action = settings.branch_actions(model.action_space)
            branches = len(every_action) if every_action is not None else settings.n_actions
            trunk = model.n_steps * model.n_envs
            n_states = settings.rollout_set_size(trunk, branches)
            share = n_states * branches * settings.horizon / (trunk + n_states * branches * settings.horizon)
            assert share <= vine["branch_share"] + 1e-9 or n_states == 2
            model.env.close()
        study.tell(trial, 0.0)
    assert schemes == {"single_path", "vine"}


def test_train_with_the_vine_configuration(tmp_path: Path) -> None:
    run_zoo(
        [
            "train",
            "--env",
            "CartPole-v1",
            "-conf",
            str(REPO / "zoo_configs" / "trpo_plus_vine.yml"),
            "-n",
            "3000",
            "--seed",
            "0",
            "-f",
            "logs",
            "--eval-freq",
            "-1",
        ],
        tmp_path,
    )
    (model_path,) = (tmp_path / "logs" / "trpo_plus").glob("CartPole-v1_1/CartPole-v1.zip")
    model = TRPOPlus.load(model_path)
    assert model.sampling == "vine" and model.vine_kwargs == {}  # the vine defaults
    vine = model._settings().vine
    assert vine is not None and vine.all_actions is True  # "auto" on CartPole's 2 actions: both branched
    assert model.num_timesteps >= 3000
