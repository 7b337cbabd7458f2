"""
The vine estimators end to end (issue 9): branching every action of every finite space, the
truncation of importance weights, gSDE branches that follow the trunk's noise process, and
rollout-set selection that samples its stated distribution.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from scipy import stats as scipy_stats
from stable_baselines3.common.callbacks import CallbackList, ProgressBarCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.distributions import actions_for_log_prob, enumerate_actions
from sb3_trpo_plus.settings import VineSettings
from sb3_trpo_plus.vine.trunk import TrunkStates

SMALL = {"n_steps": 32, "batch_size": 32, "n_critic_updates": 1}


class FiniteActionEnv(gym.Env):
    """
    A small deterministic environment for any finite action space: the reward is a fixed
    function of the state and the action, and its state is branchable through get_state/set_state.
    """

    observation_space = spaces.Box(-10.0, 10.0, (2,), dtype=np.float32)

    def __init__(self, action_space: spaces.Space) -> None:
        self.action_space = action_space
        self.position = 0.0
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.position, self.t / 10.0], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position, self.t = 0.0, 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        code = np.asarray(action, dtype=np.float64).ravel()
        signal = float(np.sum(code * (1.0 + np.arange(code.size))))
        self.position = float(np.clip(0.9 * self.position + 0.1 * signal - 0.2, -10.0, 10.0))
        self.t += 1
        return self._obs(), -abs(self.position - 1.0), False, self.t >= 20, {}

    def get_state(self) -> tuple[float, int]:
        return self.position, self.t

    def set_state(self, state: tuple[float, int]) -> None:
        self.position, self.t = state


def _env(action_space: spaces.Space) -> DummyVecEnv:
    return DummyVecEnv([lambda: FiniteActionEnv(action_space)])


def _collect(model: TRPOPlus) -> None:
    model._setup_learn(10**9, None)
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]


# ------------------------------------------------------------------ all_actions


@pytest.mark.parametrize("action_space", [spaces.Discrete(3), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(3)], ids=str)
def test_all_actions_runs_a_vine_iteration_on_every_finite_space(action_space: spaces.Space) -> None:
    vine = {"n_states": 4, "horizon": 3, "all_actions": True}
    model = TRPOPlus("MlpPolicy", _env(action_space), seed=0, sampling="vine", vine_kwargs=vine, **SMALL)
    model.learn(2 * SMALL["n_steps"])
    batch = model._vine_batch
    expected = enumerate_actions(action_space)
    n_actions = len(expected)
    assert batch.all_actions and batch.actions.shape == (4 * n_actions, *expected.shape[1:])
    assert batch.actions.dtype == expected.dtype  # float 0/1 for MultiBinary, long indices otherwise
    assert th.equal(batch.actions[:n_actions], expected)
    # the exact sum over actions: sum_a pi(a|s) = 1 at every state
    with th.no_grad():
        dist = model.policy.get_distribution(batch.observations)
        probs = th.exp(dist.log_prob(actions_for_log_prob(batch.actions, model.action_space))).view(4, n_actions)
    assert th.allclose(probs.sum(dim=1), th.ones(4), atol=1e-5)
    assert model.logger.name_to_value["train/line_search_steps"] >= 1


def test_all_actions_on_a_huge_space_is_refused_at_construction_before_allocating() -> None:
    with pytest.raises(ValueError, match=r"vine_kwargs\['all_actions'\].*at most 64 actions.*1099511627776"):
        TRPOPlus("MlpPolicy", _env(spaces.MultiBinary(40)), sampling="vine", vine_kwargs={"all_actions": True}, **SMALL)
    with pytest.raises(ValueError, match=r"vine_kwargs\['all_actions'\].*at most 64"):
        VineSettings(all_actions=True).branch_actions(spaces.MultiDiscrete([10**6, 10**6, 10**6]))
    with pytest.raises(ValueError, match=r"vine_kwargs\['all_actions'\].*Discrete"):
        VineSettings(all_actions=True).branch_actions(spaces.Box(-1, 1, (2,)))
    # one enumeration: the vine's is the tested one of sb3_trpo_plus.distributions
    for space in (spaces.Discrete(4), spaces.MultiDiscrete([3, 2]), spaces.MultiBinary(4)):
        assert th.equal(VineSettings(all_actions=True).branch_actions(space), enumerate_actions(space))


# ------------------------------------------------------------------ max_weight


def _heavy_weight_models(max_weight: float) -> tuple[TRPOPlus, TRPOPlus]:
    """Two models on the same data, without and with truncation, where one branch's weight is ~100x."""
    models = []
    for q_kwargs in ({}, {"max_weight": max_weight}):
        vine = {"n_states": 4, "n_actions": 4, "horizon": 3}
        model = TRPOPlus(
            "MlpPolicy",
            _env(spaces.Discrete(3)),
            seed=1,
            sampling="vine",
            vine_kwargs=vine,
            q="uniform",
            q_kwargs=q_kwargs,
            **SMALL,
        )
        _collect(model)
        batch = model._vine_batch
        batch.log_q[0] = np.log(1e-2)  # q proposed this action with probability 0.01: weight ~ 100 pi
        models.append(model)
    return models[0], models[1]


