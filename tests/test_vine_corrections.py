"""
The estimator corrections of issue 26, each checked on a bandit whose exact policy gradient is
known: truncated importance weights that keep their gradient, the combined estimator's scale,
the states of the trust region, the refused combinations and the logged statistics.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.estimators import Surrogate, vine_and_trunk_surrogate
from sb3_trpo_plus.settings import CombinedWeight, Estimator, TrustRegionStates, VineSettings
from sb3_trpo_plus.surrogate import minimum_mse_weight, self_normalized_surrogate, squared_bias_estimate

N_ACTIONS = 3


def _bandit_log_pi(logits: th.Tensor, actions: th.Tensor) -> th.Tensor:
    return th.log_softmax(logits, dim=-1)[actions]


def test_truncated_weights_keep_their_gradient_at_theta_old() -> None:
    """
    With max_weight = c, a row whose weight exceeds c still moves the step: at theta_old the
    self-normalised estimator's gradient is sum_k min(w_k, c) grad log pi_k (Q_k - L) / sum_k min(w_k, c).
    """
    logits = th.tensor([1.5, 0.0, -1.0], dtype=th.float64, requires_grad=True)
    actions = th.tensor([0, 1, 2, 0, 1, 0])
    log_q = th.full((6,), -float(th.log(th.tensor(3.0))), dtype=th.float64)  # q uniform: w(0) = 3 pi(0) ~ 2.1
    q_values = th.tensor([1.0, -0.5, 2.0, 0.3, 0.7, -1.2], dtype=th.float64)
    group = th.zeros(6, dtype=th.long)
    c = 1.5
    value = self_normalized_surrogate(_bandit_log_pi(logits, actions), log_q, q_values, group, 1, max_weight=c)
    (gradient,) = th.autograd.grad(value, logits)
    with th.no_grad():
        weights = th.exp(_bandit_log_pi(logits, actions) - log_q)
        assert float(weights.max()) > c  # some rows are truncated
        clipped = th.clamp(weights, max=c)
        estimate = (clipped * q_values).sum() / clipped.sum()
        scores = th.eye(N_ACTIONS, dtype=th.float64)[actions] - th.softmax(logits, -1)  # grad log pi(a)
        expected = (clipped[:, None] * scores * (q_values - estimate)[:, None]).sum(0) / clipped.sum()
    assert abs(float(value) - float(estimate)) < 1e-12
    assert th.allclose(gradient, expected, atol=1e-12), (gradient, expected)


def test_truncated_self_normalized_gradient_is_the_policy_gradient_of_the_truncated_law() -> None:
    """
    The documented bias: with many actions from q, the truncated estimator's gradient at theta_old
    is the policy gradient with actions weighted by rho proportional to min(pi_old, c q); it keeps a
    positive projection on the true gradient (a clamp without gradient loses the truncated actions).
    """
    generator = th.Generator().manual_seed(0)
    logits = th.tensor([2.0, 0.0, -1.0], dtype=th.float64, requires_grad=True)
    rewards = th.tensor([1.0, 0.0, 0.5], dtype=th.float64)
    q_probs = th.tensor([0.2, 0.4, 0.4], dtype=th.float64)
    c = 1.5
    k, replicates = 400, 200
    with th.no_grad():
        pi = th.softmax(logits, -1)
        scores = th.eye(N_ACTIONS, dtype=th.float64) - pi  # row a: grad log pi(a)
        rho = th.minimum(pi, c * q_probs)
        rho = rho / rho.sum()
        documented = (rho[:, None] * scores * (rewards - (rho * rewards).sum())[:, None]).sum(0)
        true = (pi[:, None] * scores * rewards[:, None]).sum(0)
    gradients = []
    for _ in range(replicates):
        actions = th.multinomial(q_probs, k, replacement=True, generator=generator)
        noisy = rewards[actions] + 0.1 * th.randn(k, dtype=th.float64, generator=generator)
        value = self_normalized_surrogate(
            _bandit_log_pi(logits, actions), th.log(q_probs)[actions], noisy, th.zeros(k, dtype=th.long), 1, max_weight=c
        )
        gradients.append(th.autograd.grad(value, logits)[0])
    stacked = th.stack(gradients)
    mean, error = stacked.mean(0), stacked.std(0) / replicates**0.5
    # the self-normalised estimator's own O(1/K) bias is far below these error bars at K = 400
    assert bool((th.abs(mean - documented) < 4 * error + 1e-3 * documented.abs().max()).all()), (mean, documented, error)
    assert float(documented @ true) > 0.5 * float(true @ true)


# ------------------------------------------------------------------ the combined estimator on a bandit

REWARDS = th.tensor([1.0, 0.0, 0.5])


def _bandit_policy() -> ActorCriticPolicy:
    """A one-state bandit: logits = W * 1 + b, no hidden layer."""
    th.manual_seed(0)
    policy = ActorCriticPolicy(spaces.Box(-1.0, 1.0, (1,)), spaces.Discrete(N_ACTIONS), lambda _: 0.0, net_arch=[])
    with th.no_grad():
        policy.action_net.bias.copy_(th.tensor([0.8, -0.2, 0.1]))
    return policy


def _exact_gradient(policy: ActorCriticPolicy) -> th.Tensor:
    """grad of J = sum_a pi(a) r(a) in the actor's parameters."""
    params = list(policy.action_net.parameters())
    logits = policy.get_distribution(th.ones(1, 1)).distribution.logits[0]
    pieces = th.autograd.grad((th.softmax(logits, -1) * REWARDS).sum(), params)
    return th.cat([p.flatten() for p in pieces]).detach()


