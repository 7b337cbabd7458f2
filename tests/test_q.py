"""Sampling distributions q: shapes, log-densities and validation, on every action space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
    make_proba_distribution,
)

from sb3_trpo_plus.distributions import enumerate_actions
from sb3_trpo_plus.q import Q_REGISTRY, PiOld, Q, SamplingDistribution, register_q
from sb3_trpo_plus.settings import build_q
from sb3_trpo_plus.surrogate import effective_sample_size, importance_weights


def bound_q(q: Any, q_kwargs: Any, space: spaces.Space) -> SamplingDistribution:
    """The q of the arguments, built by the one builder and bound to ``space``."""
    return SamplingDistribution(build_q(q, q_kwargs, action_space=space), space)

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
    sampler = bound_q(q, q_kwargs, space).build(pi_old, th.zeros(5, 1))
    actions = sampler.sample(7)
    assert actions.shape == (5, 7, *(space.shape or ()))
    log_q = sampler.log_prob(actions)
    assert log_q.shape == (5, 7) and bool(th.isfinite(log_q).all())
    # actions lie in the space (a Gaussian pi_old may step out of a Box; the env clips)
    if not isinstance(space, spaces.Box):
        flat = actions.reshape(-1, *(space.shape or ())).numpy()
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
    uniform = bound_q("uniform", None, space).build(pi_old, th.zeros(3, 1))
    inside = th.zeros(3, 1, 2)
    assert th.allclose(uniform.log_prob(inside), th.full((3, 1), -np.log(4.0)))
    mixture = bound_q("mixture", {"eps": 0.25}, space).build(pi_old, th.zeros(3, 1))
    expected = th.log(0.75 * pi_old.log_prob(inside[:, 0]).exp() + 0.25 / 4.0)
    assert th.allclose(mixture.log_prob(inside)[:, 0], expected, atol=1e-6)
    outside = th.full((3, 1, 2), 1.5)  # outside the box: only pi_old's part is left
    assert th.allclose(mixture.log_prob(outside)[:, 0], th.log(0.75 * pi_old.log_prob(outside[:, 0]).exp()), atol=1e-5)


def test_scaled_widens_the_policy() -> None:
    space = SPACES["discrete"]
    pi_old = _pi_old(space, 200)
    scaled = bound_q("scaled", {"temperature": 4.0}, space).build(pi_old, th.zeros(200, 1))
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
        build_q(q, q_kwargs, "vine", space)


def test_single_path_only_takes_the_policy() -> None:
    build_q("policy", {"max_weight": 5.0}, "single_path")
    with pytest.raises(ValueError, match="needs sampling='vine'"):
        build_q("uniform", None, "single_path")
    with pytest.raises(ValueError, match="needs sampling='vine'"):
        build_q(lambda pi, obs: pi.distribution, None, "single_path")


# --------------------------------------------------------------------------- densities and samples

FINITE = ("discrete", "multidiscrete", "multibinary")


def _every_action(space_name: str, n_states: int) -> th.Tensor:
    """Every action of a finite space at every state, (n_states, M, *a)."""
    actions = enumerate_actions(SPACES[space_name])
    return actions.unsqueeze(0).expand(n_states, *actions.shape)


@pytest.mark.parametrize("space_name", FINITE)
def test_finite_log_densities_match_torch_distributions(space_name: str) -> None:
    """uniform, scaled and mixture densities on every action, against torch's distributions built by hand."""
    space = SPACES[space_name]
    pi_old = _pi_old(space, 4)
    every = _every_action(space_name, 4)
    n_actions = every.shape[1]
    log_pi = th.stack([pi_old.log_prob(every[:, m]) for m in range(n_actions)], dim=1)
    uniform = bound_q("uniform", None, space).build(pi_old, th.zeros(4, 1)).log_prob(every)
    assert th.allclose(uniform, th.full((4, n_actions), -np.log(n_actions)), atol=1e-6)
    mixture = bound_q("mixture", {"eps": 0.4}, space).build(pi_old, th.zeros(4, 1)).log_prob(every)
    assert th.allclose(mixture.exp(), 0.6 * log_pi.exp() + 0.4 / n_actions, atol=1e-6)
    scaled = bound_q("scaled", {"temperature": 3.0}, space).build(pi_old, th.zeros(4, 1)).log_prob(every)
    torch_dist = pi_old.distribution
    if isinstance(space, spaces.Discrete):
        expected = th.distributions.Categorical(logits=torch_dist.logits / 3.0).log_prob(every.T).T  # type: ignore[union-attr]
    elif isinstance(space, spaces.MultiDiscrete):
        expected = sum(
            th.distributions.Categorical(logits=part.logits[:, None] / 3.0).log_prob(every[..., i])
            for i, part in enumerate(torch_dist)  # type: ignore[arg-type]
        )
    else:
        bernoulli = th.distributions.Bernoulli(logits=torch_dist.logits[:, None] / 3.0)  # type: ignore[union-attr]
        expected = bernoulli.log_prob(every).sum(-1)
    assert th.allclose(scaled, expected, atol=1e-6)  # type: ignore[arg-type]
    for log_q in (uniform, mixture, scaled):  # each is a distribution over the whole space
        assert th.allclose(log_q.exp().sum(-1), th.ones(4), atol=1e-5)


