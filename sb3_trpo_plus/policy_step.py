"""
Steps 2 and 3 of the algorithm box on an SB3 policy: the iteration's surrogate objective, built
from the batch the sampling scheme returned, and the trust-region step that maximises it.

- :func:`single_path_surrogate`: mean[pi_theta / q * A] on the rollout's states and actions
  (q = pi_old), with the advantages normalised as sb3-contrib does;
- :func:`vine_surrogate`: on the rollout set, the exact sum over every branched action or the
  self-normalised importance-sampled estimator of the branches' Q-values;
- :func:`fisher_product`: Fisher-vector products at theta_old (analytic or by double backprop,
  on an ``fvp_subsample`` share of the states); the analytic product takes J v by forward-mode
  differentiation on convolutional policies (:func:`forward_mode_fisher_product`);
- :func:`trust_region_step`: conjugate gradient, maximal step and line search
  (:func:`sb3_trpo_plus.trust_region.natural_gradient_step`), on images in the channels_last
  layout when the products take forward mode (:func:`step_distribution`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_trpo_plus.buffers import VineBatch
from sb3_trpo_plus.distributions import (
    actions_for_log_prob,
    detached,
    distribution_metric,
    distribution_parameters,
    preserved_state,
)
from sb3_trpo_plus.surrogate import (
    effective_sample_size,
    exact_sum_surrogate,
    importance_sampled_surrogate,
    importance_weights,
    inverse_variance_weight,
    mean_kl,
    self_normalized_surrogate,
    variance_of_mean,
    variance_upper_bound,
)
from sb3_trpo_plus.trust_region import (
    MatVec,
    MetricFn,
    OutputsFn,
    StepResult,
    analytic_fisher_vector_product,
    kl_hessian_vector_product,
    linearized_fisher_vector_product,
    natural_gradient_step,
)


@dataclass
class Surrogate:
    """
    The estimated objective of one iteration.

    :param observations: the states the objective and the KL constraint are evaluated on
    :param objective: the surrogate L(theta) as a function of pi_theta's distribution on them
    :param ess: effective sample size of the importance weights under a distribution
    :param invalid: why the batch cannot be used ("" when it can)
    :param constraint_observations: the states of the KL constraint and the Fisher matrix, when
        they are not ``observations`` (vine: the trunk's states)
    :param stats: what the estimator measured, logged under ``train/``
    """

    observations: PyTorchObs
    objective: Callable[[Distribution], th.Tensor]
    ess: Callable[[Distribution], float]
    invalid: str
    constraint_observations: PyTorchObs | None = None
    stats: dict[str, float] = field(default_factory=dict)


def index_obs(obs: PyTorchObs, index: th.Tensor | slice) -> PyTorchObs:
    """The states ``obs[index]`` of a batch of observations (dict observations included)."""
    if isinstance(obs, dict):
        return {key: value[index] for key, value in obs.items()}
    return obs[index]


def _n_obs(obs: PyTorchObs) -> int:
    if isinstance(obs, dict):
        return len(next(iter(obs.values())))
    return len(obs)


def normalized_advantages(advantages: th.Tensor, normalize: bool) -> th.Tensor:
    """The advantages, standardised over the batch when ``normalize`` (as sb3-contrib's TRPO does)."""
    if not normalize:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def single_path_surrogate(
    batch: Any, action_space: spaces.Space, normalize_advantage: bool, max_weight: float | None
) -> Surrogate:
    """
    The single-path importance-sampled surrogate mean[pi_theta / q * A] (q = pi_old) as a function
    of the policy's action distribution on the batch's states.

    :param batch: the rollout's samples (SB3's ``RolloutBufferSamples`` or its dict variant)
    :param action_space: the environment's action space
    :param normalize_advantage: normalise the advantages over the batch, as sb3-contrib does
    :param max_weight: truncation of the weights (``q_kwargs['max_weight']``; None: sb3-contrib's objective)
    """
    actions = actions_for_log_prob(batch.actions, action_space)
    log_q = batch.old_log_prob  # single path: q = pi_old
    advantages = normalized_advantages(batch.advantages, normalize_advantage)

    def objective(distribution: Distribution) -> th.Tensor:
        return importance_sampled_surrogate(distribution.log_prob(actions), log_q, advantages, max_weight)

    def ess(distribution: Distribution) -> float:
        return effective_sample_size(importance_weights(distribution.log_prob(actions), log_q, max_weight))

    finite = bool(th.isfinite(advantages).all())
    return Surrogate(batch.observations, objective, ess, "" if finite else "non-finite advantages")


def vine_value(log_prob: th.Tensor, batch: VineBatch, max_weight: float | None, states: th.Tensor | None = None) -> th.Tensor:
    """
    The vine surrogate from pi_theta's log-probabilities of the batch's rows: the exact sum over
    actions when every action was branched, the self-normalised estimator otherwise.

    :param states: only these rollout-set states (sorted indices; None: all of them)
    """
    q_values, log_q, group, n_groups = batch.q_values, batch.log_q, batch.group, batch.n_states
    if states is not None:
        rows = th.isin(group, states)
        log_prob, q_values, log_q = log_prob[rows], q_values[rows], log_q[rows]
        group, n_groups = th.searchsorted(states, group[rows]), len(states)
    if batch.all_actions:
        return exact_sum_surrogate(log_prob, q_values, group, n_groups)
    return self_normalized_surrogate(log_prob, log_q, q_values, group, n_groups, max_weight)


def vine_ess(log_prob: th.Tensor, batch: VineBatch, max_weight: float | None) -> float:
    """Mean over rollout-set states of the effective sample size of their K importance weights."""
    weights = importance_weights(log_prob, batch.log_q, max_weight).view(batch.n_states, -1)
    return float(np.mean([effective_sample_size(row) for row in weights]))


def vine_surrogate(batch: VineBatch, action_space: spaces.Space, max_weight: float | None) -> Surrogate:
    """
    The vine surrogate on the rollout set: the exact sum over actions when every action of a
    finite space was branched, the self-normalised importance-sampled estimator otherwise (its
    weights, and those of the effective sample size, truncated at ``max_weight`` when given).

    :param batch: the rollout set, its branch actions, log q and Q-values
    :param action_space: the environment's action space
    :param max_weight: truncation of the weights (``q_kwargs['max_weight']``; None: none)
    """
    actions = actions_for_log_prob(batch.actions, action_space)
    max_weight = None if batch.all_actions else max_weight

    def objective(distribution: Distribution) -> th.Tensor:
        return vine_value(distribution.log_prob(actions), batch, max_weight)

    def ess(distribution: Distribution) -> float:
        return vine_ess(distribution.log_prob(actions), batch, max_weight)

    finite = bool(th.isfinite(batch.q_values).all())
    return Surrogate(batch.observations, objective, ess, "" if finite else "non-finite Q-values")


def concat_obs(first: PyTorchObs, second: PyTorchObs) -> PyTorchObs:
    """The rows of ``first`` followed by those of ``second`` (dict observations included)."""
    if isinstance(first, dict):
        assert isinstance(second, dict)
        return {key: th.cat([value, second[key]]) for key, value in first.items()}
    assert isinstance(second, th.Tensor)
    return th.cat([first, second])


def _chunk_gradient_variance(estimates: list[th.Tensor], params: list[nn.Parameter]) -> float:
    """Total variance of the mean of the chunk estimates' gradients (:func:`~sb3_trpo_plus.surrogate.variance_of_mean`)."""
    gradients = []
    for estimate in estimates:
        pieces = th.autograd.grad(estimate, params, retain_graph=True, allow_unused=True)
        flat = [
            p.new_zeros(p.numel()).cpu() if g is None else g.detach().cpu().flatten()
            for g, p in zip(pieces, params, strict=True)
        ]
        gradients.append(th.cat(flat))
    return variance_of_mean(th.stack(gradients))


def vine_and_trunk_surrogate(
    vine: VineBatch,
    trunk: Any,
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    action_space: spaces.Space,
    normalize_advantage: bool,
    max_weight: float | None,
    estimator: str,
    trust_region_states: str,
    n_chunks: int = 16,
) -> Surrogate:
    """
    The vine iteration's surrogate, with the trunk's states and samples put to work (each part
    an option of ``vine_kwargs``, see :class:`~sb3_trpo_plus.settings.VineSettings`):

    - ``trust_region_states="trunk"``: the KL constraint and the Fisher matrix are measured on
      every trunk state (samples of the same state distribution as the rollout set, and many
      more of them) rather than on the rollout set;
    - ``estimator="combined"``: the objective is (1 - w) L_trunk + w L_vine / sigma, the
      single-path surrogate of the trunk (advantages normalised as sb3-contrib does, by sigma)
      and the vine surrogate of the rollout set, both estimates of the same policy gradient. The
      weight w = var_trunk / (var_trunk + var_vine) minimises the variance of the combination;
      each variance is that of the estimator's gradient at theta_old, measured on the batch
      itself from ``n_chunks`` interleaved chunks of its samples (rollout-set states for the
      vine), the vine's taken at its 90% upper confidence bound (it rests on few states).

    :param vine: the rollout set's batch
    :param trunk: the trunk's samples (SB3's rollout samples)
    :param policy: the policy (pi_theta at its current parameters is pi_old)
    :param actor_params: the parameters the gradients are taken in
    :param action_space: the environment's action space
    :param normalize_advantage: normalise the trunk's advantages (sigma = their standard deviation)
    :param max_weight: truncation of the importance weights (``q_kwargs['max_weight']``)
    :param estimator: "combined" or "vine"
    :param trust_region_states: "trunk" or "rollout_set"
    :param n_chunks: chunks per estimator for the variances
    """
    vine_part = vine_surrogate(vine, action_space, max_weight)
    constraint = trunk.observations if trust_region_states == "trunk" else None
    if estimator == "vine" or vine_part.invalid:
        return replace(vine_part, constraint_observations=constraint)
    advantages = normalized_advantages(trunk.advantages, normalize_advantage)
    if not bool(th.isfinite(advantages).all()):  # the trunk's surrogate is unusable: the vine's alone
        return replace(vine_part, constraint_observations=constraint)
    scale = float(trunk.advantages.std()) + 1e-8 if normalize_advantage else 1.0  # sigma
    n_vine = len(vine.actions)
    trunk_actions = actions_for_log_prob(trunk.actions, action_space)
    vine_actions = actions_for_log_prob(vine.actions, action_space).to(trunk_actions.dtype)
    actions = th.cat([vine_actions, trunk_actions])
    observations = concat_obs(vine.observations, trunk.observations)

    log_q = trunk.old_log_prob
    vine_cap = None if vine.all_actions else max_weight

    def trunk_value(log_prob: th.Tensor, rows: slice = slice(None)) -> th.Tensor:
        return importance_sampled_surrogate(log_prob[n_vine:][rows], log_q[rows], advantages[rows], max_weight)

    # the two variances, from chunk gradients at theta_old (interleaved chunks: no random draw)
    with preserved_state(policy.action_dist):  # the graph of this pass is not left on the policy
        log_prob = policy.get_distribution(observations).log_prob(actions)
    trunk_chunks = [trunk_value(log_prob, slice(c, None, n_chunks)) for c in range(min(n_chunks, len(advantages)))]
    states = th.arange(vine.n_states, device=vine.group.device)
    chunk_states = [states[c::n_chunks].contiguous() for c in range(min(n_chunks, vine.n_states))]
    vine_chunks = [vine_value(log_prob[:n_vine], vine, vine_cap, chosen) / scale for chosen in chunk_states]
    var_trunk = _chunk_gradient_variance(trunk_chunks, actor_params) if len(trunk_chunks) >= 2 else math.inf
    var_vine = _chunk_gradient_variance(vine_chunks, actor_params) if len(vine_chunks) >= 2 else math.inf
    # the rollout set has few states: its variance is weighed at its 90% upper bound, so that a
    # small sample that happens to look precise does not take over the step
    weight = inverse_variance_weight(var_trunk, variance_upper_bound(var_vine, len(vine_chunks)))

    def objective(distribution: Distribution) -> th.Tensor:
        log_prob = distribution.log_prob(actions)
        return (1.0 - weight) * trunk_value(log_prob) + weight * vine_value(log_prob[:n_vine], vine, vine_cap) / scale

    def ess(distribution: Distribution) -> float:
        return vine_ess(distribution.log_prob(actions)[:n_vine], vine, vine_cap)

    stats = {"vine_weight": weight, "grad_variance_trunk": var_trunk, "grad_variance_vine": var_vine}
    return Surrogate(observations, objective, ess, "", constraint, stats)


@dataclass(frozen=True)
class StepSettings:
    """
    The trust-region step's arguments of :class:`~sb3_trpo_plus.TRPOPlus` (same names and meaning).
    """

    target_kl: float
    cg_max_steps: int
    cg_damping: float
    line_search_shrinking_factor: float
    line_search_max_iter: int
    fisher: str
    fvp_subsample: float


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


def channels_last(obs: PyTorchObs) -> PyTorchObs:
    """4-D observations (images) in the channels_last memory format (the same values; faster convolutions on CPU)."""

    def convert(tensor: th.Tensor) -> th.Tensor:
        return tensor.contiguous(memory_format=th.channels_last) if tensor.dim() == 4 else tensor

    if isinstance(obs, dict):
        return {key: convert(value) for key, value in obs.items()}
    return convert(obs)


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


def _same_tensors(a: PyTorchObs, b: PyTorchObs) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return all(a[key] is b[key] for key in a)
    return a is b


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
    return settings.fisher == "analytic" and forward_mode_pays(policy, actor_params) and forward_mode_supported(policy)


def fisher_product(
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    obs: PyTorchObs,
    distribution: Distribution,
    old_distribution: Distribution,
    settings: StepSettings,
) -> MatVec:
    """
    Fisher-vector products at theta_old, on a random ``fvp_subsample`` share of ``obs``: by
    double backprop through the mean KL (``fisher="kl_hessian"``) or as J^T M J / N
    (``"analytic"``), with J v by forward mode on convolutional policies that support it
    (:func:`uses_forward_mode`, :func:`forward_mode_fisher_product`) and by the
    double-backward trick otherwise.
    """
    if settings.fvp_subsample < 1.0:
        n_obs = _n_obs(obs)
        size = max(1, math.ceil(settings.fvp_subsample * n_obs))
        index = th.randperm(n_obs, device=policy.device)[:size]
        obs = index_obs(obs, index)
        distribution = policy.get_distribution(obs)
        old_distribution = detached(distribution)
    if settings.fisher == "kl_hessian":
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
        converted = channels_last(obs)
        if not _same_tensors(converted, obs):
            states = _rng_states(policy.device)
            try:
                return converted, policy.get_distribution(converted)
            except RuntimeError:
                _restore_rng_states(states, policy.device)
    return obs, policy.get_distribution(obs)


def trust_region_step(
    policy: ActorCriticPolicy,
    actor_params: list[nn.Parameter],
    obs: PyTorchObs,
    objective: Callable[[Distribution], th.Tensor],
    settings: StepSettings,
    constraint_obs: PyTorchObs | None = None,
) -> StepResult:
    """
    Maximise the surrogate under the KL constraint: natural-gradient direction by conjugate
    gradient, maximal step sqrt(2 delta / s^T F s), backtracking line search. A rejected step
    leaves the policy exactly as it was.

    :param policy: the policy (pi_theta at its current parameters is pi_old)
    :param actor_params: the parameters the action distribution depends on (moved by the step)
    :param obs: the states of the objective (and of the KL constraint, unless ``constraint_obs``)
    :param objective: the surrogate as a function of pi_theta's distribution on ``obs``
    :param settings: the step's arguments
    :param constraint_obs: the states of the KL constraint, the Fisher matrix and the line
        search's KL (None: ``obs``)
    :return: the measurements of the step; the policy's distribution object is left as it was
        before the step (:func:`~sb3_trpo_plus.distributions.preserved_state`): the step's
        distributions, attached to the graph of its forward passes, do not outlive it
    """
    with preserved_state(policy.action_dist):
        # SB3 policies keep one distribution object per policy, so each is used before the next is made
        forward_mode = uses_forward_mode(policy, actor_params, settings)
        obs, distribution = step_distribution(policy, obs, forward_mode)
        old_distribution = detached(distribution)
        surrogate = objective(distribution)
        separate = constraint_obs is not None
        if constraint_obs is None:
            constraint_obs, constrained, old_constrained = obs, distribution, old_distribution
        else:
            constraint_obs, constrained = step_distribution(policy, constraint_obs, forward_mode)
            old_constrained = detached(constrained)
        product = fisher_product(policy, actor_params, constraint_obs, constrained, old_constrained, settings)

        def evaluate() -> tuple[float, float]:
            new_distribution = policy.get_distribution(obs)
            value = float(objective(new_distribution))
            new_constrained = policy.get_distribution(constraint_obs) if separate else new_distribution
            # the constraint as sb3-contrib measures it, KL(pi_theta || pi_old), so that target_kl
            # means the same (the paper's KL(pi_old || pi_theta) agrees to second order)
            return value, float(mean_kl(new_constrained, old_constrained))

        # Start CG from small noise rather than zero, as sb3-contrib does (same random stream).
        x0 = 1e-4 * th.randn(sum(p.numel() for p in actor_params), device=policy.device)
        return natural_gradient_step(
            actor_params,
            surrogate,
            product,
            evaluate,
            max_kl=settings.target_kl,
            cg_max_iter=settings.cg_max_steps,
            shrinking_factor=settings.line_search_shrinking_factor,
            line_search_max_iter=settings.line_search_max_iter,
            cg_x0=x0,
        )