def _combined(
    policy: ActorCriticPolicy,
    generator: th.Generator,
    n_trunk: int,
    n_states: int,
    k: int,
    trust_region_states: str,
    combined_weight: str = "inverse_variance",
    vine_q: th.Tensor | None = None,
    vine_noise: float = 1.0,
) -> Surrogate:
    """
    One draw of the combined estimator: trunk and branch actions from pi_old, noisy rewards (the
    branches' Q-values are ``vine_q`` of their action, the true rewards by default, plus noise of
    standard deviation ``vine_noise``).
    """
    with th.no_grad():
        pi = th.softmax(policy.get_distribution(th.ones(1, 1)).distribution.logits[0], -1)
        value = float((pi * REWARDS).sum())  # the exact V installed as the critic
    trunk_actions = th.multinomial(pi, n_trunk, replacement=True, generator=generator)
    trunk = SimpleNamespace(
        observations=th.ones(n_trunk, 1),
        actions=trunk_actions.float(),
        old_log_prob=th.log(pi)[trunk_actions],
        advantages=REWARDS[trunk_actions] + th.randn(n_trunk, generator=generator) - value,
    )
    vine_actions = th.multinomial(pi, n_states * k, replacement=True, generator=generator)
    vine = VineBatch(
        observations=th.ones(n_states * k, 1),
        actions=vine_actions.float(),
        log_q=th.log(pi)[vine_actions],
        q_values=(REWARDS if vine_q is None else vine_q)[vine_actions]
        + vine_noise * th.randn(n_states * k, generator=generator),
        group=th.arange(n_states).repeat_interleave(k),
        n_states=n_states,
        all_actions=False,
    )
    params = list(policy.action_net.parameters())
    return vine_and_trunk_surrogate(
        vine,
        trunk,
        policy,
        params,
        spaces.Discrete(N_ACTIONS),
        False,
        None,
        Estimator.COMBINED,
        TrustRegionStates(trust_region_states),
        CombinedWeight(combined_weight),
    )


def _gradient(policy: ActorCriticPolicy, surrogate: Surrogate) -> th.Tensor:
    params = list(policy.action_net.parameters())
    pieces = th.autograd.grad(surrogate.objective(policy.get_distribution(surrogate.observations)), params)
    return th.cat([p.flatten() for p in pieces]).detach()


