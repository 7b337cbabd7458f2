"""
The vine scheme's levers (issue 11): defaults that fit the action space and bound the branches'
share of the budget, the trust region on the trunk's states, branch returns as critic targets
(and Q-values completed with the refitted critic), and the combination of the trunk's and the
rollout set's estimators. Each is an option of ``vine_kwargs``; ``PAPER_VINE_KWARGS`` turns
them all back to the paper's procedure.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv
from test_vine_estimators import FiniteActionEnv
from test_vine_fidelity import Countdown

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.distributions import actions_for_log_prob
from sb3_trpo_plus.estimators import vine_and_trunk_surrogate, vine_surrogate, vine_value
from sb3_trpo_plus.settings import (
    AUTO_ALL_ACTIONS_MAX,
    PAPER_VINE_KWARGS,
    Estimator,
    StepSettings,
    TrustRegionStates,
    VineSettings,
)
from sb3_trpo_plus.step import take_step
from sb3_trpo_plus.surrogate import chi2_quantile, inverse_variance_weight, variance_of_mean, variance_upper_bound

COMBINED, TRUNK = Estimator.COMBINED, TrustRegionStates.TRUNK

# ----------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("space", "q_is_policy", "expected"),
    [
        (spaces.Discrete(2), True, True),
        (spaces.Discrete(AUTO_ALL_ACTIONS_MAX), True, True),
        (spaces.Discrete(AUTO_ALL_ACTIONS_MAX + 1), True, False),
        (spaces.MultiDiscrete([4, 4]), True, True),
        (spaces.MultiBinary(5), True, False),  # 32 actions
        (spaces.Box(-1, 1, (2,)), True, False),
        (spaces.Discrete(2), False, False),  # an explicit q means sampled actions
    ],
)
def test_all_actions_auto_branches_every_action_of_small_finite_spaces(
    space: spaces.Space, q_is_policy: bool, expected: bool
) -> None:
    resolved = VineSettings().resolved(space, q_is_policy)
    assert resolved.all_actions is expected
    assert (resolved.branch_actions(space) is not None) is expected


def test_auto_rollout_set_bounds_the_branch_share() -> None:
    # N = share / (1 - share) * T / (K * H), at least 2, at most T
    assert VineSettings(branch_share=0.5, horizon=20).rollout_set_size(4096, 2) == 102
    assert VineSettings(branch_share=0.25, horizon=20).rollout_set_size(4096, 2) == 34
    assert VineSettings(branch_share=0.25, horizon=20, n_actions=4).rollout_set_size(4096) == 17
    assert VineSettings(branch_share=0.25, horizon=20).rollout_set_size(10, 2) == 2
    assert VineSettings(branch_share=0.9, horizon=1).rollout_set_size(10, 2) == 10
    for share in (0.1, 0.25, 0.5):
        settings = VineSettings(branch_share=share, horizon=20)
        size = settings.rollout_set_size(4096, 3)
        assert size * 3 * 20 <= share / (1 - share) * 4096  # branches at most share of trunk + branches


def test_the_floor_of_two_states_that_breaks_the_branch_share_is_named() -> None:
    # Acrobot (3 actions, all branched), n_steps=64: N = 0.25 * 64 / 30 = 0.53, floored up to 2
    acrobot = spaces.Discrete(3)
    message = VineSettings(horizon=10).resolved(acrobot).share_warning(64, 3)
    assert message is not None
    assert "2 states x 3 branches x horizon 10 = 60 branch steps beside 64 trunk steps" in message
    assert "48%" in message and "branch_share=0.2" in message
    # MultiDiscrete([5, 5]) with all 25 actions on a 1024-step trunk: 500 / 1524 = 33%
    assert "33%" in (VineSettings(all_actions=True, horizon=10).share_warning(1024, 25) or "")
    assert VineSettings(horizon=10).resolved(acrobot).share_warning(4096, 3) is None  # N = 34: the share holds
    assert VineSettings(n_states=2).share_warning(64, 3) is None  # N given: the user chose it


def test_the_share_warning_is_given_once_per_model() -> None:
    vine_kwargs = {"budget": "added", "horizon": 10}
    model = TRPOPlus("MlpPolicy", "Acrobot-v1", n_steps=64, batch_size=64, sampling="vine", vine_kwargs=vine_kwargs, seed=0)
    with pytest.warns(UserWarning, match=r"n_states='auto'.*48%") as caught:
        model.learn(3 * 64)
    assert sum("branch_share" in str(w.message) for w in caught) == 1


def test_branch_share_beside_an_explicit_rollout_set_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"vine_kwargs\['branch_share'\] only sizes the rollout set when n_states='auto'.*8"):
        TRPOPlus("MlpPolicy", "CartPole-v1", sampling="vine", vine_kwargs={"n_states": 8, "branch_share": 0.5})
    TRPOPlus("MlpPolicy", "CartPole-v1", sampling="vine", vine_kwargs={"n_states": "auto", "branch_share": 0.5})


def _parameter_bytes(model: TRPOPlus) -> list[bytes]:
    return [p.detach().cpu().numpy().tobytes() for p in model.policy.parameters()]


def test_shared_budget_counts_trunk_and_branches_in_n_steps() -> None:
    # n_steps=256, 2 envs, branch_share 0.2: a trunk of floor(256 * 0.8) = 204 steps per env, and the
    # branches of the auto rollout set within the rest: the iteration takes at most n_steps * n_envs
    env = DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)
    model = TRPOPlus("MlpPolicy", env, n_steps=256, batch_size=64, sampling="vine", vine_kwargs={"budget": "shared"}, seed=0)
    assert model.rollout_buffer.buffer_size == 204 and model.n_steps == 256
    model.learn(3 * 512)
    per_iteration = model.num_timesteps / model._n_updates
    assert 204 * 2 < per_iteration <= 256 * 2  # the trunk's 408 steps, and branches within the rest


def test_shared_budget_is_the_added_budget_with_the_shortened_trunk() -> None:
    # budget="shared" with n_steps is exactly budget="added" with n_steps = floor(n_steps * (1 - branch_share))
    # (with a fixed share: adapt_share moves the trunk's length from the second iteration on)
    def trained(n_steps: int, budget: str) -> TRPOPlus:
        vine_kwargs = {"budget": budget, "adapt_share": False}
        model = TRPOPlus(
            "MlpPolicy", "Pendulum-v1", n_steps=n_steps, batch_size=64, sampling="vine", vine_kwargs=vine_kwargs, seed=3
        )
        return model.learn(600)

    shared, added = trained(256, "shared"), trained(243, "added")  # Pendulum's sampled actions: a 5% share
    assert shared.num_timesteps == added.num_timesteps
    assert _parameter_bytes(shared) == _parameter_bytes(added)


def test_shared_budget_survives_save_and_load(tmp_path: Any) -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, sampling="vine", vine_kwargs={"budget": "shared"})
    model.save(tmp_path / "model")
    loaded = TRPOPlus.load(tmp_path / "model", env=model.get_env())
    assert loaded.vine_kwargs == {"budget": "shared"} and loaded.rollout_buffer.buffer_size == 102
    loaded.learn(300)


def test_defaults_share_the_budget() -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, sampling="vine")
    assert model.rollout_buffer.buffer_size == 102  # floor(128 * 0.8)
    given = TRPOPlus("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, sampling="vine", vine_kwargs={"n_states": 4})
    assert given.rollout_buffer.buffer_size == 128  # N given: n_steps counts the trunk


def test_shared_budget_needs_the_auto_rollout_set() -> None:
    with pytest.raises(ValueError, match=r"vine_kwargs\['budget'\]='shared'.*n_states='auto'.*8"):
        TRPOPlus("MlpPolicy", "CartPole-v1", sampling="vine", vine_kwargs={"n_states": 8, "budget": "shared"})
    assert VineSettings(budget="shared", branch_share=0.5).trunk_steps(101) == 50
    assert VineSettings(budget="added").trunk_steps(101) == 101
    # the default: shared with the auto rollout set, 20% with every action branched, 5% with sampled actions
    assert VineSettings().resolved(spaces.Discrete(2)).trunk_steps(101) == 80
    assert VineSettings().resolved(spaces.Box(-1, 1, (1,))).trunk_steps(101) == 95


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_states": "many"}, "n_states"),
        ({"all_actions": "yes"}, "all_actions"),
        ({"branch_share": 0.0}, "branch_share"),
        ({"branch_share": 1.0}, "branch_share"),
        ({"branch_share": True}, "branch_share"),
        ({"trust_region_states": "all"}, "trust_region_states"),
        ({"estimator": "best"}, "estimator"),
        ({"budget": "total"}, "budget"),
        ({"critic_targets": "branches"}, "critic_targets"),
        ({"refit_critic_first": 1}, "refit_critic_first"),
        ({"n_branch_workers": 2}, "n_branch_workers"),  # needs subproc
        ({"n_branch_workers": 0, "branch_vec_env": "subproc"}, "n_branch_workers"),
    ],
)
def test_new_vine_kwargs_are_validated_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TRPOPlus("MlpPolicy", "CartPole-v1", sampling="vine", vine_kwargs=kwargs)


# ----------------------------------------------------------------------------- pure estimators


def test_variance_of_mean_is_exact() -> None:
    chunks = th.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    # mean (2, 1); squared deviations 2 + 2 + 4 = 8; / (3 * 2)
    assert variance_of_mean(chunks) == pytest.approx(8.0 / 6.0)
    assert variance_of_mean(th.ones(4, 3)) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        variance_of_mean(th.ones(1, 3))


def test_inverse_variance_weight() -> None:
    assert inverse_variance_weight(1.0, 3.0) == pytest.approx(0.25)
    assert inverse_variance_weight(0.0, 0.0) == 0.5
    assert inverse_variance_weight(1.0, float("inf")) == 0.0
    assert inverse_variance_weight(float("inf"), 1.0) == 1.0
    assert inverse_variance_weight(1.0, float("nan")) == 0.0


@pytest.mark.parametrize(
    ("probability", "dof", "exact"), [(0.1, 4, 1.063623), (0.1, 15, 8.546756), (0.9, 7, 12.017037), (0.1, 31, 21.433565)]
)
def test_chi2_quantile_matches_the_tables(probability: float, dof: int, exact: float) -> None:
    assert chi2_quantile(probability, dof) == pytest.approx(exact, rel=0.01)


def test_variance_upper_bound_covers_the_true_variance_90_percent_of_the_time() -> None:
    """Sample variances of 6 Gaussian chunks: the bound lies above the true variance in 90% of draws."""
    rng = np.random.default_rng(2)
    samples = rng.normal(0.0, 2.0, (20_000, 6))
    estimates = samples.var(axis=1, ddof=1)
    covered = np.mean([variance_upper_bound(v, 6) >= 4.0 for v in estimates])
    assert covered == pytest.approx(0.9, abs=0.01)
    assert variance_upper_bound(1.0, 1) == float("inf")
    assert variance_upper_bound(1.0, 200) == pytest.approx(1.14, abs=0.02)  # many chunks: close to the estimate


def test_the_inverse_variance_combination_has_the_smallest_variance() -> None:
    """Two unbiased estimates of one vector, variances 1 and 4 per coordinate: the combination has variance 1 / (1 + 1/4)."""
    rng = np.random.default_rng(0)
    truth = np.array([1.0, -2.0, 0.5])
    a = truth + rng.normal(0.0, 1.0, (200_000, 3))
    b = truth + rng.normal(0.0, 2.0, (200_000, 3))
    weight = inverse_variance_weight(3.0, 12.0)  # traces
    combined = (1 - weight) * a + weight * b
    assert weight == pytest.approx(0.2)
    assert combined.mean(axis=0) == pytest.approx(truth, abs=0.01)
    assert combined.var(axis=0).sum() == pytest.approx(3.0 / (1 + 1 / 4), rel=0.02)
    for other in (0.0, 0.1, 0.3, 0.5):
        assert ((1 - other) * a + other * b).var(axis=0).sum() >= combined.var(axis=0).sum() - 1e-9


def test_variance_of_mean_measures_the_variance_of_a_batch_mean() -> None:
    """From one batch split in chunks, the estimate of Var(batch mean) agrees with the variance over many batches."""
    rng = np.random.default_rng(1)
    batches = rng.normal(0.0, 3.0, (4000, 64, 2))  # 4000 batches of 64 samples in 2 dimensions
    true = batches.mean(axis=1).var(axis=0).sum()  # 2 * 9 / 64
    estimates = [variance_of_mean(th.as_tensor(np.stack([batch[c::8].mean(axis=0) for c in range(8)]))) for batch in batches]
    assert true == pytest.approx(18 / 64, rel=0.05)
    assert np.mean(estimates) == pytest.approx(true, rel=0.05)


def test_rebootstrapped_completes_only_the_bootstrapped_rows() -> None:
    batch = VineBatch(
        observations=th.zeros(4, 1),
        actions=th.zeros(4, dtype=th.long),
        log_q=th.zeros(4),
        q_values=th.tensor([9.0, 9.0, 9.0, 9.0]),
        group=th.tensor([0, 0, 1, 1]),
        n_states=2,
        all_actions=True,
        partial_returns=th.tensor([1.0, 2.0, 3.0, 4.0]),
        bootstrap_discount=th.tensor([0.5, 0.0, 0.25, 0.0]),
        bootstrap_rows=th.tensor([0, 2]),
    )
    assert batch.rebootstrapped(th.tensor([10.0, 100.0])).q_values.tolist() == [6.0, 2.0, 28.0, 4.0]


# ----------------------------------------------------------------------------- branch returns


def _clock_model(end: int, horizon: int, **vine_kwargs: Any) -> TRPOPlus:
    env = DummyVecEnv([lambda: Countdown(end, reward=1.0)])  # reward 1 a step, the time as observation
    kwargs = {"horizon": horizon, "n_states": 4, **vine_kwargs}
    model = TRPOPlus("MlpPolicy", env, n_steps=64, batch_size=64, gamma=0.9, seed=0, sampling="vine", vine_kwargs=kwargs)
    with th.no_grad():  # V = 10 everywhere
        model.policy.value_net.weight.zero_()
        model.policy.value_net.bias.fill_(10.0)
    return model


@pytest.mark.parametrize(("end", "horizon"), [(1000, 4), (3, 10)])
def test_branch_states_get_their_discounted_returns_to_go(end: int, horizon: int) -> None:
    """Cut at H: G_t = sum_{j<H-t} gamma^j + gamma^(H-t) V; terminated: the rewards until the end, no bootstrap."""
    model = _clock_model(end, horizon)
    sampler = model._vine
    assert sampler is not None
    result = sampler.runner.run(sampler.snapshot(0), np.array([0, 1]), None, record_states=True)
    gamma = 0.9
    length = min(horizon, end)
    cut = horizon < end
    value = 10.0 if cut else 0.0
    expected_q = sum(gamma**j for j in range(length)) + gamma**length * value
    assert result.q_values == pytest.approx([expected_q, expected_q])
    assert result.partial_returns == pytest.approx([expected_q - gamma**length * value] * 2)
    assert result.bootstrap_discount == pytest.approx([gamma**length if cut else 0.0] * 2)
    times = [float(obs[0]) for obs in result.visited_observations]
    assert sorted(times) == sorted([float(t) for t in range(1, length)] * 2)  # s_1 .. s_{L-1} of both branches
    for t, target in zip(times, result.visited_returns, strict=True):
        rest = length - int(t)
        assert target == pytest.approx(sum(gamma**j for j in range(rest)) + gamma**rest * value)
    sampler.close()


def test_critic_is_fitted_first_on_trunk_and_branch_returns_and_completes_q(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _clock_model(1000, 4, n_states=8)
    seen: dict[str, Any] = {}
    fit = model._fit_critic

    def spy_fit(targets: Any) -> list[float]:
        seen["n_targets"] = len(targets.returns)
        seen["fitted"] = True
        return fit(targets)

    surrogate = model._surrogate

    def spy_surrogate(batch: VineBatch) -> Any:
        seen["fitted_before_surrogate"] = seen.get("fitted", False)
        assert batch.bootstrap_observations is not None and batch.partial_returns is not None
        with th.no_grad():
            values = model.policy.predict_values(th.as_tensor(batch.bootstrap_observations)).flatten()
        rows = batch.bootstrap_rows
        expected = batch.partial_returns.clone()
        expected[rows] += batch.bootstrap_discount[rows] * values  # type: ignore[index]
        seen["q_error"] = float((batch.q_values - expected).abs().max())
        seen["n_branch_targets"] = len(batch.critic_returns)  # type: ignore[arg-type]
        return surrogate(batch)

    monkeypatch.setattr(model, "_fit_critic", spy_fit)
    monkeypatch.setattr(model, "_surrogate", spy_surrogate)
    model.learn(64, log_interval=10**6)
    # 8 rollout-set states (their V) and the 3 inner states of each of their 2 branches
    assert seen["n_branch_targets"] == 8 + 8 * 2 * 3
    assert seen["n_targets"] == 64 + seen["n_branch_targets"]
    assert seen["fitted_before_surrogate"] and seen["q_error"] < 1e-5
    assert model.logger.name_to_value["rollout/critic_targets_from_branches"] == seen["n_branch_targets"]


def test_paper_procedure_stays_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _clock_model(1000, 4, n_states=8, **PAPER_VINE_KWARGS)
    seen: dict[str, Any] = {}
    fit = model._fit_critic
    step = model._policy_step

    def spy_fit(targets: Any) -> list[float]:
        seen["n_targets"] = len(targets.returns)
        seen["stepped_before_fit"] = "constraint" in seen
        return fit(targets)

    def spy_step(surrogate: Any) -> Any:
        seen["constraint"] = surrogate.constraint_observations
        seen["n_obs"] = len(surrogate.observations)
        return step(surrogate)

    monkeypatch.setattr(model, "_fit_critic", spy_fit)
    monkeypatch.setattr(model, "_policy_step", spy_step)
    model.learn(64, log_interval=10**6)
    assert seen["constraint"] is None and seen["n_obs"] == 8 * 2  # the rollout set's rows alone
    assert seen["n_targets"] == 64 and seen["stepped_before_fit"]
    assert "train/vine_weight" not in model.logger.name_to_value


# ----------------------------------------------------------------------------- trust region and estimators


def test_trust_region_step_constrains_the_kl_on_the_constraint_states() -> None:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", seed=0, target_kl=0.01)
    policy = model.policy
    objective_obs = th.randn(32, 4)
    constraint_obs = th.randn(256, 4) * 3
    actions = th.randint(0, 2, (32,))
    advantages = th.randn(32)

    def objective(distribution: Any) -> th.Tensor:
        return (th.exp(distribution.log_prob(actions) - old_log_prob) * advantages).mean()

    with th.no_grad():
        old_log_prob = policy.get_distribution(objective_obs).log_prob(actions)
        old_constraint = policy.get_distribution(constraint_obs)
        old_constraint_logits = old_constraint.distribution.logits.clone()
    settings = StepSettings(0.01, 15, 0.1, 0.8, 10, "analytic", 1.0)
    result = take_step(policy, model._actor_params, objective_obs, objective, settings, constraint_obs)
    assert result.accepted
    with th.no_grad():
        new = policy.get_distribution(constraint_obs)
        old = th.distributions.Categorical(logits=old_constraint_logits)
        kl = float(th.distributions.kl_divergence(new.distribution, old).mean())
    assert kl == pytest.approx(result.kl, rel=1e-4) and kl <= 0.01 * 1.0001


def _one_iteration(vine_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[TRPOPlus, dict[str, Any]]:
    model = TRPOPlus("MlpPolicy", "CartPole-v1", n_steps=512, batch_size=128, seed=0, sampling="vine", vine_kwargs=vine_kwargs)
    model.set_logger(configure(None, []))
    seen: dict[str, Any] = {}
    step = model._policy_step

    def spy_step(surrogate: Any) -> Any:
        seen["n_obs"], seen["constraint"] = len(surrogate.observations), surrogate.constraint_observations
        return step(surrogate)

    monkeypatch.setattr(model, "_policy_step", spy_step)
    model.learn(512, log_interval=10**6)
    return model, seen


def test_default_vine_combines_estimators_on_the_trunks_trust_region(monkeypatch: pytest.MonkeyPatch) -> None:
    # the defaults but a fixed branch share, so that every iteration's trunk is the first one's
    model, seen = _one_iteration({"adapt_share": False}, monkeypatch)
    values = model.logger.name_to_value
    settings = model._settings().vine
    assert settings is not None and settings.all_actions is True  # CartPole: both actions branched
    trunk = model.rollout_buffer.buffer_size * model.n_envs
    assert trunk == 409  # the default budget is shared: floor(512 * (1 - 0.2)) trunk steps
    n_states = settings.rollout_set_size(trunk, 2)
    assert values["rollout/rollout_set_size"] == n_states
    assert seen["constraint"] is not None and len(seen["constraint"]) == trunk  # every trunk state
    assert seen["n_obs"] == trunk + 2 * n_states  # the rollout set's rows, then the trunk's
    assert 0.0 <= values["train/vine_weight"] <= 1.0
    assert values["train/grad_variance_trunk"] > 0 and values["train/grad_variance_vine"] > 0
    bound = variance_upper_bound(values["train/grad_variance_vine"], min(16, n_states))  # 16 chunks at most
    assert bound > values["train/grad_variance_vine"]
    mse_vine = bound + values["train/vine_bias_sq"]  # combined_weight "auto": the minimum-MSE weight
    assert values["train/vine_weight"] == pytest.approx(inverse_variance_weight(values["train/grad_variance_trunk"], mse_vine))
    assert values["rollout/branch_fraction"] <= settings.branch_share + 1e-9  # the bounded share


def test_vine_estimator_alone_on_the_trunks_trust_region(monkeypatch: pytest.MonkeyPatch) -> None:
    model, seen = _one_iteration({"estimator": "vine"}, monkeypatch)
    n_states = int(model.logger.name_to_value["rollout/rollout_set_size"])
    assert seen["n_obs"] == 2 * n_states and len(seen["constraint"]) == model.rollout_buffer.buffer_size
    assert "train/vine_weight" not in model.logger.name_to_value


def _collected(n_steps: int, **vine_kwargs: Any) -> TRPOPlus:
    """A vine model on a 3-action env after one rollout (trunk and branches), its branch envs closed."""
    env = DummyVecEnv([lambda: FiniteActionEnv(spaces.Discrete(3))])
    kwargs = {"n_states": 6, "horizon": 4, **vine_kwargs}
    model = TRPOPlus("MlpPolicy", env, n_steps=n_steps, batch_size=n_steps, seed=0, sampling="vine", vine_kwargs=kwargs)
    model._setup_learn(10**9, None)
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]
    model._vine.close()  # type: ignore[union-attr]
    assert model._vine_batch is not None
    return model


def _vine_and_trunk() -> tuple[TRPOPlus, VineBatch, Any]:
    """A vine iteration's two batches: the rollout set (K = 3, sampled from q) and the trunk's samples."""
    model = _collected(64, all_actions=False)
    assert model._vine_batch is not None
    return model, model._vine_batch, next(model.rollout_buffer.get(batch_size=None))


def test_combined_objective_weighs_the_normalised_trunk_and_the_vine_over_sigma() -> None:
    """
    (1 - w) L_trunk(normalised advantages) + w c L_vine / sigma, sigma the trunk advantages' standard
    deviation, c = K / (K - 1) with sampled actions (the self-normalised estimator's scale).
    """
    model, vine, trunk = _vine_and_trunk()
    surrogate = vine_and_trunk_surrogate(
        vine, trunk, model.policy, model._actor_params, model.action_space, True, None, COMBINED, TRUNK
    )
    weight = surrogate.stats["vine_weight"]
    assert 0.0 < weight < 1.0
    with th.no_grad():  # a policy away from pi_old, so that the importance weights are not all 1
        for param in model._actor_params:
            param.add_(0.05 * th.randn_like(param))
        distribution = model.policy.get_distribution(surrogate.observations)
        actions = [actions_for_log_prob(a, model.action_space) for a in (vine.actions, trunk.actions)]
        log_prob = distribution.log_prob(th.cat(actions))
        n_vine = len(vine.actions)
        raw = trunk.advantages
        normalised = (raw - raw.mean()) / (raw.std() + 1e-8)
        trunk_part = (th.exp(log_prob[n_vine:] - trunk.old_log_prob) * normalised).mean()
        k = n_vine // vine.n_states
        vine_part = k / (k - 1) * vine_value(log_prob[:n_vine], vine, None) / (raw.std() + 1e-8)
        expected = (1.0 - weight) * trunk_part + weight * vine_part
        assert float(surrogate.objective(distribution)) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    assert surrogate.constraint_observations is trunk.observations


def test_combined_estimator_falls_back_to_the_vine_when_the_trunk_advantages_are_not_finite() -> None:
    model, vine, trunk = _vine_and_trunk()
    broken = trunk._replace(advantages=th.full_like(trunk.advantages, float("nan")))
    surrogate = vine_and_trunk_surrogate(
        vine, broken, model.policy, model._actor_params, model.action_space, True, None, COMBINED, TRUNK
    )
    alone = vine_surrogate(vine, model.action_space, None)
    assert surrogate.invalid == "" and surrogate.stats == {}
    assert surrogate.observations is vine.observations and surrogate.constraint_observations is trunk.observations
    with th.no_grad():
        distribution = model.policy.get_distribution(vine.observations)
        assert float(surrogate.objective(distribution)) == float(alone.objective(distribution))


class DictObsEnv(FiniteActionEnv):
    """FiniteActionEnv with its observation in a dict."""

    observation_space = spaces.Dict({"state": FiniteActionEnv.observation_space})  # type: ignore[assignment]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = super().reset(seed=seed, options=options)
        return {"state": obs}, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = super().step(action)
        return {"state": obs}, reward, terminated, truncated, info


@pytest.mark.parametrize("space", ["box", "discrete", "multidiscrete", "multibinary", "dict"])
def test_combined_estimator_runs_on_every_kind_of_space(space: str) -> None:
    make = {
        "box": lambda: gym.make("Pendulum-v1"),
        "discrete": lambda: FiniteActionEnv(spaces.Discrete(3)),
        "multidiscrete": lambda: FiniteActionEnv(spaces.MultiDiscrete([2, 3])),
        "multibinary": lambda: FiniteActionEnv(spaces.MultiBinary(2)),
        "dict": lambda: DictObsEnv(spaces.Discrete(2)),
    }[space]
    policy = "MultiInputPolicy" if space == "dict" else "MlpPolicy"
    model = TRPOPlus(
        policy, DummyVecEnv([make]), n_steps=128, batch_size=64, seed=0, sampling="vine", vine_kwargs={"horizon": 5}
    )
    model.set_logger(configure(None, []))
    before = th.nn.utils.parameters_to_vector(model._actor_params).clone()
    model.learn(256, log_interval=10**6)
    values = model.logger.name_to_value
    assert 0.0 <= values["train/vine_weight"] <= 1.0
    assert values["train/line_search_success"] == 1.0
    assert not th.equal(before, th.nn.utils.parameters_to_vector(model._actor_params))
    assert bool(th.isfinite(th.nn.utils.parameters_to_vector(model.policy.parameters())).all())
    model._vine.close()  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- parallel branches


def _branched_batch(**vine_kwargs: Any) -> VineBatch:
    batch = _collected(32, **vine_kwargs)._vine_batch
    assert batch is not None
    return batch


@pytest.mark.parametrize("workers", [1, 2, None])
def test_branch_workers_give_the_in_process_batch(workers: int | None) -> None:
    """K = 3 branches spread over 1, 2 (uneven) or 3 worker processes: the same Q-values and critic targets as in-process."""
    reference = _branched_batch()
    batch = _branched_batch(branch_vec_env="subproc", n_branch_workers=workers)
    assert th.equal(batch.q_values, reference.q_values) and th.equal(batch.observations, reference.observations)
    assert np.array_equal(batch.critic_returns, reference.critic_returns)  # type: ignore[arg-type]
    assert np.array_equal(batch.critic_observations, reference.critic_observations)  # type: ignore[arg-type]