def test_box_log_densities_match_torch_distributions() -> None:
    space = SPACES["box"]
    pi_old = _pi_old(space, 3)
    actions = th.randn(3, 5, 2)
    scaled = bound_q("scaled", {"std_scale": 1.7}, space).build(pi_old, th.zeros(3, 1)).log_prob(actions)
    normal = pi_old.distribution
    expected = th.distributions.Normal(normal.loc[:, None], normal.scale[:, None] * 1.7).log_prob(actions).sum(-1)  # type: ignore[union-attr]
    assert th.allclose(scaled, expected, atol=1e-5)
    policy = bound_q("policy", None, space).build(pi_old, th.zeros(3, 1)).log_prob(actions)
    expected_policy = th.stack([pi_old.log_prob(actions[:, k]) for k in range(5)], dim=1)
    assert th.allclose(policy, expected_policy, atol=1e-5)


@pytest.mark.parametrize(("q", "q_kwargs"), QS, ids=[name for name, _ in QS])
@pytest.mark.parametrize("space_name", FINITE)
def test_finite_samples_follow_the_density(space_name: str, q: Any, q_kwargs: dict) -> None:
    """Frequencies of every action among 20,000 samples per state agree with exp(log_prob) within 5 standard errors."""
    space = SPACES[space_name]
    pi_old = _pi_old(space, 3)
    sampler = bound_q(q, q_kwargs, space).build(pi_old, th.zeros(3, 1))
    every = _every_action(space_name, 3)
    probs = sampler.log_prob(every).exp()
    th.manual_seed(11)
    n = 20_000
    actions = sampler.sample(n)
    if actions.dim() == 2:
        counts = th.nn.functional.one_hot(actions, every.shape[1]).sum(1)
    else:
        counts = (actions.unsqueeze(2) == every.unsqueeze(1).to(actions.dtype)).all(-1).sum(1)
    assert bool((counts.sum(-1) == n).all())  # every sample is an action of the space
    stderr = (probs * (1 - probs) / n).sqrt()
    assert bool(((counts / n - probs).abs() <= 5 * stderr + 1e-6).all())


