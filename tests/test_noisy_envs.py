"""The noisy-dynamics family (sb3_trpo_plus.noisy_envs): its noise is the environment's own, so a snapshot replays it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.env_state import branch_copy, restore, snapshot
from sb3_trpo_plus.noisy_envs import NOISY_ENVS

BASE = {
    "NoisyCartPole-v1": "CartPole-v1",
    "NoisyAcrobot-v1": "Acrobot-v1",
    "NoisyPendulum-v1": "Pendulum-v1",
    "NoisyHopper-v5": "Hopper-v5",
}


def _actions(env: gym.Env, count: int, seed: int) -> list:
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(count)]


def _run(env: gym.Env, actions: list) -> list[tuple]:
    steps = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        steps.append((np.asarray(obs).copy(), float(reward), terminated, truncated))
        if terminated or truncated:
            break
    return steps


def _same(first: list[tuple], second: list[tuple]) -> bool:
    return len(first) == len(second) and all(
        np.array_equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(first, second, strict=True)
    )


@pytest.mark.parametrize("env_id", list(NOISY_ENVS))
def test_no_noise_is_the_original_task_and_noise_changes_it(env_id: str) -> None:
    """Noise 0 is the original task step for step, across resets too (no draw moves the generator)."""
    base, quiet, noisy = gym.make(BASE[env_id]), gym.make(env_id, noise=0.0), gym.make(env_id)
    actions = _actions(base, 40, seed=1)
    runs = []
    for env in (base, quiet, noisy):
        run = []
        for episode in range(3):  # the second and third reset draw their start from the advanced generator
            obs, _ = env.reset(seed=3 if episode == 0 else None)
            run += [(np.asarray(obs), 0.0, False, False), *_run(env, actions)]
        runs.append(run)
    assert _same(runs[0], runs[1])
    assert not _same(runs[0], runs[2])


@pytest.mark.parametrize("env_id", list(NOISY_ENVS))
def test_a_restored_snapshot_replays_the_noise_exactly(env_id: str) -> None:
    """Restored in place and into a branch copy, the same actions meet the same disturbances, step for step."""
    env = gym.make(env_id)
    env.reset(seed=7)
    _run(env, _actions(env, 5, seed=2))
    saved = snapshot(env)
    actions = _actions(env, 30, seed=4)
    first = _run(env, actions)
    restore(env, saved)
    assert _same(first, _run(env, actions))
    copy = branch_copy(env)
    restore(copy, saved)
    assert _same(first, _run(copy, actions))
    # other actions after the restore: the noise still comes from the saved generator, so the
    # trajectories differ only through the actions (and the same actions again agree)
    restore(env, saved)
    assert not _same(first, _run(env, _actions(env, 30, seed=5)))


@pytest.mark.parametrize("noise", [-0.1, float("nan"), True, "high"])
def test_bad_noise_is_refused_by_name(noise: object) -> None:
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        gym.make("NoisyPendulum-v1", noise=noise)


def test_vine_branches_the_noisy_family() -> None:
    model = TRPOPlus("MlpPolicy", "NoisyCartPole-v1", n_steps=128, batch_size=64, sampling="vine", seed=0)
    model.learn(256)
    assert model.num_timesteps > 256  # branch steps count in the budget