def test_max_weight_truncates_the_vine_importance_weights() -> None:
    plain, truncated = _heavy_weight_models(max_weight=2.0)
    assert th.equal(plain._vine_batch.q_values, truncated._vine_batch.q_values)  # type: ignore[union-attr]
    batch = truncated._vine_batch
    with th.no_grad():
        dist = truncated.policy.get_distribution(batch.observations)
        plain_surrogate, truncated_surrogate = plain._surrogate(batch), truncated._surrogate(batch)
        # the objective is the self-normalised estimator with min(w, c) weights
        weights = th.exp(dist.log_prob(batch.actions) - batch.log_q).view(4, 4)
        assert float(weights.max()) > 10.0
        clipped = th.clamp(weights, max=2.0)
        q_values = batch.q_values.view(4, 4)
        expected = float(((clipped * q_values).sum(1) / clipped.sum(1)).mean())
        untruncated = float(((weights * q_values).sum(1) / weights.sum(1)).mean())
        assert float(truncated_surrogate.objective(dist)) == pytest.approx(expected, rel=1e-5)
        assert float(plain_surrogate.objective(dist)) == pytest.approx(untruncated, rel=1e-5)
        assert abs(expected - untruncated) > 1e-3
        # truncation raises the effective sample size
        assert truncated_surrogate.ess(dist) > plain_surrogate.ess(dist) + 0.05
    # the logged train/is_ess is that of the truncated weights
    truncated.train()
    with th.no_grad():
        dist = truncated.policy.get_distribution(batch.observations)
        logged = truncated.logger.name_to_value["train/is_ess"]
        assert logged == pytest.approx(truncated_surrogate.ess(dist))
        assert logged > plain_surrogate.ess(dist) + 0.05


def test_max_weight_truncates_single_path_weights_and_leaves_parity_without_it() -> None:
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    model = TRPOPlus("MlpPolicy", env, seed=0, q_kwargs={"max_weight": 1.5}, **SMALL)
    _collect(model)
    batch = model._policy_batch()
    with th.no_grad():
        dist = model.policy.get_distribution(batch.observations)
        log_q = batch.old_log_prob - 3.0 * (th.arange(len(batch.old_log_prob)) % 2)  # half the weights e^3 ~ 20
        batch = batch._replace(old_log_prob=log_q)  # single path: log q is pi_old's stored log-probability
        surrogate = model._surrogate(batch)
        model.q_kwargs = {}
        plain = model._surrogate(batch)
        assert float(surrogate.objective(dist)) != pytest.approx(float(plain.objective(dist)))
        assert surrogate.ess(dist) > plain.ess(dist) + 0.05


# ------------------------------------------------------------------ rollout-set selection