@pytest.mark.parametrize(
    ("q", "q_kwargs"), [*QS, ("scaled", {"std_scale": 3.0})], ids=["policy", "uniform", "scaled", "mixture", "scaled3"]
)
def test_box_samples_follow_the_density(q: Any, q_kwargs: dict) -> None:
    """1-D Box: the share of samples in each bin agrees with the density integrated over the bin (5 standard errors)."""
    space = spaces.Box(-1.0, 1.0, (1,))
    pi_old = make_proba_distribution(space).proba_distribution(th.tensor([[0.3], [-0.5]]), th.tensor([-0.7]))
    sampler = bound_q(q, q_kwargs, space).build(pi_old, th.zeros(2, 1))
    edges = th.linspace(-4.0, 4.0, 17, dtype=th.float64)
    # midpoint rule on cells of width 1/2048 (exact in binary): every cell lies inside one bin,
    # and the uniform part's jumps at +-1 fall on cell boundaries
    spacing = 1.0 / 2048
    midpoints = th.arange(-12.0 + spacing / 2, 12.0, spacing, dtype=th.float64)
    density = sampler.log_prob(midpoints.float()[None, :, None].expand(2, -1, 1)).double().exp()
    probs = th.zeros(2, len(edges) + 1, dtype=th.float64).index_add_(1, th.bucketize(midpoints, edges), density * spacing)
    assert th.allclose(probs.sum(-1), th.ones(2, dtype=th.float64), atol=1e-6)
    th.manual_seed(12)
    n = 20_000
    actions = sampler.sample(n)[..., 0].double()
    counts = th.stack([th.bincount(th.bucketize(actions[i].contiguous(), edges), minlength=len(edges) + 1) for i in range(2)])
    stderr = (probs * (1 - probs) / n).sqrt()
    assert bool(((counts / n - probs).abs() <= 5 * stderr + 1e-6).all()), ((counts / n - probs) / stderr).tolist()


# --------------------------------------------------------------------------- support and weights


@pytest.mark.parametrize(("q", "q_kwargs"), QS, ids=[name for name, _ in QS])
@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_support_covers_pi_old(space_name: str, q: Any, q_kwargs: dict) -> None:
    """
    q > 0 wherever pi_old > 0 (what makes the estimators consistent): on every action of a finite
    space, and on pi_old's own samples for a Box (for "uniform", on those inside the box: it
    covers only the box, as documented).
    """
    space = SPACES[space_name]
    pi_old = _pi_old(space, 5)
    sampler = bound_q(q, q_kwargs, space).build(pi_old, th.zeros(5, 1))
    if isinstance(space, spaces.Box):
        th.manual_seed(13)
        actions = th.stack([pi_old.sample() for _ in range(200)], dim=1)  # (5, 200, 2)
        covered = th.isfinite(sampler.log_prob(actions))
        inside = ((actions >= -1.0) & (actions <= 1.0)).all(-1)
        assert bool(covered[inside].all())
        assert bool(covered.all()) or q == "uniform"
    else:
        every = _every_action(space_name, 5)
        assert bool(th.isfinite(sampler.log_prob(every)).all())


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_weights_at_theta_old_with_q_policy_are_one(space_name: str) -> None:
    """q = pi_old and theta = theta_old: every importance weight is 1 and the effective sample size is 1."""
    space = SPACES[space_name]
    pi_old = _pi_old(space, 6)
    sampler = bound_q("policy", None, space).build(pi_old, th.zeros(6, 1))
    th.manual_seed(14)
    actions = sampler.sample(9)
    log_pi = th.stack([pi_old.log_prob(actions[:, k]) for k in range(9)], dim=1)
    weights = importance_weights(log_pi, sampler.log_prob(actions))
    assert th.allclose(weights, th.ones(6, 9), atol=1e-5)
    assert effective_sample_size(weights) == pytest.approx(1.0, abs=1e-6)
    # another q gives unequal weights on its own samples, an ESS below one
    uniform = bound_q("uniform", None, space).build(pi_old, th.zeros(6, 1))
    uniform_actions = uniform.sample(9)
    log_pi_uniform = th.stack([pi_old.log_prob(uniform_actions[:, k]) for k in range(9)], dim=1)
    assert effective_sample_size(importance_weights(log_pi_uniform, uniform.log_prob(uniform_actions))) < 1.0


