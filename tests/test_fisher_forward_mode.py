"""
The analytic Fisher-vector product with J v by forward mode (issue 12): equal to an explicit dense
J^T M J / N on tiny policies (categorical and Gaussian heads, a CNN), used by ``fisher="analytic"``
on convolutional policies, side-effect free, and replaced by the double-backward product on
policies forward mode cannot serve (operations without a forward-mode derivative, hooks,
batch normalisation or dropout in training mode, any other random forward pass, control flow on
tensor values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import actor_parameters, build_policy, flat
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import ConstantSchedule
from torch import nn

from sb3_trpo_plus import fisher
from sb3_trpo_plus import step as step_module
from sb3_trpo_plus.distributions import detached, distribution_metric, distribution_parameters
from sb3_trpo_plus.fisher import (
    distribution_parameters_function,
    fisher_product,
    forward_mode_fisher_product,
    forward_mode_pays,
    forward_mode_supported,
    step_distribution,
)
from sb3_trpo_plus.observations import channels_last
from sb3_trpo_plus.settings import StepSettings
from sb3_trpo_plus.step import take_step
from sb3_trpo_plus.surrogate import importance_sampled_surrogate
from sb3_trpo_plus.trust_region import analytic_fisher_vector_product, linearized_fisher_vector_product

# the smallest image SB3's NatureCNN takes; two channels, so that channels_last is another layout
IMAGE = spaces.Box(0, 255, (2, 36, 36), np.uint8)


def _dense_jacobian(outputs: Sequence[th.Tensor], params: Sequence[nn.Parameter]) -> th.Tensor:
    """J, one row per entry of the flattened outputs, by one backward pass per row."""
    flat = th.cat([out.reshape(-1) for out in outputs])
    rows = []
    for entry in flat:
        grads = th.autograd.grad(entry, list(params), retain_graph=True, allow_unused=True)
        rows.append(th.cat([(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]))
    return th.stack(rows)


def _dense_metric(distribution: Any, outputs: Sequence[th.Tensor]) -> th.Tensor:
    """M over the flattened outputs, written out from the closed forms (not from FisherMetric)."""
    inner = distribution.distribution
    if isinstance(inner, th.distributions.Categorical):
        probs = inner.probs.detach()
        return th.block_diag(*[th.diag(p) - th.outer(p, p) for p in probs])
    std = inner.scale.detach()
    d = std.shape[-1]
    mean_block = th.diag((1.0 / std**2).reshape(-1)) / d
    return th.block_diag(mean_block, 2.0 * mean_block)  # outputs are (mean, std), each flattened row-major


def _dense_product(policy: ActorCriticPolicy, params: list[nn.Parameter], obs: th.Tensor) -> Callable[[th.Tensor], th.Tensor]:
    """v -> J^T M J v / N with J and M as dense matrices."""
    distribution = policy.get_distribution(obs)
    outputs = distribution_parameters(distribution)
    jacobian = _dense_jacobian(outputs, params)
    metric = _dense_metric(distribution, outputs)
    n = len(outputs[0])
    return lambda v: jacobian.T @ (metric @ (jacobian @ v)) / n


def _forward_product(policy: ActorCriticPolicy, params: list[nn.Parameter], obs: Any, damping: float = 0.0):  # type: ignore[no-untyped-def]
    distribution = policy.get_distribution(obs)
    outputs, metric = distribution_parameters(distribution), distribution_metric(detached(distribution))
    outputs_of = distribution_parameters_function(policy, params, obs)
    return linearized_fisher_vector_product(outputs, outputs_of, metric, params, damping, len(outputs[0]))


def _cnn_policy(seed: int, policy_class: type[ActorCriticPolicy] = ActorCriticCnnPolicy, **kwargs: Any) -> ActorCriticPolicy:
    th.manual_seed(seed)
    kwargs = {"features_extractor_kwargs": {"features_dim": 8}, "net_arch": [8], **kwargs}
    policy = policy_class(IMAGE, spaces.Discrete(3), ConstantSchedule(1e-3), **kwargs)
    with th.no_grad():  # away from the near-uniform initial head
        for param in policy.parameters():
            param.add_(0.1 * param.abs().mean() * th.randn_like(param))
    return policy


def _images(n: int, seed: int) -> th.Tensor:
    return th.randint(0, 256, (n, *IMAGE.shape), generator=th.Generator().manual_seed(seed), dtype=th.uint8).float()


# ----------------------------------------------------------------------------- dense J^T M J


@pytest.mark.parametrize("action_space", [spaces.Discrete(4), spaces.Box(-1, 1, (3,))], ids=["categorical", "gaussian"])
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_mode_product_is_the_dense_jtmj_on_a_tiny_mlp(action_space: spaces.Space, seed: int) -> None:
    policy = build_policy(action_space, seed, net_arch=[6, 5])
    obs = 2.0 * th.randn(7, 5, generator=th.Generator().manual_seed(seed))
    params = actor_parameters(policy, obs)
    dense = _dense_product(policy, params, obs)
    product = _forward_product(policy, params, obs)
    n_params = sum(p.numel() for p in params)
    fisher = th.stack([product(e) for e in th.eye(n_params)], dim=1)
    expected = th.stack([dense(e) for e in th.eye(n_params)], dim=1)
    # float32 (SB3 casts observations to float32): equal up to rounding, and symmetric
    scale = float(th.linalg.norm(expected))
    assert float(th.linalg.norm(fisher - expected)) <= 1e-5 * scale
    assert float(th.linalg.norm(fisher - fisher.T)) <= 1e-6 * scale
    # the same matrix as the double-backward product
    outputs = distribution_parameters(policy.get_distribution(obs))
    metric = distribution_metric(detached(policy.get_distribution(obs)))
    double_backward = analytic_fisher_vector_product(outputs, metric, params, 0.0, 7)
    vector = th.randn(n_params, generator=th.Generator().manual_seed(3))
    reference = double_backward(vector)
    assert float(th.linalg.norm(product(vector) - reference)) <= 1e-5 * float(th.linalg.norm(reference))


@pytest.mark.parametrize("share_features_extractor", [True, False])
def test_forward_mode_product_is_the_dense_jtmj_on_a_cnn(share_features_extractor: bool) -> None:
    policy = _cnn_policy(0, share_features_extractor=share_features_extractor)
    obs = _images(4, 0)
    params = actor_parameters(policy, obs)
    dense = _dense_product(policy, params, obs)
    before = [(p, p.detach().clone()) for p in policy.parameters()]
    images = channels_last(obs)  # as the trust-region step lays them out
    distribution = policy.get_distribution(images)
    outputs, metric = distribution_parameters(distribution), distribution_metric(detached(distribution))
    product = forward_mode_fisher_product(policy, params, images, outputs, metric, 0.0)
    assert product is not None
    for trial in range(2):
        vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(trial))
        expected = dense(vector)
        got = product(vector)
        # float32: equal up to rounding
        assert float(th.linalg.norm(got - expected)) <= 1e-5 * float(th.linalg.norm(expected))
    # the policy keeps its parameters, the same objects with the same values (a shared extractor
    # is registered under three names: functional_call must not leave substitutes behind)
    after = list(policy.parameters())
    assert len(after) == len(before)
    assert all(p is q and th.equal(p, value) for (p, value), q in zip(before, after, strict=True))
    assert all(p.requires_grad for p in after)


def test_damping_adds_c_times_v() -> None:
    policy = build_policy(spaces.Discrete(3), 4)
    obs = th.randn(10, 5, generator=th.Generator().manual_seed(4))
    params = actor_parameters(policy, obs)
    vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(5))
    plain = _forward_product(policy, params, obs)(vector)
    damped = _forward_product(policy, params, obs, damping=0.5)(vector)
    assert th.allclose(damped, plain + 0.5 * vector, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- when it is used


def _settings(fisher: str = "analytic") -> StepSettings:
    return StepSettings(0.01, 10, 0.1, 0.8, 10, fisher, 1.0)


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the products fisher_product builds, by kind."""
    calls = {"forward": 0, "double_backward": 0}
    for name, key in (("linearized_fisher_vector_product", "forward"), ("analytic_fisher_vector_product", "double_backward")):
        original = getattr(fisher, name)

        def counted(*args: Any, _original: Any = original, _key: str = key, **kwargs: Any) -> Any:
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(fisher, name, counted)
    return calls