def test_combined_estimator_with_sampled_actions_is_unbiased_at_theta_old() -> None:
    """
    At K = 2 the self-normalised vine estimate alone has half the policy gradient's expected size;
    the combined estimator rescales it, so that its expected gradient is the true one (within
    4 Monte Carlo standard errors, each component).
    """
    policy = _bandit_policy()
    generator = th.Generator().manual_seed(1)
    true = _exact_gradient(policy)
    replicates = 120
    draws, weights = [], []
    for _ in range(replicates):
        surrogate = _combined(policy, generator, n_trunk=128, n_states=128, k=2, trust_region_states="trunk")
        draws.append(_gradient(policy, surrogate))
        weights.append(surrogate.stats["vine_weight"])
    stacked = th.stack(draws)
    mean, error = stacked.mean(0), stacked.std(0) / replicates**0.5
    assert 0.2 < sum(weights) / replicates < 0.8  # both estimators count
    assert bool((th.abs(mean - true) < 4 * error).all()), (mean, true, error)
    # the test has the power to see the uncorrected mix, about 0.75 of the true gradient here
    assert float(th.abs(true).max()) * 0.2 > 4 * float(error[th.abs(true).argmax()])


@pytest.mark.parametrize("trust_region_states", ["trunk", "rollout_set"])
def test_combined_estimator_trust_region_states(trust_region_states: str) -> None:
    """The KL and Fisher rows: every trunk state, or the rollout set's rows only (N * K), as documented."""
    policy = _bandit_policy()
    generator = th.Generator().manual_seed(0)
    surrogate = _combined(policy, generator, n_trunk=128, n_states=6, k=4, trust_region_states=trust_region_states)
    rows: Any = surrogate.constraint_observations
    assert rows is not None
    assert len(rows) == (128 if trust_region_states == "trunk" else 6 * 4)


def test_combined_weight_can_be_recomputed_from_the_logged_variances() -> None:
    """w = var_trunk / (var_trunk + bound), the bound (90% upper bound of var_vine) logged beside them."""
    policy = _bandit_policy()
    stats = _combined(policy, th.Generator().manual_seed(2), n_trunk=64, n_states=8, k=4, trust_region_states="trunk").stats
    bound = stats["grad_variance_vine_bound"]
    assert bound > stats["grad_variance_vine"]
    assert stats["vine_weight"] == pytest.approx(stats["grad_variance_trunk"] / (stats["grad_variance_trunk"] + bound))


# ------------------------------------------------------------------ the minimum-MSE weight


def test_minimum_mse_weight_and_squared_bias_estimate() -> None:
    """w = var_a / (var_a + var_b + b^2); b^2 from one draw of each estimate, unbiased before its clip at 0."""
    assert minimum_mse_weight(1.0, 3.0, 0.0) == pytest.approx(0.25)
    assert minimum_mse_weight(1.0, 1.0, 2.0) == pytest.approx(0.25)
    assert minimum_mse_weight(1.0, float("inf"), 0.0) == 0.0
    generator = th.Generator().manual_seed(0)
    truth_a, bias = th.tensor([1.0, -2.0, 0.5]), th.tensor([0.6, 0.0, -0.8])  # ||bias||^2 = 1
    a = truth_a + 0.5 * th.randn(100_000, 3, generator=generator)  # variance 3 * 0.25 per draw
    b = truth_a + bias + th.randn(100_000, 3, generator=generator)  # variance 3
    raw = ((b - a) ** 2).sum(1) - 0.75 - 3.0  # the estimate before the clip
    assert float(raw.mean()) == pytest.approx(1.0, abs=0.05)
    assert squared_bias_estimate(a[0], b[0], 0.75, 3.0) == pytest.approx(max(0.0, float(raw[0])), rel=1e-5)
    assert squared_bias_estimate(a[0], b[0], 0.75, float("inf")) == 0.0


def test_min_mse_weight_can_be_recomputed_from_the_logs() -> None:
    policy = _bandit_policy()
    stats = _combined(policy, th.Generator().manual_seed(2), 64, 8, 4, "trunk", combined_weight="min_mse").stats
    expected = stats["grad_variance_trunk"] / (
        stats["grad_variance_trunk"] + stats["grad_variance_vine_bound"] + stats["vine_bias_sq"]
    )
    assert stats["vine_weight"] == pytest.approx(expected)
    assert "vine_bias_sq" not in _combined(policy, th.Generator().manual_seed(2), 64, 8, 4, "trunk").stats