def _selection_counts(geometric: bool, size: int, horizon: int, gamma: float, trials: int, seed: int) -> np.ndarray:
    """How often each time step of a one-episode trunk was put in the rollout set, over ``trials`` sets."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(horizon)
    for _ in range(trials):
        trunk = TrunkStates(size, gamma=gamma, geometric=geometric, n_envs=1, rng=rng)
        for t in range(horizon):
            trunk.offer(0, t, lambda t=t: t)
            trunk.episode_time += 1
        observations, snapshots = trunk.states()
        assert len(snapshots) == size and observations == snapshots
        np.add.at(counts, np.asarray(snapshots), 1)
    return counts


def _pooled_chi_square(counts: np.ndarray, expected: np.ndarray, min_expected: float = 20.0) -> tuple[float, int]:
    """Pearson's statistic on bins pooled (in time order) until each expects at least ``min_expected``."""
    statistic, bins, observed_bin, expected_bin = 0.0, 0, 0.0, 0.0
    for observed, wanted in zip(counts, expected, strict=True):
        observed_bin += observed
        expected_bin += wanted
        if expected_bin >= min_expected:
            statistic += (observed_bin - expected_bin) ** 2 / expected_bin
            bins, observed_bin, expected_bin = bins + 1, 0.0, 0.0
    if expected_bin > 0:
        statistic += (observed_bin - expected_bin) ** 2 / expected_bin
        bins += 1
    return statistic, bins - 1


@pytest.mark.parametrize("geometric", [True, False], ids=["geometric", "uniform"])
def test_rollout_set_selection_frequencies_match_the_stated_distribution(geometric: bool) -> None:
    # the case: 64 of 200 states, gamma 0.97 (without replacement, t = 0 got 0.51x its weight)
    size, horizon, gamma, trials = 64, 200, 0.97, 300
    counts = _selection_counts(geometric, size, horizon, gamma, trials, seed=7)
    draws = size * trials
    if geometric:  # N independent draws with replacement: multinomial with p_t = gamma^t / sum
        weights = gamma ** np.arange(horizon)
        p = weights / weights.sum()
        std = np.sqrt(draws * p * (1 - p))
    else:  # N distinct states: each is in the set with probability N / T
        p = np.full(horizon, 1.0 / horizon)
        std = np.full(horizon, np.sqrt(trials * (size / horizon) * (1 - size / horizon)))
    expected = draws * p
    assert np.all(np.abs(counts - expected) < 5 * std + 1)
    for t in (0, 10, 50, 100):
        assert abs(counts[t] / expected[t] - 1) < 6 * std[t] / expected[t], (t, counts[t] / expected[t])
    statistic, dof = _pooled_chi_square(counts, expected)
    assert statistic < scipy_stats.chi2.ppf(0.9999, dof), (statistic, dof)


def test_geometric_selection_restarts_time_with_each_episode_and_snapshots_only_chosen_states() -> None:
    rng = np.random.default_rng(8)
    gamma, counts, snapshots_taken = 0.8, np.zeros(10), 0
    for _ in range(400):
        trunk = TrunkStates(8, gamma=gamma, geometric=True, n_envs=2, rng=rng)
        taken: list[int] = []

        def snapshot(step: int, taken: list[int] = taken) -> int:
            taken.append(step)
            return step % 10

        for step in range(30):  # episodes of 10 steps in both environments
            for index in range(2):
                trunk.offer(index, step % 10, functools.partial(snapshot, step))
            trunk.episode_time += 1
            trunk.episode_time[np.full(2, step % 10 == 9)] = 0  # both episodes end: t restarts at 0
        _, snapshots = trunk.states()
        assert len(snapshots) == 8
        np.add.at(counts, np.asarray(snapshots), 1)
        snapshots_taken += len(taken)
    p = gamma ** np.arange(10) / np.sum(gamma ** np.arange(10))
    assert np.all(np.abs(counts - 3200 * p) < 5 * np.sqrt(3200 * p * (1 - p)))
    assert snapshots_taken / 400 < 30  # out of 60 trunk states, and 8 draws with repeats sharing a snapshot


# ------------------------------------------------------------------ gSDE branches


def _gsde_model(n_envs: int, sde_sample_freq: int, crn: bool = True) -> TRPOPlus:
    vine = {"n_states": 4, "n_actions": 3, "horizon": 9, "common_random_numbers": crn}
    return TRPOPlus(
        "MlpPolicy",
        make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0),
        seed=0,
        use_sde=True,
        sde_sample_freq=sde_sample_freq,
        sampling="vine",
        vine_kwargs=vine,
        **SMALL,
    )