def _product_via_fisher_product(policy: ActorCriticPolicy, obs: th.Tensor, settings: StepSettings):  # type: ignore[no-untyped-def]
    params = actor_parameters(policy, obs)
    distribution = policy.get_distribution(obs)
    return params, fisher_product(policy, params, obs, distribution, detached(distribution), settings)


def test_a_cnn_policy_takes_forward_mode_and_an_mlp_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch)
    cnn = _cnn_policy(1)
    obs = _images(6, 1)
    assert forward_mode_pays(cnn, actor_parameters(cnn, obs)) and forward_mode_supported(cnn)
    rng = th.random.get_rng_state()
    params, product = _product_via_fisher_product(cnn, obs, _settings())
    assert calls == {"forward": 1, "double_backward": 0}
    assert th.equal(rng, th.random.get_rng_state())  # no random number drawn (sb3-contrib's stream)
    # the double-backward product, for comparison, agrees to float32 rounding
    distribution = cnn.get_distribution(obs)
    outputs = distribution_parameters(distribution)
    reference = analytic_fisher_vector_product(outputs, distribution_metric(detached(distribution)), params, 0.1, 6)
    vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(0))
    expected = reference(vector)
    assert float(th.linalg.norm(product(vector) - expected)) <= 1e-5 * float(th.linalg.norm(expected))

    mlp = build_policy(spaces.Discrete(3), 1)
    assert not forward_mode_pays(mlp, actor_parameters(mlp, th.randn(4, 5)))
    _product_via_fisher_product(mlp, th.randn(4, 5), _settings())
    assert calls == {"forward": 1, "double_backward": 1}
    # fisher="kl_hessian" takes neither
    _product_via_fisher_product(cnn, obs, _settings("kl_hessian"))
    assert calls == {"forward": 1, "double_backward": 1}
    # on a share of the (channels_last) states too
    subsample = StepSettings(0.01, 10, 0.1, 0.8, 10, "analytic", 0.5)
    params, product = _product_via_fisher_product(cnn, channels_last(obs), subsample)
    assert calls == {"forward": 2, "double_backward": 1}
    assert bool(th.isfinite(product(vector)).all())


