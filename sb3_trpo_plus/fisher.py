"""
Fisher-vector products of an SB3 policy at theta_old, for the step's conjugate gradient:

- :func:`fisher_product`: analytic (F = J^T M J / N with the distribution's closed-form Fisher
  M) or by double backprop through the mean KL, on an ``fvp_subsample`` share of the states;
- the empirical Fisher (``fisher="empirical"``): (1/N) sum_i g_i g_i^T of the per-sample score
  gradients g_i = grad log pi(a_i|s_i), as (1/N) J^T (J v);
- :func:`forward_mode_fisher_product`: the analytic product with J v by forward-mode
  differentiation, taken on convolutional policies (:func:`uses_forward_mode`);
- :func:`step_distribution`: pi_theta on the step's states, on images in the channels_last
  layout when the products take forward mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_trpo_plus import observations as batches
from sb3_trpo_plus.distributions import detached, distribution_metric, distribution_parameters, preserved_state
from sb3_trpo_plus.settings import FisherMode, StepSettings
from sb3_trpo_plus.surrogate import mean_kl
from sb3_trpo_plus.trust_region import (
    MatVec,
    MetricFn,
    OutputsFn,
    analytic_fisher_vector_product,
    empirical_fisher_vector_product,
    kl_hessian_vector_product,
    linearized_fisher_vector_product,
)

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def forward_mode_pays(policy: nn.Module, actor_params: list[nn.Parameter]) -> bool:
    """
    Whether the analytic Fisher-vector product should take J v by forward mode: when a
    convolution carries actor parameters. Double backprop through a convolution costs about twice
    the forward-mode pass (measured in benchmarks/cnn_fvp.py); through fully connected layers both
    cost about the same, and the forward-mode set-up (a trace of the policy) is not repaid.
    """
    actor = {id(param) for param in actor_params}
    return any(
        isinstance(module, CONVOLUTIONS) and any(id(param) in actor for param in module.parameters(recurse=False))
        for module in policy.modules()
    )


def forward_mode_supported(policy: nn.Module) -> bool:
    """
    Whether the policy's forward pass can be evaluated the extra times forward mode needs without
    any effect the double-backward product would not have: no hooks (they would run, and could
    record or change something), no module in training mode holding buffers (batch normalisation
    updates its statistics), no dropout in training mode (random). Randomness elsewhere in the
    forward pass is caught when the product is built (:func:`forward_mode_fisher_product`).
    """
    global_hooks = [getattr(nn.modules.module, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks")]
    if any(global_hooks):
        return False
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    for module in policy.modules():
        if any(getattr(module, name, None) for name in hook_dicts):
            return False
        if module.training and (any(True for _ in module.buffers(recurse=False)) or isinstance(module, nn.Dropout)):
            return False
    return True


class _DistributionParameters(nn.Module):
    """The policy as a module whose forward pass returns the distribution parameters on ``obs``."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: PyTorchObs) -> tuple[th.Tensor, ...]:
        validate = th.distributions.Distribution._validate_args
        # argument validation is control flow on tensor values, which cannot be traced
        th.distributions.Distribution.set_default_validate_args(False)
        try:
            return tuple(distribution_parameters(self.policy.get_distribution(obs)))
        finally:
            th.distributions.Distribution.set_default_validate_args(validate)


def _parameter_locations(module: nn.Module, params: Sequence[nn.Parameter]) -> list[list[str]]:
    """
    For each parameter, one qualified name per place it is registered: per (module object,
    attribute), so a submodule reachable under several names (SB3's shared features extractor is
    ``features_extractor``, ``pi_features_extractor`` and ``vf_features_extractor``) counts once,
    while a parameter shared by two different modules appears under both.
    """
    found: dict[int, list[str]] = {id(param): [] for param in params}
    seen: set[tuple[int, str]] = set()
    for prefix, submodule in module.named_modules(remove_duplicate=False):
        for attribute, param in submodule.named_parameters(recurse=False):
            if id(param) in found and (id(submodule), attribute) not in seen:
                seen.add((id(submodule), attribute))
                found[id(param)].append(f"{prefix}.{attribute}" if prefix else attribute)
    return [found[id(param)] for param in params]


def distribution_parameters_function(
    policy: ActorCriticPolicy, actor_params: Sequence[nn.Parameter], obs: PyTorchObs
) -> OutputsFn:
    """
    The distribution parameters on ``obs`` as a function of the values of ``actor_params`` (the
    policy's other parameters as they are), for :func:`torch.func` transforms.

    Each value replaces its parameter once per place the parameter is registered, with
    ``tie_weights=False``: letting :func:`torch.func.functional_call` tie the aliases of a shared
    submodule itself sets the same attribute several times, and (torch 2.13) leaves the
    substituted tensors in the policy afterwards instead of its parameters.
    """
    module = _DistributionParameters(policy)
    locations = _parameter_locations(module, actor_params)

    def outputs_of(values: Sequence[th.Tensor]) -> tuple[th.Tensor, ...]:
        substitutes = {name: value for names, value in zip(locations, values, strict=True) for name in names}
        return th.func.functional_call(module, substitutes, (obs,), tie_weights=False)

    return outputs_of


def _rng_states(device: th.device) -> list[th.Tensor]:
    states = [th.random.get_rng_state()]
    if device.type == "cuda":
        states.append(th.cuda.get_rng_state(device))
    return states