def _record_branch_policy_actions(model: TRPOPlus) -> list[dict[str, Any]]:
    """Every call of the branches' policy: observations, actions, the matrices used, the trunk time."""
    runner = model._vine.runner  # type: ignore[union-attr]
    calls: list[dict[str, Any]] = []
    original_start, original_actions = runner._start_noise, runner._policy_actions

    def start(noise: Any, size: int) -> None:
        original_start(noise, size)
        calls.append({"start": noise})

    def policy_actions(observations: list[Any]) -> np.ndarray:
        time = runner._time
        actions = original_actions(observations)
        calls.append({"obs": np.stack(observations), "actions": actions, "matrices": runner._exploration.copy(), "time": time})
        return actions

    runner._start_noise = start  # type: ignore[method-assign]
    runner._policy_actions = policy_actions  # type: ignore[method-assign]
    return calls


def _mean_and_latent(model: TRPOPlus, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with th.no_grad():
        dist: Any = model.policy.get_distribution(th.as_tensor(obs))
        return dist.distribution.mean.numpy().astype(np.float64), dist._latent_sde.numpy().astype(np.float64)


def test_gsde_branches_act_with_the_trunks_exploration_matrix() -> None:
    model = _gsde_model(n_envs=2, sde_sample_freq=-1)
    calls = _record_branch_policy_actions(model)
    _collect(model)
    trunk = model.policy.action_dist.exploration_matrices.detach().numpy().astype(np.float64)  # type: ignore[attr-defined]
    steps = [call for call in calls if "actions" in call]
    assert len(steps) >= 4 * 3
    used = set()
    for call in steps:
        mean, latent = _mean_and_latent(model, call["obs"])
        # action = mean + latent @ E with E one of the trunk's matrices, the same for the K branches (CRN)
        matches = [np.allclose(call["actions"], mean + latent @ trunk[i], atol=1e-4) for i in range(2)]
        assert sum(matches) == 1, "branch actions are not mean + latent_sde @ (a trunk exploration matrix)"
        used.add(matches.index(True))
    # the matrix of a rollout-set state is the one of the trunk environment the state came from
    observations, taken = model._vine.trunk.states()  # type: ignore[union-attr]
    for obs, (_, noise) in zip(observations, taken, strict=True):
        env_index = next(i for i in range(2) if np.array_equal(noise.matrix, trunk[i]))
        assert np.array_equal(model.rollout_buffer.observations[noise.step, env_index], obs)


@pytest.mark.parametrize("crn", [True, False], ids=["crn", "independent"])
def test_gsde_branches_renew_their_matrix_when_the_trunk_would(crn: bool) -> None:
    model = _gsde_model(n_envs=1, sde_sample_freq=4, crn=crn)
    calls = _record_branch_policy_actions(model)
    _collect(model)
    renewed = kept = 0
    previous: np.ndarray | None = None
    start: Any = None
    own_matrices = False  # whether the branches of the current state have drawn their own matrices yet
    for call in calls:
        if "start" in call:
            start, previous, own_matrices = call["start"], None, False
            continue
        matrices, time = call["matrices"], call["time"]
        mean, latent = _mean_and_latent(model, call["obs"])
        assert np.allclose(call["actions"], mean + np.einsum("ki,kij->kj", latent, matrices), atol=1e-4)
        reference = start.matrix[None] if previous is None else previous
        if time % 4 == 0:  # the trunk draws a new matrix at steps 0, 4, 8, ... of its rollout
            assert not np.allclose(matrices, reference)
            renewed, own_matrices = renewed + 1, True
        else:
            assert np.array_equal(matrices, np.broadcast_to(reference, matrices.shape))
            kept += 1
        # the K branches start with the trunk's matrix; new ones are shared with CRN, independent without
        assert np.array_equal(matrices, np.broadcast_to(matrices[0], matrices.shape)) == (crn or not own_matrices)
        previous = matrices
    assert renewed > 0 and kept > 0


def test_gsde_first_actions_from_q_policy_have_the_trunks_action_law_and_torch_rng_is_untouched() -> None:
    model = _gsde_model(n_envs=1, sde_sample_freq=-1)
    _collect(model)
    obs = model.rollout_buffer.observations[:3, 0]
    mean, latent = _mean_and_latent(model, obs)
    with th.no_grad():
        std = model.policy.action_dist.get_std(model.policy.log_std).numpy().astype(np.float64)  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    matrices = std * rng.standard_normal((20000, *std.shape))
    trunk_law = mean[None] + np.einsum("si,nij->nsj", latent, matrices)  # the trunk's action over its matrix's law
    with th.no_grad():
        pi_old = model.policy.get_distribution(th.as_tensor(obs))
        q_actions = model._vine.q.build(pi_old, th.as_tensor(obs)).sample(20000).numpy()  # type: ignore[union-attr]
    assert np.allclose(q_actions.mean(axis=1), trunk_law.mean(axis=0), atol=0.05 * trunk_law.std(axis=0).max())
    assert np.allclose(q_actions.std(axis=1), trunk_law.std(axis=0), rtol=0.05)
    # the branches draw their matrices from the sampler's NumPy generator: torch's stream is untouched
    _, taken = model._vine.trunk.states()  # type: ignore[union-attr]
    state, noise = taken[0]
    before = th.random.get_rng_state()
    result = model._vine.runner.run(state, np.zeros((3, 1), dtype=np.float32), noise)  # type: ignore[union-attr]
    assert th.equal(before, th.random.get_rng_state()) and result.env_steps == 3 * 9


# ------------------------------------------------------------------ progress bar


@pytest.mark.parametrize("how", ["progress_bar=True", "callback"])
def test_progress_bar_counts_branch_steps(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import stable_baselines3.common.base_class as base_class

    bars: list[ProgressBarCallback] = []

    class RecordedBar(ProgressBarCallback):
        def __init__(self) -> None:
            super().__init__()
            bars.append(self)

    monkeypatch.setattr(base_class, "ProgressBarCallback", RecordedBar)
    model = TRPOPlus(
        "MlpPolicy", _env(spaces.Discrete(3)), seed=0, sampling="vine", vine_kwargs={"n_states": 4, "horizon": 5}, **SMALL
    )
    if how == "callback":
        model.learn(200, callback=CallbackList([RecordedBar()]))
    else:
        model.learn(200, progress_bar=True)
    assert len(bars) == 1
    branch_steps = model.num_timesteps - SMALL["n_steps"] * model._n_updates
    assert branch_steps > 0
    # the bar ends where num_timesteps ends: at or past 100% of the budget, branch steps included
    assert bars[0].pbar.n == model.num_timesteps >= 200


# ------------------------------------------------------------------ KL direction


def test_the_kl_is_stated_in_the_direction_it_is_measured() -> None:
    import inspect

    import sb3_trpo_plus.surrogate as surrogate_module
    import sb3_trpo_plus.trpo_plus as trpo_plus_module
    from sb3_trpo_plus.surrogate import mean_kl
    from sb3_trpo_plus.trust_region import kl_hessian_vector_product

    assert list(inspect.signature(mean_kl).parameters) == ["new", "old"]
    for doc in (surrogate_module.__doc__, trpo_plus_module.__doc__, mean_kl.__doc__, kl_hessian_vector_product.__doc__):
        text = " ".join((doc or "").split())
        assert "KL(pi_theta || pi_old)" in text
        # the other direction is never stated as the one measured (only as the paper's, with the same Hessian)
        assert "mean KL(pi_old" not in text.replace("Mean", "mean")
    # what the line search measures and logs: KL(pi_theta || pi_old)
    model = TRPOPlus("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), seed=0, **SMALL)
    _collect(model)
    obs = model._policy_batch().observations
    with th.no_grad():
        old = model.policy.get_distribution(obs)
        old_probs = old.distribution.probs.clone()
    model.train()
    assert model.logger.name_to_value["train/line_search_success"] == 1.0
    with th.no_grad():
        new_probs = model.policy.get_distribution(obs).distribution.probs
    forward = float((new_probs * (new_probs.log() - old_probs.log())).sum(-1).mean())
    backward = float((old_probs * (old_probs.log() - new_probs.log())).sum(-1).mean())
    logged = model.logger.name_to_value["train/kl"]
    assert logged == pytest.approx(forward, rel=1e-4) and logged != pytest.approx(backward, rel=1e-3)