# ----------------------------------------------------------------------------- fallbacks


class _StepFunction(th.autograd.Function):
    """A ReLU with a backward formula only: forward mode cannot differentiate it."""

    @staticmethod
    def forward(ctx: Any, x: th.Tensor) -> th.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: th.Tensor) -> th.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x > 0)


class _Extractor(BaseFeaturesExtractor):
    """A convolution and a linear layer, with one of several kinds of middle."""

    def __init__(self, observation_space: spaces.Box, middle: str = "relu") -> None:
        super().__init__(observation_space, features_dim=8)
        self.conv = nn.Conv2d(observation_space.shape[0], 4, 8, stride=4)
        self.middle = middle
        self.norm = nn.BatchNorm2d(4) if middle == "batch_norm" else nn.Identity()
        self.dropout = nn.Dropout(0.5) if middle == "dropout" else nn.Identity()
        self.linear = nn.Linear(4 * 8 * 8, 8)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        x = self.conv(observations)
        if self.middle == "no_forward_mode":
            x = _StepFunction.apply(x)
        elif self.middle == "noise":
            x = th.relu(x + 0.01 * th.randn_like(x))
        elif self.middle == "branch":
            x = th.relu(x) if float(x.detach().sum()) > 0 else th.tanh(x)  # control flow on tensor values
        elif self.middle == "view":
            return th.tanh(self.linear(th.relu(x).view(len(x), -1)))  # .view() needs the contiguous layout
        else:
            x = th.relu(self.dropout(self.norm(x)))
        return th.tanh(self.linear(x.flatten(1)))


FALLBACKS = ["no_forward_mode", "hook", "batch_norm", "dropout", "noise", "branch"]