# --------------------------------------------------------------------------- the callable protocol


def _box_pi_old() -> Any:
    return _pi_old(SPACES["box"], 5)


def test_callable_q_follows_the_protocol() -> None:
    """A callable returning Independent(Normal) on the states' batch: samples and densities as documented."""

    def wide(pi_old: Any, observations: th.Tensor) -> th.distributions.Distribution:
        return th.distributions.Independent(th.distributions.Normal(pi_old.distribution.loc, 0.5), 1)

    pi_old = _box_pi_old()
    seen: list[th.Tensor] = []

    def recording(pi: Any, observations: th.Tensor) -> th.distributions.Distribution:
        seen.append(observations)
        return wide(pi, observations)

    observations = th.randn(5, 3)
    sampler = bound_q(recording, {"max_weight": 10.0}, SPACES["box"]).build(pi_old, observations)
    assert seen[0] is observations
    actions = sampler.sample(4)
    assert actions.shape == (5, 4, 2) and actions.dtype == th.float32
    expected = th.distributions.Normal(pi_old.distribution.loc[:, None], 0.5).log_prob(actions).sum(-1)
    assert th.allclose(sampler.log_prob(actions), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("user_q", "error", "match"),
    [
        (lambda pi_old: pi_old.distribution, ValueError, "two positional arguments"),
        (lambda pi_old, obs, extra: pi_old.distribution, ValueError, "two positional arguments"),
        (lambda pi_old, obs: th.zeros(3), ValueError, "must return a torch.distributions.Distribution"),
        # no Independent: log_prob is per action dimension, not summed
        (lambda pi_old, obs: th.distributions.Normal(pi_old.distribution.loc, 1.0), ValueError, "summed over action"),
        # batch of one state instead of N
        (
            lambda pi_old, obs: th.distributions.Independent(th.distributions.Normal(th.zeros(1, 2), 1.0), 1),
            ValueError,
            "expected",
        ),
    ],
)
def test_callable_q_protocol_errors(user_q: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        sampler = bound_q(user_q, None, SPACES["box"]).build(_box_pi_old(), th.zeros(5, 1))
        sampler.log_prob(sampler.sample(3))


def test_callable_signature_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="q must be one of"):
        build_q(3, None, "vine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(pi_old, observations\)"):
        build_q(lambda: None, None, "vine")
    build_q(lambda *args: None, None, "vine")  # variadic callables take two arguments


@pytest.mark.parametrize(
    ("q", "q_kwargs", "match"),
    [
        ("mixture", {"eps": True}, "eps"),
        ("scaled", {"std_scale": True}, "std_scale"),
        ("scaled", {"temperature": float("inf")}, "temperature"),
        ("mixture", {"eps": float("nan")}, "eps"),
        ("policy", {"max_weight": "5"}, "max_weight"),
        ("policy", {"std_scale": 2.0}, "does not take"),
    ],
)
def test_numbers_are_checked(q: str, q_kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bound_q(q, q_kwargs, SPACES["box"])


def test_squashed_gaussian_policies_are_refused() -> None:
    space = SPACES["box"]
    squashed = SquashedDiagGaussianDistribution(2).proba_distribution(th.zeros(3, 2), th.zeros(2))
    with pytest.raises(TypeError, match="squash"):
        bound_q("policy", None, space).build(squashed, th.zeros(3, 1))
    gsde = StateDependentNoiseDistribution(2, squash_output=True)
    gsde.sample_weights(th.zeros(2, 2))
    with pytest.raises(TypeError, match="squash"):
        bound_q("policy", None, space).build(
            gsde.proba_distribution(th.zeros(3, 2), th.zeros(2, 2), th.ones(3, 2)), th.zeros(3, 1)
        )


# --------------------------------------------------------------------------- enumerate_actions


def test_enumerate_actions_lists_every_action_in_sb3_format() -> None:
    discrete = enumerate_actions(spaces.Discrete(3, start=5))
    assert discrete.tolist() == [0, 1, 2] and discrete.dtype == th.long  # SB3 indices start at 0
    multi = enumerate_actions(spaces.MultiDiscrete([2, 3]))
    assert multi.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]] and multi.dtype == th.long
    binary = enumerate_actions(spaces.MultiBinary(2))
    assert binary.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and binary.dtype == th.float32
    # in the format SB3's log_prob takes: pi sums to one over the enumeration
    for space_name in FINITE:
        space = SPACES[space_name]
        actions = enumerate_actions(space)
        pi_old = _pi_old(space, len(actions))
        total = sum(_pi_old(space, 1).log_prob(action[None]).exp() for action in actions)
        assert th.allclose(total, th.ones(1), atol=1e-6), space_name
        assert len(pi_old.log_prob(actions)) == len(actions)


