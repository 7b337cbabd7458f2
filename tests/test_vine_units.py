"""Unit tests of the vine scheme's building blocks: rollout-set selection, CRN sampling, settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)

from sb3_trpo_plus.distributions import sample_with_noise
from sb3_trpo_plus.settings import FORMER_VINE_DEFAULTS, VineSettings
from sb3_trpo_plus.vine.trunk import TrunkStates


def _fill(trunk: TrunkStates, n_steps: int, n_envs: int, done_every: int = 0) -> None:
    for t in range(n_steps):
        starts = np.full(n_envs, t == 0 or bool(done_every and t % done_every == 0), dtype=bool)
        trunk.episode_time[starts] = 0
        for index in range(n_envs):
            trunk.offer(index, np.array([t, index]), lambda t=t, index=index: (t, index))
        trunk.episode_time += 1


def test_uniform_rollout_set_is_uniform_over_trunk_states() -> None:
    rng = np.random.default_rng(0)
    counts = np.zeros(50)
    for _ in range(2000):
        trunk = TrunkStates(5, gamma=0.9, geometric=False, n_envs=1, rng=rng)
        _fill(trunk, 50, 1)
        _, snapshots = trunk.states()
        assert len(snapshots) == len(set(snapshots)) == 5  # without replacement
        for t, _ in snapshots:
            counts[t] += 1
    expected = 2000 * 5 / 50
    # every time index is chosen with the same probability (chi-square-like bound, 5 sigma)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_geometric_rollout_set_follows_discounted_visitation() -> None:
    rng = np.random.default_rng(1)
    gamma, horizon, draws = 0.8, 40, 20000
    times = []
    for _ in range(draws // 10):
        trunk = TrunkStates(1, gamma=gamma, geometric=True, n_envs=1, rng=rng)
        _fill(trunk, horizon, 1)
        for _ in range(1):
            times.append(trunk.states()[1][0][0])
    times_arr = np.array(times)
    # with one state kept, P(t) is proportional to gamma^t: mean of a truncated geometric law
    weights = gamma ** np.arange(horizon)
    exact_mean = float(np.sum(np.arange(horizon) * weights) / weights.sum())
    std = float(np.sqrt(np.sum((np.arange(horizon) - exact_mean) ** 2 * weights) / weights.sum()))
    assert abs(times_arr.mean() - exact_mean) < 5 * std / np.sqrt(len(times_arr))


def test_geometric_time_restarts_with_each_episode() -> None:
    rng = np.random.default_rng(2)
    trunk = TrunkStates(200, gamma=0.5, geometric=True, n_envs=2, rng=rng)
    _fill(trunk, 30, 2, done_every=10)
    assert trunk.episode_time.tolist() == [10, 10]
    assert len(trunk.states()[1]) == 60 or len(trunk.states()[1]) > 0


def test_only_kept_states_are_snapshotted() -> None:
    rng = np.random.default_rng(3)
    trunk = TrunkStates(3, gamma=0.99, geometric=False, n_envs=1, rng=rng)
    calls = []
    for t in range(1000):
        trunk.offer(0, t, lambda t=t: calls.append(t) or t)
    # reservoir sampling: about N (1 + log(T / N)) insertions, far fewer than T
    assert len(calls) < 100
    assert len(trunk.states()[1]) == 3


@pytest.mark.parametrize("common", [True, False])
def test_sample_with_noise_gaussian(common: bool) -> None:
    rng = np.random.default_rng(4)
    dist = DiagGaussianDistribution(2)
    mean = np.array([[0.0, 1.0]] * 4, dtype=np.float32)
    std = np.array([[1.0, 2.0]] * 4, dtype=np.float32)
    actions = sample_with_noise(dist, [mean, std], rng, common)
    assert actions.shape == (4, 2)
    identical_rows = np.all(actions == actions[0])
    assert identical_rows == common
    many = np.concatenate([sample_with_noise(dist, [mean, std], rng, False) for _ in range(5000)])
    assert np.allclose(many.mean(axis=0), [0.0, 1.0], atol=0.06)
    assert np.allclose(many.std(axis=0), [1.0, 2.0], atol=0.06)


def test_sample_with_noise_categorical_matches_probabilities() -> None:
    rng = np.random.default_rng(5)
    logits = np.log(np.array([[0.2, 0.5, 0.3]] * 20000, dtype=np.float64))
    actions = sample_with_noise(CategoricalDistribution(3), [logits], rng, False)
    freq = np.bincount(actions, minlength=3) / len(actions)
    assert np.allclose(freq, [0.2, 0.5, 0.3], atol=0.015)
    same = sample_with_noise(CategoricalDistribution(3), [logits[:4]], rng, True)
    assert np.all(same == same[0])


def test_sample_with_noise_multicategorical_and_bernoulli() -> None:
    rng = np.random.default_rng(6)
    dist = MultiCategoricalDistribution([2, 3])
    logits = [np.zeros((5, 2)), np.zeros((5, 3))]
    actions = sample_with_noise(dist, logits, rng, True)
    assert actions.shape == (5, 2) and np.all(actions == actions[0])
    bern = sample_with_noise(BernoulliDistribution(3), [np.zeros((10000, 3))], rng, False)
    assert bern.shape == (10000, 3) and abs(bern.mean() - 0.5) < 0.02


def test_branch_actions_enumerates_finite_spaces() -> None:
    assert VineSettings(all_actions=True).branch_actions(spaces.Discrete(3)).tolist() == [0, 1, 2]
    multi = VineSettings(all_actions=True).branch_actions(spaces.MultiDiscrete([2, 3]))
    assert multi.shape == (6, 2) and len({tuple(row.tolist()) for row in multi}) == 6
    binary = VineSettings(all_actions=True).branch_actions(spaces.MultiBinary(3))
    assert binary.shape == (8, 3) and len({tuple(row.tolist()) for row in binary}) == 8
    assert binary.dtype == th.float32  # what SB3's Bernoulli log_prob takes
    with pytest.raises(ValueError, match="all_actions"):
        VineSettings(all_actions=True).branch_actions(spaces.Box(-1, 1, (2,)))
    with pytest.raises(ValueError, match="at most"):
        VineSettings(all_actions=True).branch_actions(spaces.Discrete(1000))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_states": 0}, "n_states"),
        ({"n_states": 1.5}, "n_states"),
        ({"n_actions": 1}, "n_actions"),
        ({"horizon": 0}, "horizon"),
        ({"state_selection": "best"}, "state_selection"),
        ({"branch_vec_env": "ray"}, "branch_vec_env"),
        ({"common_random_numbers": "yes"}, "common_random_numbers"),
        ({"make_branch_env": 3}, "make_branch_env"),
        ({"branches": 3}, "unknown keys"),
    ],
)
def test_vine_kwargs_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VineSettings.from_kwargs(kwargs).check_action_space(spaces.Discrete(2))


def test_vine_kwargs_defaults() -> None:
    settings = VineSettings.from_kwargs({"n_states": 0.25})
    assert settings.n_states == 0.25 and settings.common_random_numbers is True
    assert settings.rollout_set_size(10) == 3 and VineSettings(n_states=32).rollout_set_size(10) == 10
    defaults = VineSettings()
    assert defaults.n_states == "auto" and defaults.all_actions == "auto"
    assert defaults.horizon == "auto" and defaults.budget == "auto" and defaults.shares_budget
    # horizon "auto": one step when every action is branched, 10 with sampled actions
    assert defaults.resolved(spaces.Discrete(3)).horizon == 1
    assert defaults.resolved(spaces.Box(-1, 1, (2,))).horizon == 10
    assert defaults.resolved(spaces.Discrete(3), q_is_policy=False).horizon == 10
    assert VineSettings(horizon=4).resolved(spaces.Discrete(3)).horizon == 4
    with pytest.raises(ValueError, match=r"horizon.*'auto'"):
        VineSettings.from_kwargs({"horizon": "long"})
    with pytest.raises(ValueError, match=r"horizon'\]='auto'.*resolve"):
        _ = defaults.branch_horizon  # all_actions not yet decided
    # combined_weight "auto": min_mse where the combined estimator runs, inverse variances (unused) otherwise
    assert defaults.combined_weight == "min_mse" and VineSettings(estimator="vine").combined_weight == "inverse_variance"
    # branch_share "auto": 20% with every action branched, 5% with sampled actions; a fixed share either way
    assert defaults.branch_share == "auto" and defaults.adapt_share is False
    assert defaults.resolved(spaces.Discrete(3)).branch_share == 0.2
    assert defaults.resolved(spaces.Box(-1, 1, (2,))).branch_share == 0.05
    assert defaults.resolved(spaces.Discrete(3), q_is_policy=False).branch_share == 0.05
    assert VineSettings(branch_share=0.3).resolved(spaces.Box(-1, 1, (2,))).branch_share == 0.3
    for space, share in ((spaces.Discrete(3), 0.2), (spaces.Box(-1, 1, (2,)), 0.05)):
        assert defaults.resolved(space).adapt_share is False
        assert defaults.resolved(space).trunk_steps(1000) == math.floor(1000 * (1 - share))
    with pytest.raises(ValueError, match=r"branch_share'\]='auto'.*resolve"):
        _ = defaults.max_share  # all_actions not yet decided
    with pytest.raises(ValueError, match=r"vine_kwargs\['branch_share'\] must be a number in \(0, 1\) or 'auto'"):
        VineSettings(branch_share="half")  # type: ignore[arg-type]
    former = VineSettings.from_kwargs(FORMER_VINE_DEFAULTS)
    assert (former.horizon, former.budget, former.branch_share) == (10, "added", 0.2)
    assert (former.combined_weight, former.adapt_share) == ("inverse_variance", False)
    with pytest.raises(ValueError, match=r"vine_kwargs\['adapt_share'\] must be True or False"):
        VineSettings(adapt_share="yes")  # type: ignore[arg-type]
    # budget "auto": shared with the auto rollout set, added when N is given
    assert not VineSettings(n_states=8).shares_budget and VineSettings(n_states=8, budget="auto").trunk_steps(100) == 100
    levers = (defaults.trust_region_states, defaults.estimator, defaults.critic_targets, defaults.refit_critic_first)
    assert levers == ("trunk", "combined", "trunk_and_branches", True)
    with pytest.raises(ValueError, match="all_actions"):
        VineSettings.from_kwargs({"all_actions": True}).check_action_space(spaces.Box(-1, 1, (2,)))
