"""
Vine end to end through rl_zoo3 (issue 9): ``trpo-plus-zoo train -conf zoo_configs/trpo_plus_vine.yml``
on CartPole and on an Atari game with the zoo's Atari set-up (AtariWrapper, frame_stack 4,
CnnPolicy, a Monitor writing its file), with a callback (tests/zoo_vine_check.py) that recomputes
the branches' Q-values directly and compares them with the sampler's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from zoo_utils import run_zoo

from sb3_trpo_plus import TRPOPlus

REPO = Path(__file__).resolve().parent.parent
VINE_CONFIG = REPO / "zoo_configs" / "trpo_plus_vine.yml"


def _train(
    env_id: str, tmp_path: Path, atari: bool, params: list[str], budget: int, flags: tuple[str, ...] = ()
) -> dict[str, float]:
    report = tmp_path / "report.json"
    callback = f"[{{'zoo_vine_check.RecomputeBranchQ': {{'report': {str(report)!r}, 'atari': {atari}}}}}]"
    run_zoo(
        [
            "train",
            "--env",
            env_id,
            "-conf",
            str(VINE_CONFIG),
            "-n",
            str(budget),
            "--seed",
            "0",
            "-f",
            "logs",
            "--eval-freq",
            "-1",
            "--num-threads",
            "1",
            *flags,
            "-params",
            *params,
            f"callback:{callback}",
        ],
        tmp_path,
    )
    (model_path,) = (tmp_path / "logs" / "trpo_plus").glob(f"{env_id}_1/{env_id}.zip")
    model = TRPOPlus.load(model_path)
    assert model.sampling == "vine" and model.num_timesteps >= budget
    # the zoo's Monitor wrote the trunk's episodes; the branch copies wrote nothing (no other file)
    assert len(list((tmp_path / "logs" / "trpo_plus" / f"{env_id}_1").glob("*.monitor.csv"))) >= 1
    print(report.read_text())
    return json.loads(report.read_text())


def test_vine_through_the_zoo_on_cartpole(tmp_path: Path) -> None:
    # the configuration's own entry (every action branched), on a small budget
    report = _train(
        "CartPole-v1",
        tmp_path,
        atari=False,
        params=[
            "n_steps:64",
            "batch_size:64",
            "n_critic_updates:2",
            "vine_kwargs:dict(n_states=4, horizon=25, all_actions=True)",
        ],
        budget=300,
    )
    assert report["states"] == 4 and report["checked"] == 4 * 2
    assert report["max_difference"] <= 1e-4


def test_vine_through_the_zoo_with_a_subprocess_trunk(tmp_path: Path) -> None:
    """``--vec-env subproc``: the branch copy is taken inside a worker (its Monitor writes a file there)."""
    report = _train(
        "CartPole-v1",
        tmp_path,
        atari=False,
        params=[
            "n_steps:64",
            "batch_size:64",
            "n_critic_updates:2",
            "env_wrapper:'sb3_trpo_plus.env_state.BranchableEnv'",
            "vine_kwargs:dict(n_states=4, horizon=25, all_actions=True)",
        ],
        budget=300,
        flags=("--vec-env", "subproc"),
    )
    assert report["states"] == 4 and report["checked"] == 4 * 2
    assert report["max_difference"] <= 1e-4


def test_vine_through_the_zoo_on_atari_with_cnn_policy(tmp_path: Path) -> None:
    atari = yaml.safe_load(VINE_CONFIG.read_text())["atari"]
    assert atari["policy"] == "CnnPolicy" and atari["frame_stack"] == 4 and atari["sampling"] == "vine"
    report = _train(
        "PongNoFrameskip-v4",
        tmp_path,
        atari=True,
        params=[
            "n_envs:1",
            "n_steps:32",
            "batch_size:32",
            "n_critic_updates:1",
            "vine_kwargs:dict(n_states=3, n_actions=2, horizon=6)",
        ],
        budget=40,
    )
    assert report["states"] == 3 and report["checked"] == 3 * 2
    assert report["max_difference"] <= 1e-4


if __name__ == "__main__":
    pytest.main([__file__])