@pytest.mark.parametrize("middle", FALLBACKS)
def test_policies_forward_mode_cannot_serve_fall_back_to_the_double_backward_product(
    middle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = _cnn_policy(2, features_extractor_class=_Extractor, features_extractor_kwargs={"middle": middle})
    policy.set_training_mode(True)
    hook_calls = []
    if middle == "hook":
        policy.features_extractor.conv.register_forward_hook(lambda *args: hook_calls.append(1))
    obs = _images(5, 2)
    params = actor_parameters(policy, obs)
    rng = th.random.get_rng_state()
    distribution = policy.get_distribution(obs)
    if middle in ("noise", "dropout"):
        rng = th.random.get_rng_state()  # that forward pass draws; the product must not
    hook_calls.clear()
    norm_stats = [b.clone() for b in policy.buffers()]
    before = [p.detach().clone() for p in policy.parameters()]
    calls = _spy(monkeypatch)

    product = fisher_product(policy, params, obs, distribution, detached(distribution), _settings())

    assert calls["double_backward"] == 1, "fell back"
    assert calls["forward"] <= 2  # a supported-looking policy may have been tried (channels_last, then as given)
    assert th.equal(rng, th.random.get_rng_state()), "random numbers drawn or not restored"
    assert hook_calls == [], "a hook ran"
    assert all(th.equal(a, b) for a, b in zip(norm_stats, policy.buffers(), strict=True)), "running statistics moved"
    assert all(th.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    # and the product is the double-backward one on the distribution the step computed
    metric = distribution_metric(detached(distribution))
    reference = analytic_fisher_vector_product(distribution_parameters(distribution), metric, params, 0.1, 5)
    vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(1))
    assert th.equal(product(vector), reference(vector))


@pytest.mark.parametrize("middle", ["no_forward_mode", "noise", "branch"])
def test_forward_mode_refuses_what_it_cannot_linearise(middle: str) -> None:
    policy = _cnn_policy(3, features_extractor_class=_Extractor, features_extractor_kwargs={"middle": middle})
    obs = _images(3, 3)
    params = actor_parameters(policy, obs)
    assert forward_mode_pays(policy, params) and forward_mode_supported(policy)  # not visible from the modules
    distribution = policy.get_distribution(obs)
    outputs, metric = distribution_parameters(distribution), distribution_metric(detached(distribution))
    rng = th.random.get_rng_state()
    saved = dict(vars(policy.action_dist))
    assert forward_mode_fisher_product(policy, params, obs, outputs, metric, 0.1) is None
    assert th.equal(rng, th.random.get_rng_state())
    assert vars(policy.action_dist).keys() == saved.keys()
    assert all(vars(policy.action_dist)[key] is value for key, value in saved.items())


@pytest.mark.parametrize("middle", ["hook", "batch_norm", "dropout"])
def test_unsupported_modules_are_seen_before_any_forward_pass(middle: str) -> None:
    policy = _cnn_policy(4, features_extractor_class=_Extractor, features_extractor_kwargs={"middle": middle})
    if middle == "hook":
        policy.features_extractor.conv.register_forward_pre_hook(lambda *args: None)
    policy.set_training_mode(True)
    assert not forward_mode_supported(policy)
    # batch normalisation and dropout are deterministic and stateless in evaluation mode
    policy.set_training_mode(False)
    assert forward_mode_supported(policy) == (middle != "hook")


# ----------------------------------------------------------------------------- the step


def _step(policy: ActorCriticPolicy, obs: th.Tensor, seed: int) -> Any:
    th.manual_seed(seed)
    distribution = policy.get_distribution(obs)
    gen = th.Generator().manual_seed(seed)
    with th.no_grad():
        actions = detached(distribution).distribution.sample()
        log_q = distribution.log_prob(actions)
    advantages = th.randn(len(obs), generator=gen)

    def objective(dist: Any) -> th.Tensor:
        return importance_sampled_surrogate(dist.log_prob(actions), log_q, advantages)

    th.manual_seed(seed)  # the step's own draw (conjugate gradient's starting point)
    return take_step(policy, actor_parameters(policy, obs), obs, objective, _settings())


def test_a_cnn_step_moves_the_policy_as_the_double_backward_step_does(monkeypatch: pytest.MonkeyPatch) -> None:
    obs = _images(16, 5)
    forward, double_backward = _cnn_policy(5), _cnn_policy(5)
    start = flat(forward.parameters())
    assert th.equal(start, flat(double_backward.parameters()))
    calls = _spy(monkeypatch)
    step = _step(forward, obs, 5)
    rng = th.random.get_rng_state()
    assert calls == {"forward": 1, "double_backward": 0}
    monkeypatch.setattr(fisher, "uses_forward_mode", lambda *args: False)
    monkeypatch.setattr(step_module, "uses_forward_mode", lambda *args: False)
    reference = _step(double_backward, obs, 5)
    assert calls == {"forward": 1, "double_backward": 1}
    assert th.equal(rng, th.random.get_rng_state())  # the same random numbers drawn
    assert step.accepted and reference.accepted
    moved = flat(double_backward.parameters()) - start
    difference = flat(forward.parameters()) - flat(double_backward.parameters())
    # float32 rounding (other kernels: channels_last, forward mode), amplified a little by conjugate gradient
    assert float(difference.abs().max()) <= 1e-5 * float(moved.abs().max())
    assert step.step_fraction == reference.step_fraction and step.cg_iterations == reference.cg_iterations


def test_the_step_takes_images_in_channels_last_unless_the_policy_refuses_them() -> None:
    obs = _images(4, 6)
    policy = _cnn_policy(6)
    images, distribution = step_distribution(policy, obs, prefer_channels_last=True)
    assert images.is_contiguous(memory_format=th.channels_last) and th.equal(images, obs)
    assert step_distribution(policy, obs, prefer_channels_last=False)[0] is obs
    # an extractor calling .view() on a channels_last activation fails on that layout: as given then
    refusing = _cnn_policy(6, features_extractor_class=_Extractor, features_extractor_kwargs={"middle": "view"})
    with pytest.raises(RuntimeError):
        refusing.get_distribution(channels_last(obs))
    rng = th.random.get_rng_state()
    images, distribution = step_distribution(refusing, obs, prefer_channels_last=True)
    assert images is obs and th.equal(rng, th.random.get_rng_state())
    assert th.equal(distribution.distribution.logits, refusing.get_distribution(obs).distribution.logits)
