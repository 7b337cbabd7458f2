"""
``vine_kwargs['adapt_share']``: each iteration's branch share follows what a branch step bought in
the previous one (issue 26, item 4: the NoisyPendulum loss came from the trunk steps the branches
took while their estimate got little weight).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.settings import VineSettings
from sb3_trpo_plus.surrogate import adaptive_branch_share, inverse_variance_weight


def test_adaptive_branch_share_exact_values() -> None:
    # rho = (var_trunk * T) / (mse_vine * B): information per branch step over information per trunk step
    assert adaptive_branch_share(0.2, 1.0, 1.0, 800, 200) == pytest.approx(0.2)  # rho = 4: full share
    assert adaptive_branch_share(0.2, 1.0, 4.0, 800, 200) == pytest.approx(0.2)  # rho = 1: full share
    assert adaptive_branch_share(0.2, 1.0, 8.0, 800, 200) == pytest.approx(0.1)  # rho = 1/2
    assert adaptive_branch_share(0.2, 1.0, 10.0, 800, 200) == pytest.approx(0.08)  # rho = 0.4
    assert adaptive_branch_share(0.2, 1.0, 1000.0, 800, 200) == pytest.approx(0.05)  # floor: a quarter
    assert adaptive_branch_share(0.5, 2.0, 3.0, 300, 100) == pytest.approx(0.5)  # rho = 2
    # no measure of the trunk, or an exact vine part: the full share; no measure of the vine: the floor
    assert adaptive_branch_share(0.2, math.inf, 1.0, 800, 200) == pytest.approx(0.2)
    assert adaptive_branch_share(0.2, 1.0, 0.0, 800, 200) == pytest.approx(0.2)
    assert adaptive_branch_share(0.2, 1.0, math.inf, 800, 200) == pytest.approx(0.05)
    assert adaptive_branch_share(0.2, 1.0, math.nan, 800, 200) == pytest.approx(0.05)
    assert adaptive_branch_share(0.2, 1.0, 1.0, 800, 0) == pytest.approx(0.05)


def test_the_share_rule_lowers_the_variance_of_the_combination() -> None:
    # Two unbiased estimates with per-step variances s_t and s_v (variance of a mean of n steps:
    # s / n). At a fixed budget N, the inverse-variance combination's variance 1 / ((1 - s) N / s_t
    # + s N / s_v) falls as the share s moves towards the part with more information per step,
    # which is what the rule does: rho = s_t / s_v >= 1 keeps the full share, rho < 1 gives it back.
    budget, max_share = 1000, 0.2

    def combined_variance(share: float, per_step_trunk: float, per_step_vine: float) -> float:
        var_t = per_step_trunk / ((1 - share) * budget)
        var_v = per_step_vine / (share * budget)
        w = inverse_variance_weight(var_t, var_v)
        return (1 - w) ** 2 * var_t + w**2 * var_v

    for per_step_vine in (0.1, 0.5, 1.0, 3.0, 10.0):
        var_t = 1.0 / ((1 - max_share) * budget)
        var_v = per_step_vine / (max_share * budget)
        share = adaptive_branch_share(max_share, var_t, var_v, int((1 - max_share) * budget), int(max_share * budget))
        assert combined_variance(share, 1.0, per_step_vine) <= combined_variance(max_share, 1.0, per_step_vine) + 1e-15
        assert (share == pytest.approx(max_share)) == (per_step_vine <= 1.0)


def test_adapt_share_is_checked_by_name() -> None:
    for bad in ("yes", "auto", 1):  # "auto" was the default before the fixed share was measured ahead
        with pytest.raises(ValueError, match=r"vine_kwargs\['adapt_share'\] must be True or False"):
            VineSettings(adapt_share=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"adapt_share.*n_states='auto'.*estimator='combined'.*n_states=8"):
        VineSettings(adapt_share=True, n_states=8)
    with pytest.raises(ValueError, match=r"adapt_share.*budget='added'"):
        VineSettings(adapt_share=True, budget="added")
    with pytest.raises(ValueError, match=r"adapt_share.*estimator='vine'"):
        VineSettings(adapt_share=True, estimator="vine")
    with pytest.raises(ValueError, match=r"adapt_share"):
        TRPOPlus("MlpPolicy", "CartPole-v1", sampling="vine", vine_kwargs={"adapt_share": True, "estimator": "vine"})
    assert VineSettings(adapt_share=True).adapt_share and not VineSettings(adapt_share=False).adapt_share
    # off by default, on every action space
    for space in (spaces.Box(-1, 1, (2,)), spaces.Discrete(3)):
        assert VineSettings().resolved(space).adapt_share is False


def _recorded(model: TRPOPlus, keys: tuple[str, ...]) -> dict[str, list[float]]:
    """Every value the model logs under ``keys``, in order."""
    model.set_logger(configure(None, []))
    seen: dict[str, list[float]] = {key: [] for key in keys}
    record = model.logger.record

    def spy(key: str, value: Any, exclude: Any = None) -> None:
        if key in seen:
            seen[key].append(float(value))
        record(key, value, exclude)

    model.logger.record = spy  # type: ignore[method-assign]
    return seen


def _trunk_lengths(model: TRPOPlus) -> list[int]:
    """The trunk's length per environment of every rollout the model collects from now on (filled as it learns)."""
    lengths: list[int] = []
    collect = model.collect_rollouts

    def spy(*args: Any, **kwargs: Any) -> bool:
        result = collect(*args, **kwargs)
        lengths.append(model.rollout_buffer.buffer_size)
        return result

    model.collect_rollouts = spy  # type: ignore[method-assign]
    return lengths