def _mean_squared_error(combined_weight: str, vine_q: th.Tensor | None, vine_noise: float) -> tuple[float, float, float]:
    """Over 150 draws: the combined gradient's mean squared error against the true one, its mean vine weight and cosine."""
    policy = _bandit_policy()
    true = _exact_gradient(policy)
    generator = th.Generator().manual_seed(3)
    errors, weights, cosines = [], [], []
    for _ in range(150):
        surrogate = _combined(policy, generator, 128, 16, 4, "trunk", combined_weight, vine_q, vine_noise)
        gradient = _gradient(policy, surrogate)
        errors.append(float(((gradient - true) ** 2).sum()))
        weights.append(surrogate.stats["vine_weight"])
        cosines.append(float(th.nn.functional.cosine_similarity(gradient, true, dim=0)))
    return sum(errors) / len(errors), sum(weights) / len(weights), sum(cosines) / len(cosines)


def test_min_mse_weighs_out_a_vanishing_vine_gradient() -> None:
    """
    The one-step lock-in's mechanism: branches whose Q-values do not depend on the action (a flat,
    critic-made Q) give a vine gradient of 0 with variance 0. The inverse-variance weight hands it
    the whole step (w = 1, a zero step); the minimum-MSE weight sees the disagreement with the
    trunk's gradient and keeps the step on the trunk's estimate.
    """
    flat = th.full((N_ACTIONS,), 0.5)
    mse_iv, weight_iv, cos_iv = _mean_squared_error("inverse_variance", flat, 0.0)
    mse_min, weight_min, cos_min = _mean_squared_error("min_mse", flat, 0.0)
    assert weight_iv == pytest.approx(1.0)
    assert weight_min < 0.3
    assert cos_min > 0.5 > cos_iv
    assert mse_min < 0.5 * mse_iv


def test_min_mse_weighs_down_a_biased_vine_gradient_and_keeps_an_unbiased_one() -> None:
    """
    A critic bias in the branches' Q-values (the wrong action looks best) makes the vine gradient
    point elsewhere: the minimum-MSE weight lowers the vine's share and the error. With unbiased
    branches it costs little: its error stays within 25% of the inverse-variance weight's.
    """
    biased = REWARDS + th.tensor([-0.8, 0.6, 0.0])
    mse_iv, weight_iv, _ = _mean_squared_error("inverse_variance", biased, 0.2)
    mse_min, weight_min, _ = _mean_squared_error("min_mse", biased, 0.2)
    assert weight_min < 0.5 * weight_iv
    assert mse_min < 0.7 * mse_iv
    mse_iv, weight_iv, _ = _mean_squared_error("inverse_variance", None, 1.0)
    mse_min, weight_min, _ = _mean_squared_error("min_mse", None, 1.0)
    assert weight_min > 0.5 * weight_iv
    assert mse_min < 1.25 * mse_iv


def test_combined_weight_is_checked_by_name() -> None:
    with pytest.raises(ValueError, match=r"vine_kwargs\['combined_weight'\] must be one of"):
        VineSettings(combined_weight="mse")
    with pytest.raises(ValueError, match=r"combined_weight.*estimator='combined'"):
        VineSettings(combined_weight="min_mse", estimator="vine")
    assert VineSettings(combined_weight="min_mse").combined_weight == "min_mse"


# ------------------------------------------------------------------ train/is_ess


