"""Sampling distributions q: shapes, log-densities and validation, on every action space."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import make_proba_distribution

from sb3_trpo_plus.q import make_q, validate_q

SPACES = {
    "box": spaces.Box(-1.0, 1.0, (2,)),
    "discrete": spaces.Discrete(4),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
    "multibinary": spaces.MultiBinary(3),
}
QS: list[tuple[Any, dict[str, Any]]] = [
    ("policy", {}),
    ("uniform", {}),
    ("scaled", {"std_scale": 1.5, "temperature": 3.0}),
    ("mixture", {"eps": 0.25}),
]


def _pi_old(space: spaces.Space, n_states: int) -> Any:
    th.manual_seed(0)
    dist = make_proba_distribution(space)
    if isinstance(space, spaces.Box):
        return dist.proba_distribution(th.randn(n_states, 2) * 0.3, th.full((2,), -0.5))
    n_logits = (
        int(space.n)
        if isinstance(space, spaces.Discrete)
        else int(np.sum(space.nvec))
        if isinstance(space, spaces.MultiDiscrete)
        else 3
    )
    return dist.proba_distribution(th.randn(n_states, n_logits))


@pytest.mark.parametrize(("q", "q_kwargs"), QS, ids=[name for name, _ in QS])
@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_samples_have_sb3_shapes_and_consistent_log_densities(space_name: str, q: Any, q_kwargs: dict) -> None:
    space = SPACES[space_name]
    pi_old = _pi_old(space, 5)
    sampler = make_q(q, q_kwargs, space).build(pi_old, th.zeros(5, 1))
    actions = sampler.sample(7)
    assert actions.shape == (5, 7, *space.shape)
    log_q = sampler.log_prob(actions)
    assert log_q.shape == (5, 7) and bool(th.isfinite(log_q).all())
    # actions lie in the space (a Gaussian pi_old may step out of a Box; the env clips)
    if not isinstance(space, spaces.Box):
        flat = actions.reshape(-1, *space.shape).numpy()
        assert all(space.contains(a.astype(space.dtype)) for a in flat)
    # for finite spaces, q sums to one over the whole space
    if isinstance(space, spaces.Discrete):
        every = th.arange(4).expand(5, 4)
        assert th.allclose(sampler.log_prob(every).exp().sum(-1), th.ones(5), atol=1e-5)
    if q == "policy":
        # q = pi_old: the log-densities are pi_old's, as SB3 computes them
        expected = th.stack([pi_old.log_prob(actions[:, k]) for k in range(7)], dim=1)
        assert th.allclose(log_q, expected, atol=1e-5)


def test_uniform_and_mixture_densities_are_exact() -> None:
    space = SPACES["box"]
    pi_old = _pi_old(space, 3)
    uniform = make_q("uniform", None, space).build(pi_old, th.zeros(3, 1))
    inside = th.zeros(3, 1, 2)
    assert th.allclose(uniform.log_prob(inside), th.full((3, 1), -np.log(4.0)))
    mixture = make_q("mixture", {"eps": 0.25}, space).build(pi_old, th.zeros(3, 1))
    expected = th.log(0.75 * pi_old.log_prob(inside[:, 0]).exp() + 0.25 / 4.0)
    assert th.allclose(mixture.log_prob(inside)[:, 0], expected, atol=1e-6)
    outside = th.full((3, 1, 2), 1.5)  # outside the box: only pi_old's part is left
    assert th.allclose(mixture.log_prob(outside)[:, 0], th.log(0.75 * pi_old.log_prob(outside[:, 0]).exp()), atol=1e-5)


def test_scaled_widens_the_policy() -> None:
    space = SPACES["discrete"]
    pi_old = _pi_old(space, 200)
    scaled = make_q("scaled", {"temperature": 4.0}, space).build(pi_old, th.zeros(200, 1))
    entropy_old = pi_old.entropy().mean()
    probs = scaled.log_prob(th.arange(4).expand(200, 4)).exp()
    entropy_scaled = -(probs * probs.log()).sum(-1).mean()
    assert entropy_scaled > entropy_old


@pytest.mark.parametrize(
    ("q", "q_kwargs", "space", "match"),
    [
        ("boltzmann", None, None, "q must be one of"),
        ("scaled", {"std_scale": 1.0}, None, "std_scale"),
        ("scaled", {"temperature": 0.5}, None, "temperature"),
        ("mixture", {"eps": 0.0}, None, "eps"),
        ("mixture", {"eps": 1.5}, None, "eps"),
        ("uniform", {"eps": 0.1}, None, "does not take"),
        ("policy", {"max_weight": 1.0}, None, "max_weight"),
        ("uniform", None, spaces.Box(-np.inf, np.inf, (1,)), "finite bounds"),
        ("uniform", None, spaces.Tuple([spaces.Discrete(2)]), "supports"),
    ],
)
def test_validation_names_the_argument(q: Any, q_kwargs: Any, space: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_q(q, q_kwargs, "vine", space)


def test_single_path_only_takes_the_policy() -> None:
    validate_q("policy", {"max_weight": 5.0}, "single_path")
    with pytest.raises(ValueError, match="needs sampling='vine'"):
        validate_q("uniform", None, "single_path")
    with pytest.raises(ValueError, match="needs sampling='vine'"):
        validate_q(lambda pi, obs: pi.distribution, None, "single_path")