def _pendulum_adapting(n_steps: int) -> TRPOPlus:
    env = DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2)
    vine_kwargs = {"adapt_share": True, "branch_share": 0.2}  # sampled actions: "auto" would give 0.05
    return TRPOPlus("MlpPolicy", env, n_steps=n_steps, batch_size=128, sampling="vine", vine_kwargs=vine_kwargs, seed=0)


def test_each_iteration_takes_the_share_the_previous_one_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    # the rule's answers are fixed here (whether the measured variances move the share depends on the
    # run): the trunk's length and the rollout set of iteration k + 1 follow the share chosen at k
    chosen = [0.05, 0.2, 0.1, 0.15, 0.08]
    answers = iter(chosen * 3)
    monkeypatch.setattr("sb3_trpo_plus.vine.sampler.adaptive_branch_share", lambda *args: next(answers))
    n_steps = 512
    model = _pendulum_adapting(n_steps)
    seen = _recorded(model, ("train/branch_share_next", "rollout/branch_steps", "rollout/rollout_set_size"))
    trunk_lengths = _trunk_lengths(model)
    model.learn(8 * n_steps * 2)
    shares = seen["train/branch_share_next"]
    assert len(shares) == model._n_updates >= 6
    assert shares == pytest.approx((chosen * 3)[: len(shares)])
    # iteration k + 1 runs a trunk of floor(n_steps * (1 - share_k)) and a rollout set sized to share_k
    assert trunk_lengths[0] == math.floor(n_steps * 0.8)
    assert trunk_lengths[1:] == [math.floor(n_steps * (1 - share)) for share in shares[: len(trunk_lengths) - 1]]
    settings = VineSettings(adapt_share=True, horizon=10, branch_share=0.2)  # as the run above resolved it
    used_shares = [0.2, *shares[: len(trunk_lengths) - 1]]
    expected_sizes = [settings.rollout_set_size(t * 2, 4, share) for t, share in zip(trunk_lengths, used_shares, strict=True)]
    assert seen["rollout/rollout_set_size"] == expected_sizes
    assert min(expected_sizes) < max(expected_sizes)  # the rollout set moved with the share
    assert model.num_timesteps == sum(2 * t + b for t, b in zip(trunk_lengths, seen["rollout/branch_steps"], strict=True))


def test_the_logged_share_is_the_rule_of_the_logged_measures() -> None:
    # with the real rule, every logged share can be recomputed from the same iteration's logged
    # variances, squared bias and step counts (and the next trunk follows it)
    n_steps = 512
    model = _pendulum_adapting(n_steps)
    keys = ("train/branch_share_next", "train/grad_variance_trunk", "train/grad_variance_vine_bound", "train/vine_bias_sq")
    seen = _recorded(model, (*keys, "rollout/branch_steps"))
    trunk_lengths = _trunk_lengths(model)
    model.learn(6 * n_steps * 2)
    shares, var_trunk, bound, bias_sq = (seen[key] for key in keys)
    assert len(shares) == model._n_updates >= 4
    for k, share in enumerate(shares):
        steps = (2 * trunk_lengths[k], int(seen["rollout/branch_steps"][k]))
        assert share == pytest.approx(adaptive_branch_share(0.2, var_trunk[k], bound[k] + bias_sq[k], *steps))
    assert trunk_lengths[1:] == [math.floor(n_steps * (1 - share)) for share in shares[: len(trunk_lengths) - 1]]


def test_adapt_share_keeps_the_full_share_where_branches_pay() -> None:
    # every action branched one step deep on a small discrete task: the vine part carries more per step
    model = TRPOPlus(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=256,
        batch_size=64,
        sampling="vine",
        vine_kwargs={"adapt_share": True, "horizon": 1},
        seed=0,
    )
    seen = _recorded(model, ("train/branch_share_next", "train/vine_weight"))
    model.learn(8 * 256)
    shares, weights = np.array(seen["train/branch_share_next"]), np.array(seen["train/vine_weight"])
    assert len(shares) == len(weights) >= 6
    assert np.median(shares) == pytest.approx(0.2)


def test_adapt_share_survives_save_and_load(tmp_path: Any) -> None:
    kwargs = {"adapt_share": True, "combined_weight": "min_mse", "branch_share": 0.2}
    model = TRPOPlus("MlpPolicy", "Pendulum-v1", n_steps=256, batch_size=64, sampling="vine", vine_kwargs=kwargs, seed=0)
    model.learn(1200)
    model.save(tmp_path / "model")
    loaded = TRPOPlus.load(tmp_path / "model", env=model.get_env())
    assert loaded.vine_kwargs == kwargs
    assert loaded.rollout_buffer.buffer_size == math.floor(256 * 0.8)  # a loaded model starts at branch_share again
    loaded.learn(1200)
    assert loaded._n_updates > model._n_updates