@pytest.mark.parametrize(
    ("space", "match"),
    [
        (spaces.MultiBinary(7), "at most 64 actions"),
        (spaces.MultiBinary(60), "at most 64 actions"),  # 2^60: refused before allocating anything
        (spaces.MultiDiscrete([10_000, 10_000, 10_000]), "at most 64 actions"),
        (spaces.Box(-1.0, 1.0, (1,)), "needs a Discrete"),
        (spaces.MultiBinary((2, 2)), "needs a Discrete"),
    ],
)
def test_enumerate_actions_refuses_large_or_continuous_spaces(space: spaces.Space, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        enumerate_actions(space)
    assert len(enumerate_actions(spaces.MultiBinary(7), max_actions=128)) == 128


# --------------------------------------------------------------------------- a new q is one class


# BEGIN example q: the whole of a new q (name, setting, its check, the distribution)
@dataclass(frozen=True)
class WidenedQ(Q):
    """pi_old widened by one factor: a Gaussian's std times ``factor``, logits divided by it."""

    name: ClassVar[str] = "widened"
    factor: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.factor > 1:
            raise ValueError(f"q_kwargs['factor'] must be > 1, got {self.factor!r}")

    def distribution(self, pi_old: PiOld, observations: Any) -> Any:
        return pi_old.scaled(self.factor, self.factor)


# END example q


def test_a_registered_q_is_one_class_and_runs_a_vine_iteration() -> None:
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_trpo_plus import TRPOPlus

    register_q(WidenedQ)
    try:
        with pytest.raises(ValueError, match=r"q_kwargs\['factor'\]"):
            build_q("widened", {"factor": 0.5}, "vine")
        with pytest.raises(ValueError, match="does not take"):
            build_q("widened", {"eps": 0.1}, "vine")
        # the same distribution as q="scaled" with both settings at the factor
        space = SPACES["discrete"]
        widened = bound_q("widened", {"factor": 2.5}, space).build(_pi_old(space, 4), th.zeros(4, 1))
        scaled = bound_q("scaled", {"std_scale": 2.5, "temperature": 2.5}, space).build(_pi_old(space, 4), th.zeros(4, 1))
        actions = enumerate_actions(space).expand(4, -1)
        assert th.equal(widened.log_prob(actions), scaled.log_prob(actions))
        env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
        vine = {"n_states": 4, "n_actions": 3, "horizon": 5}
        model = TRPOPlus(
            "MlpPolicy", env, n_steps=32, batch_size=32, seed=0, sampling="vine", vine_kwargs=vine, q="widened",
            q_kwargs={"factor": 2.0, "max_weight": 5.0},
        )  # fmt: skip
        model.learn(32)
        assert model.max_weight == 5.0
        assert model._n_updates == 1 and model._vine is not None and model._vine.stats["rollout_set_size"] == 4
    finally:
        del Q_REGISTRY["widened"]
