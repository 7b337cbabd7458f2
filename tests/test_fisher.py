"""
The analytic Fisher-vector product F = J^T M J equals the Hessian of the mean KL, on random small
SB3 policies for every action distribution TRPOPlus supports, and M is the exact Hessian of the
KL in the distribution's own parameters.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch as th
from conftest import actor_parameters, build_policy
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    make_proba_distribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from sb3_trpo_plus.distributions import FisherMetric, detached, distribution_metric, distribution_parameters
from sb3_trpo_plus.fisher import distribution_parameters_function
from sb3_trpo_plus.surrogate import mean_kl
from sb3_trpo_plus.trust_region import (
    analytic_fisher_vector_product,
    kl_hessian_vector_product,
    linearized_fisher_vector_product,
)

F64 = th.float64


class LinearExtractor(BaseFeaturesExtractor):
    """A learned feature layer shared by the actor and the critic."""

    def __init__(self, observation_space: spaces.Box) -> None:
        super().__init__(observation_space, features_dim=6)
        self.linear = th.nn.Linear(observation_space.shape[0], 6)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return th.tanh(self.linear(observations))


class LearnFeaturesPolicy(ActorCriticPolicy):
    """gSDE whose exploration features are learned: the std then depends on the policy network too."""

    def _build(self, lr_schedule: Any) -> None:
        assert self.dist_kwargs is not None
        self.action_dist = make_proba_distribution(
            self.action_space, use_sde=True, dist_kwargs={**self.dist_kwargs, "learn_features": True}
        )
        super()._build(lr_schedule)


CASES: dict[str, tuple[spaces.Space, dict[str, Any]]] = {
    "gaussian": (spaces.Box(-1, 1, (3,)), {}),
    "gaussian_1d": (spaces.Box(-1, 1, (1,)), {}),
    "gsde": (spaces.Box(-1, 1, (2,)), {"use_sde": True}),
    "gsde_full_std_expln": (spaces.Box(-1, 1, (2,)), {"use_sde": True, "full_std": True, "use_expln": True}),
    "gsde_diagonal_std": (spaces.Box(-1, 1, (2,)), {"use_sde": True, "full_std": False}),
    "gsde_learn_features": (spaces.Box(-1, 1, (2,)), {"use_sde": True, "policy_class": LearnFeaturesPolicy}),
    "categorical": (spaces.Discrete(4), {}),
    "multi_categorical": (spaces.MultiDiscrete([3, 2, 4]), {}),
    "bernoulli": (spaces.MultiBinary(3), {}),
    "categorical_shared_extractor": (spaces.Discrete(3), {"features_extractor_class": "linear", "net_arch": [8]}),
    "gaussian_shared_extractor": (spaces.Box(-1, 1, (2,)), {"features_extractor_class": "linear", "net_arch": [8]}),
}


def _products(name: str, seed: int, n: int = 32, damping: float = 0.0):  # type: ignore[no-untyped-def]
    action_space, kwargs = CASES[name]
    kwargs = dict(kwargs)
    net_arch = kwargs.pop("net_arch", [16, 16])
    if kwargs.get("features_extractor_class") == "linear":
        kwargs["features_extractor_class"] = LinearExtractor
    policy = build_policy(action_space, seed, net_arch=net_arch, **kwargs)
    if kwargs.get("use_sde"):
        policy.reset_noise(n)
    obs = 2.0 * th.randn(n, 5, generator=th.Generator().manual_seed(seed))
    params = actor_parameters(policy, obs)
    distribution = policy.get_distribution(obs)
    old = detached(distribution)
    analytic = analytic_fisher_vector_product(
        distribution_parameters(distribution), distribution_metric(old), params, damping, n
    )
    hessian = kl_hessian_vector_product(mean_kl(old, policy.get_distribution(obs)), params, damping)
    return policy, params, analytic, hessian


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_analytic_fisher_equals_kl_hessian(name: str, seed: int) -> None:
    _, params, analytic, hessian = _products(name, seed)
    n_params = sum(p.numel() for p in params)
    for trial in range(3):
        vector = th.randn(n_params, generator=th.Generator().manual_seed(100 + trial))
        expected = hessian(vector)
        got = analytic(vector)
        # float32 (SB3 casts observations to float32): equal up to rounding
        assert float(th.linalg.norm(got - expected)) <= 2e-5 * float(th.linalg.norm(expected)), name
        # a Fisher matrix is positive semi-definite
        assert float(vector @ got) >= 0
    # and symmetric: u . F v == v . F u
    u, v = (
        th.randn(n_params, generator=th.Generator().manual_seed(7)),
        th.randn(n_params, generator=th.Generator().manual_seed(8)),
    )
    assert math.isclose(float(u @ analytic(v)), float(v @ analytic(u)), rel_tol=1e-4, abs_tol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_mode_fisher_equals_kl_hessian(name: str) -> None:
    # J v by forward mode (taken on convolutional policies) is the same product, on every family
    policy, params, _, hessian = _products(name, 0)
    obs = 2.0 * th.randn(32, 5, generator=th.Generator().manual_seed(0))  # _products' states
    distribution = policy.get_distribution(obs)
    outputs, metric = distribution_parameters(distribution), distribution_metric(detached(distribution))
    outputs_of = distribution_parameters_function(policy, params, obs)
    forward = linearized_fisher_vector_product(outputs, outputs_of, metric, params, 0.0, 32)
    vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(100))
    expected = hessian(vector)
    assert float(th.linalg.norm(forward(vector) - expected)) <= 2e-5 * float(th.linalg.norm(expected)), name


def test_learn_features_makes_the_std_depend_on_the_policy_network() -> None:
    # the learn_features case above is only meaningful if the std really depends on the shared features
    policy = build_policy(spaces.Box(-1, 1, (2,)), 0, use_sde=True, policy_class=LearnFeaturesPolicy)
    policy.reset_noise(4)
    obs = th.randn(4, 5)
    std = distribution_parameters(policy.get_distribution(obs))[1]
    first_layer = policy.mlp_extractor.policy_net[0].weight
    (grad,) = th.autograd.grad(std.sum(), [first_layer], allow_unused=True)
    assert grad is not None and float(grad.abs().sum()) > 0


@pytest.mark.parametrize("name", ["gaussian", "categorical", "bernoulli"])
def test_damping_adds_c_times_v(name: str) -> None:
    _, params, plain, plain_hessian = _products(name, 3, damping=0.0)
    _, params, damped, damped_hessian = _products(name, 3, damping=0.5)
    vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(0))
    assert th.allclose(damped(vector), plain(vector) + 0.5 * vector, rtol=1e-5, atol=1e-6)
    assert th.allclose(damped_hessian(vector), plain_hessian(vector) + 0.5 * vector, rtol=1e-5, atol=1e-6)


def test_fvp_on_a_subset_uses_the_metric_of_that_subset() -> None:
    policy = build_policy(spaces.Discrete(4), 5)
    obs = th.randn(20, 5, generator=th.Generator().manual_seed(5))
    index = th.tensor([1, 4, 7, 8, 15])
    params = actor_parameters(policy, obs)
    full_metric = distribution_metric(detached(policy.get_distribution(obs)))
    rows = FisherMetric([factor[index] for factor in full_metric.factors], full_metric.kind)  # per-sample rows
    sub_dist = policy.get_distribution(obs[index])
    from_subset = analytic_fisher_vector_product(distribution_parameters(sub_dist), rows, params, 0.0, 5)
    sub_dist = policy.get_distribution(obs[index])
    direct = analytic_fisher_vector_product(
        distribution_parameters(sub_dist), distribution_metric(detached(sub_dist)), params, 0.0, 5
    )
    vector = th.randn(sum(p.numel() for p in params))
    assert th.allclose(from_subset(vector), direct(vector), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- closed forms


def _metric_matrix(distribution: Distribution, shapes: list[tuple[int, ...]]) -> th.Tensor:
    """M of ``distribution_metric`` as a dense matrix over the flattened distribution parameters."""
    metric = distribution_metric(distribution)
    sizes = [math.prod(s) for s in shapes]
    columns = []
    for basis in th.eye(sum(sizes), dtype=F64):
        tangents = [piece.reshape(shape) for piece, shape in zip(basis.split(sizes), shapes, strict=True)]
        columns.append(th.cat([m.reshape(-1) for m in metric(tangents)]))
    return th.stack(columns, dim=1)


def _kl_hessian(make: Any, old: Distribution, inputs: tuple[th.Tensor, ...]) -> th.Tensor:
    """Hessian of mean_kl(old, make(*inputs)) in the flattened inputs, at the inputs."""
    hessian = th.autograd.functional.hessian(lambda *x: mean_kl(old, make(*x)), inputs)
    sizes = [x.numel() for x in inputs]
    return th.cat(
        [th.cat([hessian[i][j].reshape(sizes[i], sizes[j]) for j in range(len(inputs))], 1) for i in range(len(inputs))]
    )


def test_gaussian_kl_hessian_is_the_closed_form() -> None:
    n, d = 3, 2
    gen = th.Generator().manual_seed(0)
    mean = th.randn(n, d, generator=gen, dtype=F64)
    std = th.exp(0.5 * th.randn(n, d, generator=gen, dtype=F64))

    def make(mu: th.Tensor, sigma: th.Tensor) -> Distribution:
        return DiagGaussianDistribution(d).proba_distribution(mu, th.log(sigma))

    old = make(mean, std)
    hessian = _kl_hessian(make, old, (mean, std))
    # per state and action dimension: 1 / sigma^2 for the mean, 2 / sigma^2 for the std, no cross terms;
    # divided by N * d, as the KL is averaged over states and action dimensions (sb3-contrib's measure)
    expected = th.diag(th.cat([(1 / std**2).reshape(-1), (2 / std**2).reshape(-1)])) / (n * d)
    assert th.allclose(hessian, expected, rtol=1e-10, atol=1e-12)
    assert th.allclose(_metric_matrix(old, [(n, d), (n, d)]) / n, expected, rtol=1e-12, atol=0)


def test_categorical_kl_hessian_is_the_softmax_fisher() -> None:
    n, k = 3, 4
    logits = th.randn(n, k, generator=th.Generator().manual_seed(1), dtype=F64)

    def make(z: th.Tensor) -> Distribution:
        return CategoricalDistribution(k).proba_distribution(z)

    old = make(logits)
    probs = th.softmax(logits, -1)
    expected = th.block_diag(*[th.diag(p) - th.outer(p, p) for p in probs]) / n
    assert th.allclose(_kl_hessian(make, old, (logits,)), expected, rtol=1e-10, atol=1e-12)
    assert th.allclose(_metric_matrix(old, [(n, k)]) / n, expected, rtol=1e-12, atol=1e-15)


def test_multi_categorical_kl_hessian_is_block_diagonal() -> None:
    n, dims = 2, [3, 2]
    gen = th.Generator().manual_seed(2)
    logits = th.randn(n, sum(dims), generator=gen, dtype=F64)

    def make(z: th.Tensor) -> Distribution:
        return MultiCategoricalDistribution(dims).proba_distribution(z)

    old = make(logits)
    # the KLs of the components add up: one softmax Fisher block per component and state
    hessian = _kl_hessian(make, old, (logits,))
    blocks = []
    for row in logits:
        for part in row.split(dims):
            p = th.softmax(part, -1)
            blocks.append(th.diag(p) - th.outer(p, p))
    expected = th.block_diag(*blocks) / n
    assert th.allclose(hessian, expected, rtol=1e-10, atol=1e-12)
    # distribution_parameters gives the components' logits: (n, 3) and (n, 2); reorder to state-major
    metric = _metric_matrix(old, [(n, 3), (n, 2)]) / n
    order = th.tensor([0, 1, 2, 6, 7, 3, 4, 5, 8, 9])
    assert th.allclose(metric[order][:, order], expected, rtol=1e-12, atol=1e-15)


def test_bernoulli_kl_hessian_is_the_closed_form() -> None:
    n, d = 3, 4
    logits = th.randn(n, d, generator=th.Generator().manual_seed(3), dtype=F64)

    def make(z: th.Tensor) -> Distribution:
        return BernoulliDistribution(d).proba_distribution(z)

    old = make(logits)
    p = th.sigmoid(logits)
    expected = th.diag((p * (1 - p)).reshape(-1)) / (n * d)
    assert th.allclose(_kl_hessian(make, old, (logits,)), expected, rtol=1e-10, atol=1e-12)
    assert th.allclose(_metric_matrix(old, [(n, d)]) / n, expected, rtol=1e-12, atol=0)


def test_mean_kl_of_gaussians_matches_the_closed_form() -> None:
    gen = th.Generator().manual_seed(4)
    mu0, mu1 = th.randn(10, 2, generator=gen, dtype=F64), th.randn(10, 2, generator=gen, dtype=F64)
    s0, s1 = th.exp(th.randn(10, 2, generator=gen, dtype=F64)), th.exp(th.randn(10, 2, generator=gen, dtype=F64))
    old = DiagGaussianDistribution(2).proba_distribution(mu0, th.log(s0))
    new = DiagGaussianDistribution(2).proba_distribution(mu1, th.log(s1))
    per_dimension = th.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5
    # KL(old || new), averaged over states and action dimensions (sb3-contrib's measure): for a
    # d-dimensional action that is the KL of the joint Gaussian divided by d
    assert math.isclose(float(mean_kl(old, new)), float(per_dimension.mean()), rel_tol=1e-12)
    assert math.isclose(2 * float(mean_kl(old, new)), float(per_dimension.sum(-1).mean()), rel_tol=1e-12)
    assert float(mean_kl(old, old)) == 0.0
    # the direction matters: KL(old || new) is not KL(new || old)
    assert not math.isclose(float(mean_kl(old, new)), float(mean_kl(new, old)), rel_tol=1e-3)