@pytest.mark.parametrize("all_actions", [True, False])
def test_is_ess_is_logged_only_where_there_are_importance_weights(all_actions: bool) -> None:
    """With every action branched (the exact sum) there are no weights: no ``train/is_ess`` key."""
    from sb3_trpo_plus import TRPOPlus

    vine = {"n_states": 3, "n_actions": 2, "horizon": 3, "all_actions": all_actions}
    model = TRPOPlus("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0, sampling="vine", vine_kwargs=vine)
    model.learn(32)
    logged = model.logger.name_to_value
    assert "train/kl" in logged
    assert ("train/is_ess" in logged) is (not all_actions)


# ------------------------------------------------------------------ refused combinations


def test_geometric_selection_is_refused_with_the_combined_estimator() -> None:
    from sb3_trpo_plus.settings import VineSettings

    with pytest.raises(ValueError, match=r"state_selection.*geometric.*estimator.*combined"):
        VineSettings(state_selection="geometric")
    VineSettings(state_selection="geometric", estimator="vine")  # the rollout set alone: one distribution
    VineSettings(state_selection="uniform", estimator="combined")


# ------------------------------------------------------------------ q="uniform" on a Box


def _uniform_on_box(q: str) -> Any:
    from sb3_trpo_plus import TRPOPlus

    vine = {"n_states": 2, "n_actions": 2, "horizon": 2}
    return TRPOPlus("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, seed=0, sampling="vine", q=q, vine_kwargs=vine)


def test_uniform_q_on_a_box_warns_once_when_pi_old_has_mass_outside_the_bounds() -> None:
    """Pendulum's initial policy (std 1, bounds +-2) has about 5% of its mass outside: warned once, by name."""
    import warnings

    model = _uniform_on_box("uniform")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(64)  # two iterations
    named = [w for w in caught if "q='uniform' does not cover pi_old" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _uniform_on_box("mixture").learn(32)  # mixture covers pi_old: no warning
    assert not [w for w in caught if "does not cover" in str(w.message)]


# ------------------------------------------------------------------ the vine weight in the benchmark


def _learning_benchmark() -> Any:
    """benchmarks/vine_vs_single_path.py as a module (the benchmarks folder is not installed)."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import vine_vs_single_path

    return vine_vs_single_path


def test_vine_benchmark_records_the_per_iteration_vine_weight(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every update of a vine run leaves its train/vine_weight in the result, the CSV and the table."""
    bench = _learning_benchmark()

    row = {"env_id": "CartPole-v1", "budget": 3 * 64 + 64, "normalize": False, "n_envs": 1}
    row |= {"kwargs": {"n_steps": 64, "batch_size": 64}, "vine": {"n_states": 4, "horizon": 4}}
    monkeypatch.setattr(bench, "ENVS", {"tiny": row})
    monkeypatch.setattr(bench, "EVAL_EPISODES", 1)
    result = bench.run(("tiny", "vine", 0, 1.0, "{}"))
    weights = [entry["vine_weight"] for entry in result["vine_weights"]]
    updates = len(result["curve"])  # one per rollout
    assert len(weights) == updates >= 2
    assert all(0.0 <= w <= 1.0 for w in weights)
    bench.report([result], tmp_path, "test")
    assert (tmp_path / "vine_weights.csv").read_text().count("\n") == updates + 1
    table = (tmp_path / "vine_vs_single_path.md").read_text()
    summary = bench.weight_summary(weights)
    assert f"{summary['median']:.2f} [{summary['p10']:.2f}, {summary['p90']:.2f}] ({updates})" in table


def test_the_learning_report_counts_every_vine_setting_of_a_row(tmp_path: Any) -> None:
    """A row compared with more vine settings than matplotlib has colours: each still gets its final returns."""
    import json

    bench = _learning_benchmark()

    def result(scheme: str, text: str, seed: int) -> dict[str, Any]:
        return {
            "env": "NoisyPendulum-v1",
            "scheme": scheme,
            "seed": seed,
            "vine_kwargs": text,
            "timesteps": 2000,
            "eval_mean": -200.0 + seed,
            "eval_std": 1.0,
            "seconds": 1.0,
            "curve": [[1000, -500.0 + seed], [2000, -400.0 + seed]],
            "vine_weights": [] if scheme == "single_path" else [{"vine_weight": 0.5}],
        }

    settings = [json.dumps({"n_actions": k}) for k in range(2, 14)]  # 12 vine settings
    results = [result("single_path", "", seed) for seed in range(2)]
    results += [result("vine", text, seed) for text in settings for seed in range(2)]
    bench.report(results, tmp_path, ["test"])
    table = (tmp_path / "vine_vs_single_path.md").read_text()
    for text in settings:
        rows = [line for line in table.splitlines() if line.startswith("| NoisyPendulum-v1") and f"`{text}`" in line]
        assert len(rows) == 2 and all("| 2 / 2 |" in row for row in rows), rows  # final return and learning speed