def _restore_rng_states(states: list[th.Tensor], device: th.device) -> None:
    th.random.set_rng_state(states[0])
    if len(states) > 1:
        th.cuda.set_rng_state(states[1], device)


def forward_mode_fisher_product(
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    obs: PyTorchObs,
    outputs: list[th.Tensor],
    metric: MetricFn,
    damping: float,
) -> MatVec | None:
    """
    The analytic product F = J^T M J / N with J v by forward mode
    (:func:`~sb3_trpo_plus.trust_region.linearized_fisher_vector_product`). ``None`` when the
    policy's forward pass cannot be linearised (an operation without a forward-mode derivative,
    control flow on tensor values...) or draws random numbers; the generators and the policy's
    distribution object are then as they were.

    :param policy: the policy at theta_old
    :param actor_params: the parameters the action distribution depends on
    :param obs: the states of the product
    :param outputs: the distribution parameters on ``obs``, attached to the graph of ``actor_params``
    :param metric: the Fisher information M of pi_old on ``obs``
    :param damping: c in (F + c I) v
    """
    states = _rng_states(policy.device)
    outputs_of = distribution_parameters_function(policy, actor_params, obs)
    product: MatVec | None
    with preserved_state(policy.action_dist):  # get_distribution rebinds the distribution object's attributes
        try:
            product = linearized_fisher_vector_product(outputs, outputs_of, metric, actor_params, damping, len(outputs[0]))
        except Exception:  # any failure to differentiate in forward mode or to trace: the caller falls back
            product = None
    if any(not th.equal(before, after) for before, after in zip(states, _rng_states(policy.device), strict=True)):
        # a random forward pass (noise layers...): its linearisation would not match J
        _restore_rng_states(states, policy.device)
        return None
    return product


def uses_forward_mode(policy: ActorCriticPolicy, actor_params: list[nn.Parameter], settings: StepSettings) -> bool:
    """Whether the step's Fisher-vector products try forward mode (:func:`fisher_product`)."""
    analytic = settings.fisher is FisherMode.ANALYTIC
    return analytic and forward_mode_pays(policy, actor_params) and forward_mode_supported(policy)


def fisher_product(
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    obs: PyTorchObs,
    distribution: Distribution,
    old_distribution: Distribution,
    settings: StepSettings,
    actions: th.Tensor | None = None,
) -> MatVec:
    """
    Fisher-vector products at theta_old, on a random ``fvp_subsample`` share of ``obs``: by
    double backprop through the mean KL (``fisher="kl_hessian"``), as J^T M J / N
    (``"analytic"``), with J v by forward mode on convolutional policies that support it
    (:func:`uses_forward_mode`, :func:`forward_mode_fisher_product`) and by the
    double-backward trick otherwise, or as the empirical Fisher (``"empirical"``, see
    :func:`~sb3_trpo_plus.trust_region.empirical_fisher_vector_product`).

    :param actions: with ``fisher="empirical"``, the actions a_i taken in ``obs`` (in the format
        ``Distribution.log_prob`` takes); None: drawn from pi_old at those states (the
        distribution the batch's own actions come from in single-path sampling)
    """
    if settings.fvp_subsample < 1.0:
        n_obs = batches.count(obs)
        size = max(1, math.ceil(settings.fvp_subsample * n_obs))
        index = th.randperm(n_obs, device=policy.device)[:size]
        obs = batches.index(obs, index)
        if actions is not None and settings.fisher is FisherMode.EMPIRICAL:  # the others never read them
            actions = actions[index]
        distribution = policy.get_distribution(obs)
        old_distribution = detached(distribution)
    if settings.fisher is FisherMode.EMPIRICAL:
        if actions is None:
            with th.no_grad():
                actions = old_distribution.sample()
        return empirical_fisher_vector_product(distribution.log_prob(actions), actor_params, settings.cg_damping)
    if settings.fisher is FisherMode.KL_HESSIAN:
        kl = mean_kl(distribution, old_distribution)  # its Hessian at theta_old is the Fisher matrix
        return kl_hessian_vector_product(kl, actor_params, settings.cg_damping)
    outputs = distribution_parameters(distribution)  # before forward mode evaluates the policy again
    metric = distribution_metric(old_distribution)
    if uses_forward_mode(policy, actor_params, settings):
        product = forward_mode_fisher_product(policy, actor_params, obs, outputs, metric, settings.cg_damping)
        if product is not None:
            return product
    return analytic_fisher_vector_product(outputs, metric, actor_params, settings.cg_damping, len(outputs[0]))


def step_distribution(
    policy: ActorCriticPolicy, obs: PyTorchObs, prefer_channels_last: bool
) -> tuple[PyTorchObs, Distribution]:
    """
    pi_theta on the step's states, and those states: in the channels_last layout when
    ``prefer_channels_last`` (the same values; convolutions on CPU are faster in it, and every
    forward and backward pass of the step takes it), unless the policy fails on that layout
    (a custom extractor calling ``.view()`` on an image, say): then as given.
    """
    if prefer_channels_last:
        converted = batches.channels_last(obs)
        if not batches.same_tensors(converted, obs):
            states = _rng_states(policy.device)
            try:
                return converted, policy.get_distribution(converted)
            except RuntimeError:
                _restore_rng_states(states, policy.device)
    return obs, policy.get_distribution(obs)
