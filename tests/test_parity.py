"""
One iteration of TRPOPlus equals one iteration of sb3-contrib's TRPO from the same seed: every
parameter of the policy (actor and critic) after ``learn(n_steps * n_envs)``.

The runs are float32 and the conjugate-gradient solve amplifies rounding differences (different
but equivalent orders of summation in the two Fisher-vector products), so parameters agree to
float tolerance, not bit for bit: measured max abs differences are below 1e-6 here, with one
torch thread (conftest.py). The seeds are fixed; with some Pendulum seeds the CG residual lands
at the stopping tolerance (squared norm 1e-10, the float32 noise floor), where the iteration
count can flip between the two implementations and the difference reaches 1e-5.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch as th
from conftest import flat
from sb3_contrib import TRPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_trpo_plus import TRPOPlus

HYPERPARAMS = {"n_steps": 256, "batch_size": 64}
CASES = {
    "CartPole-v1": (11, {}, HYPERPARAMS),
    "Pendulum-v1": (1, {}, HYPERPARAMS),
    # a 2-d continuous action space: checks the KL measure per action dimension
    "LunarLander-v3": (11, {"continuous": True}, {"n_steps": 256, "batch_size": 128, "n_critic_updates": 5}),
}


def _one_iteration(cls: Any, env_id: str, seed: int, env_kwargs: dict, hyperparams: dict, **extra: Any) -> tuple:
    env = make_vec_env(env_id, n_envs=2, seed=seed, env_kwargs=env_kwargs)
    model = cls("MlpPolicy", env, seed=seed, **hyperparams, **extra)
    initial = flat(model.policy.parameters())
    model.learn(hyperparams["n_steps"] * 2)
    return initial, flat(model.policy.parameters())


_REFERENCE: dict[tuple, tuple] = {}


def _reference(env_id: str, seed: int, env_kwargs: dict, hyperparams: dict) -> tuple:
    key = (env_id, seed, tuple(sorted(hyperparams.items())))
    if key not in _REFERENCE:
        _REFERENCE[key] = _one_iteration(TRPO, env_id, seed, env_kwargs, hyperparams)
    return _REFERENCE[key]


@pytest.mark.parametrize("fisher", ["kl_hessian", "analytic"])
@pytest.mark.parametrize("env_id", sorted(CASES))
def test_one_iteration_matches_sb3_contrib(env_id: str, fisher: str) -> None:
    seed, env_kwargs, hyperparams = CASES[env_id]
    initial, reference = _reference(env_id, seed, env_kwargs, hyperparams)
    ours_initial, ours = _one_iteration(TRPOPlus, env_id, seed, env_kwargs, hyperparams, fisher=fisher, fvp_subsample=1.0)
    assert th.equal(initial, ours_initial)
    difference = float((ours - reference).abs().max())
    print(f"parity {env_id} fisher={fisher}: max abs difference {difference:.2e}")
    assert th.allclose(ours, reference, atol=1e-5, rtol=0), difference
    # and the iteration did move the policy, far more than the tolerance
    assert float((reference - initial).abs().max()) > 1e-3


@pytest.mark.parametrize("fisher", ["kl_hessian", "analytic"])
def test_parity_with_a_large_trust_region(fisher: str) -> None:
    # A larger trust region, where the full step's measured KL is near target_kl: the line
    # search must take the same decision as sb3-contrib's, which accepts a candidate when
    # KL(pi_theta || pi_old) < target_kl (SB3's kl_divergence(distribution, old_distribution)).
    # Seed 4: measuring the KL the other way round, KL(pi_old || pi_theta), changes the decision
    # there (difference 6.7e-2; seed 3: 4.0e-2), while the right measure agrees to 7.5e-7. Some
    # seeds (11 with one torch thread) instead sit on a float32 knife-edge of the conjugate-
    # gradient stopping test (squared residual < 1e-10), where the two implementations' rounding
    # flips the iteration count; seeds 0-5 measured 6.7e-7 to 4.5e-6.
    hyperparams = {**HYPERPARAMS, "target_kl": 0.1}
    _, reference = _reference("Pendulum-v1", 4, {}, hyperparams)
    _, ours = _one_iteration(TRPOPlus, "Pendulum-v1", 4, {}, hyperparams, fisher=fisher, fvp_subsample=1.0)
    difference = float((ours - reference).abs().max())
    print(f"parity Pendulum-v1 target_kl=0.1 fisher={fisher}: max abs difference {difference:.2e}")
    assert th.allclose(ours, reference, atol=1e-5, rtol=0), difference
