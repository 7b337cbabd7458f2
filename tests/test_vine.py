"""Vine sampling inside TRPOPlus: trunk untouched, budget honest, CRN, backends, errors, learning."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import SubprocVecEnv, VecCheckNan, VecNormalize

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.env_state import BranchableEnv, UnbranchableEnvError
from sb3_trpo_plus.settings import build_q

VINE = {"n_states": 8, "n_actions": 3, "horizon": 10}


def _vine(env: Any, seed: int = 0, **kwargs: Any) -> TRPOPlus:
    settings = {"n_steps": 64, "batch_size": 64, "n_critic_updates": 2, "sampling": "vine", "vine_kwargs": dict(VINE)}
    settings.update(kwargs)
    return TRPOPlus("MlpPolicy", env, seed=seed, **settings)


def _collect(model: TRPOPlus) -> None:
    model._setup_learn(10**9, None)
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]


def test_branches_leave_the_trunk_its_monitor_and_normalisation_untouched() -> None:
    def run(sampling: str) -> tuple[np.ndarray, Any, int]:
        env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=3))
        extra: dict[str, Any] = {"sampling": "vine", "vine_kwargs": dict(VINE)} if sampling == "vine" else {}
        model = TRPOPlus("MlpPolicy", env, seed=3, n_steps=64, batch_size=64, **extra)
        _collect(model)
        monitor_steps = sum(len(e.get_wrapper_attr("rewards")) + e.get_wrapper_attr("total_steps") for e in env.venv.envs)
        return model.rollout_buffer.observations.copy(), (env.obs_rms.mean.copy(), env.obs_rms.var.copy()), monitor_steps

    trunk_obs, stats, monitor = run("single_path")
    vine_obs, vine_stats, vine_monitor = run("vine")
    # the trunk is collected before any branch: identical to a single-path rollout from the same seed
    assert np.array_equal(trunk_obs, vine_obs)
    assert np.array_equal(stats[0], vine_stats[0]) and np.array_equal(stats[1], vine_stats[1])
    assert monitor == vine_monitor


def test_train_without_a_vine_batch_fails_loudly() -> None:
    model = _vine(make_vec_env("CartPole-v1", n_envs=1, seed=0))
    model._setup_learn(10**9, None)
    with pytest.raises(RuntimeError, match="no vine batch"):  # no silent single-path fallback
        model.train()
    _collect(model)
    assert model._vine_batch is not None and model._vine_batch.n_states == 8
    model.train()


def test_every_branch_step_counts_in_the_budget() -> None:
    model = _vine(make_vec_env("CartPole-v1", n_envs=2, seed=0))
    _collect(model)
    branch_steps = int(model._vine.stats["branch_steps"])  # type: ignore[union-attr]
    assert 8 * 3 <= branch_steps <= 8 * 3 * 10
    assert model.num_timesteps == 2 * 64 + branch_steps
    assert model.logger.name_to_value["rollout/branch_steps"] == branch_steps
    assert model.logger.name_to_value["rollout/branch_fraction"] == pytest.approx(branch_steps / (128 + branch_steps))


def _same_action_q(pi_old: Any, observations: th.Tensor) -> th.distributions.Distribution:
    """q that proposes one fixed action: all K branches of a state start alike."""
    loc = th.zeros_like(pi_old.distribution.loc)
    return th.distributions.Independent(th.distributions.Normal(loc, 1e-6 * th.ones_like(loc)), 1)


@pytest.mark.parametrize("crn", [True, False])
def test_common_random_numbers_share_env_and_policy_noise(crn: bool) -> None:
    vine = {**VINE, "common_random_numbers": crn, "horizon": 30}
    model = _vine(make_vec_env("Pendulum-v1", n_envs=1, seed=0), q=_same_action_q, vine_kwargs=vine)
    _collect(model)
    q_values = model._vine_batch.q_values.view(8, 3)  # type: ignore[union-attr]
    spread = (q_values.max(dim=1).values - q_values.min(dim=1).values).max()
    if crn:  # same start, same action, same noise: the same return up to the 1e-6 action jitter
        assert float(spread) < 1e-2
    else:
        assert float(spread) > 1e-2


def test_subprocess_branches_give_the_same_q_values_as_in_process_ones() -> None:
    def q_values(backend: str) -> th.Tensor:
        model = _vine(make_vec_env("CartPole-v1", n_envs=2, seed=5), seed=5, vine_kwargs={**VINE, "branch_vec_env": backend})
        _collect(model)
        values = model._vine_batch.q_values.clone()  # type: ignore[union-attr]
        model._vine.close()  # type: ignore[union-attr]
        return values

    assert th.equal(q_values("dummy"), q_values("subproc"))


def test_subprocess_trunk_needs_branchable_envs() -> None:
    plain = make_vec_env("CartPole-v1", n_envs=2, vec_env_cls=SubprocVecEnv)
    with pytest.raises(UnbranchableEnvError, match="BranchableEnv"):
        _vine(plain)
    plain.close()
    wrapped = make_vec_env("CartPole-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv)
    model = _vine(wrapped)
    model.learn(400)
    assert model.num_timesteps >= 400
    wrapped.close()


class HiddenStateEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(2, dtype=np.float32), 0.0, False, False, {}


def test_unbranchable_env_and_wrappers_fail_at_construction() -> None:
    with pytest.raises(UnbranchableEnvError, match="HiddenStateEnv"):
        _vine(HiddenStateEnv())
    # VecFrameStack is supported (tests/test_vine_fidelity.py); a VecEnv wrapper vine cannot reproduce is named
    with pytest.raises(UnbranchableEnvError, match="VecCheckNan"):
        _vine(VecCheckNan(make_vec_env("CartPole-v1", n_envs=1)))
    # SB3 itself refuses unbounded Box action spaces; q's own check, for direct users of build_q
    with pytest.raises(ValueError, match="finite bounds"):
        build_q("uniform", None, action_space=gym.spaces.Box(-np.inf, np.inf, (1,)))


def test_q_is_checked_against_the_action_space() -> None:
    with pytest.raises(ValueError, match="eps"):
        _vine(make_vec_env("Pendulum-v1", n_envs=1), q="mixture", q_kwargs={"eps": 2.0})
    with pytest.raises(ValueError, match="std_scale"):
        _vine(make_vec_env("Pendulum-v1", n_envs=1), q="scaled", q_kwargs={"std_scale": 0.5})
    model = _vine(make_vec_env("Acrobot-v1", n_envs=1, seed=0), q="uniform", q_kwargs={"max_weight": 5.0})
    model.learn(200)
    assert 0.0 < model.logger.name_to_value["train/is_ess"] <= 1.0


def test_replayed_and_mujoco_envs_branch() -> None:
    lander = _vine(make_vec_env("LunarLander-v3", n_envs=1, seed=0), vine_kwargs={**VINE, "all_actions": True})
    lander.learn(200)
    assert lander.logger.name_to_value["train/line_search_steps"] >= 1
    geometric = {**VINE, "state_selection": "geometric", "estimator": "vine"}  # geometric goes with the vine alone
    hopper = _vine(make_vec_env("Hopper-v5", n_envs=1, seed=0), vine_kwargs=geometric)
    hopper.learn(200)
    assert hopper.num_timesteps > 200


def test_save_load_keeps_vine_settings(tmp_path: Any) -> None:
    model = _vine(make_vec_env("CartPole-v1", n_envs=1, seed=0), vine_kwargs={**VINE, "all_actions": True})
    model.learn(100)
    model.save(tmp_path / "vine")
    loaded = TRPOPlus.load(tmp_path / "vine", env=make_vec_env("CartPole-v1", n_envs=1, seed=1))
    assert loaded.sampling == "vine" and loaded.vine_kwargs["all_actions"] is True
    loaded.learn(100, reset_num_timesteps=False)
    # the typed settings are rebuilt from the saved plain arguments
    assert loaded._vine is not None and loaded._vine.settings.all_actions is True


def test_save_load_keeps_max_weight(tmp_path: Any) -> None:
    model = TRPOPlus("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), n_steps=64, q_kwargs={"max_weight": 3.0})
    assert model.max_weight == 3.0
    model.save(tmp_path / "single")
    assert TRPOPlus.load(tmp_path / "single").max_weight == 3.0


@pytest.mark.slow
def test_vine_learns_cartpole() -> None:
    model = TRPOPlus(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=2, seed=0),
        seed=0,
        n_steps=512,
        batch_size=512,
        cg_damping=1e-3,
        gae_lambda=0.98,
        n_critic_updates=20,
        sampling="vine",  # every vine_kwargs at its default: both actions branched, n_steps shared with the branches
    )
    # the target: the whole 150k budget (branch steps included), then 20 fresh episodes
    # (stopping at a first perfect 10-episode evaluation, as tests/test_learning.py does, stopped
    # the default vine after 9.7k steps on a policy that was not yet stable)
    model.learn(150_000)
    assert model.num_timesteps <= 150_000 + 1024 + 1024  # at most one iteration (trunk and branches) past the budget
    returns, _ = evaluate_policy(
        model, make_vec_env("CartPole-v1", n_envs=1, seed=1000), n_eval_episodes=20, return_episode_rewards=True
    )
    print(f"vine CartPole-v1: mean return {np.mean(returns):.1f} over 20 episodes after {model.num_timesteps} steps")
    assert float(np.mean(returns)) >= 475, (model.num_timesteps, returns)


@pytest.mark.slow
def test_vine_learns_pendulum() -> None:
    model = TRPOPlus(
        "MlpPolicy",
        make_vec_env("Pendulum-v1", n_envs=2, seed=0),
        seed=0,
        n_steps=1024,
        gamma=0.9,
        n_critic_updates=15,
        use_sde=True,
        sde_sample_freq=4,
        sampling="vine",  # every vine_kwargs at its default
    )
    model.learn(400_000)  # branch steps included
    mean_return, _ = evaluate_policy(model, make_vec_env("Pendulum-v1", n_envs=1, seed=1000), n_eval_episodes=10)
    assert mean_return >= -250
