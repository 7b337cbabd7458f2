"""
The trust-region step of TRPO as pure functions: conjugate gradient, Fisher-vector products
and the backtracking line search (Schulman et al. 2015, section 6 and appendix C).

Nothing here knows about SB3 algorithms: functions take tensors, parameters and callables and
return tensors or small result records, so each one can be tested against an exact answer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch as th
from torch import nn

MatVec = Callable[[th.Tensor], th.Tensor]


@dataclass(frozen=True)
class CGResult:
    """
    Outcome of :func:`conjugate_gradient`.

    :param solution: approximate solution x of A x = b
    :param residual_norm: Euclidean norm of the last residual b - A x (tracked by the recursion)
    :param iterations: number of matrix-vector products spent inside the loop
    """

    solution: th.Tensor
    residual_norm: float
    iterations: int


def write_parameters(vector: th.Tensor, params: Sequence[nn.Parameter]) -> None:
    """
    Copy a flat vector into ``params`` in place (the inverse of
    :func:`torch.nn.utils.parameters_to_vector`).

    Unlike :func:`torch.nn.utils.vector_to_parameters`, which rebinds every ``param.data`` to a
    view of ``vector``, each parameter keeps its own storage: optimisers, NumPy views and
    anything else holding the parameter see the new values, and the memory layout (hence the
    floating-point result of every later matrix product) is the one the policy was built with.
    """
    offset = 0
    with th.no_grad():
        for param in params:
            size = param.numel()
            param.copy_(vector[offset : offset + size].view_as(param))
            offset += size
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the parameters {offset}")


def conjugate_gradient(
    matvec: MatVec,
    b: th.Tensor,
    max_iter: int = 10,
    residual_tol: float = 1e-10,
    x0: th.Tensor | None = None,
) -> CGResult:
    """
    Solve A x = b for a symmetric positive-definite A known only through products A v.

    The loop stops after ``max_iter`` products or once the squared residual norm falls below
    ``residual_tol``. Non-finite values stop the loop at once; the caller sees them in the
    returned solution or residual and must reject the step.

    :param matvec: function v -> A v
    :param b: right-hand side (1-D)
    :param max_iter: maximum number of conjugate-gradient iterations (>= 1)
    :param residual_tol: tolerance on the squared residual norm for stopping early
    :param x0: starting point (zeros by default)
    :return: the solution, the final residual norm and the iteration count
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = th.zeros_like(b) if x0 is None else x0.clone()
    residual = b - matvec(x) if x0 is not None else b.clone()
    rs_old = th.dot(residual, residual)
    if not th.isfinite(rs_old) or rs_old < residual_tol:
        return CGResult(x, float(rs_old.sqrt()), 0)
    direction = residual.clone()
    iterations = 0
    for _ in range(max_iter):
        a_dir = matvec(direction)
        iterations += 1
        alpha = rs_old / th.dot(direction, a_dir)
        x = x + alpha * direction
        residual = residual - alpha * a_dir
        rs_new = th.dot(residual, residual)
        if not th.isfinite(rs_new) or rs_new < residual_tol:
            rs_old = rs_new
            break
        direction = residual + (rs_new / rs_old) * direction
        rs_old = rs_new
    return CGResult(x, float(rs_old.sqrt()), iterations)


def flat_grad(
    output: th.Tensor | Sequence[th.Tensor],
    params: Sequence[nn.Parameter],
    grad_outputs: Sequence[th.Tensor] | None = None,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> th.Tensor:
    """
    Gradient of ``output`` with respect to ``params``, flattened into one vector.
    A parameter the output does not depend on contributes zeros, so the layout always matches
    :func:`torch.nn.utils.parameters_to_vector` of ``params``.
    """
    grads = th.autograd.grad(
        output,
        list(params),
        grad_outputs=grad_outputs,
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return th.cat([(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)])


def kl_hessian_vector_product(mean_kl: th.Tensor, params: Sequence[nn.Parameter], damping: float) -> MatVec:
    """
    Fisher-vector products by double backpropagation through the mean KL divergence:
    F v = d/dtheta ( (d KL / d theta) . v ), evaluated at theta_old where the Hessian of the
    KL equals the Fisher information. This is the approach of sb3-contrib's TRPO.

    :param mean_kl: mean KL(pi_theta || pi_old) over the batch (as
        :func:`~sb3_trpo_plus.surrogate.mean_kl` measures it; KL(pi_old || pi_theta) has the same
        Hessian at theta_old), still attached to the graph
    :param params: actor parameters theta
    :param damping: c in (F + c I) v
    :return: function v -> (F + c I) v
    """
    grad_kl = flat_grad(mean_kl, params, create_graph=True, retain_graph=True)

    def product(vector: th.Tensor) -> th.Tensor:
        return flat_grad((grad_kl * vector).sum(), params, retain_graph=True) + damping * vector

    return product


MetricFn = Callable[[Sequence[th.Tensor]], list[th.Tensor]]


def analytic_fisher_vector_product(
    outputs: Sequence[th.Tensor],
    metric: MetricFn,
    params: Sequence[nn.Parameter],
    damping: float,
    n_samples: int,
) -> MatVec:
    """
    Fisher-vector products in the factored form F = J^T M J / N.

    ``outputs`` are the parameters of the action distribution for a batch of N states (for
    example the mean and standard deviation of a Gaussian, or the logits of a categorical),
    J is their Jacobian with respect to ``params`` and ``metric`` applies M, the Fisher
    information of the distribution in those parameters, sample by sample. J v is obtained by
    differentiating the vector-Jacobian product J^T u with respect to the dummy cotangent u,
    J^T w by an ordinary backward pass; both reuse one retained graph, so each product costs
    two backward passes and no new forward pass.

    :param outputs: distribution parameters, attached to the graph of ``params``
    :param metric: function mapping tangents J v (one tensor per output) to M J v
    :param params: actor parameters theta
    :param damping: c in (F + c I) v
    :param n_samples: N, the number of states the outputs were computed on
    :return: function v -> (F + c I) v
    """
    cotangents = [th.zeros_like(out, requires_grad=True) for out in outputs]
    vjp = th.autograd.grad(list(outputs), list(params), grad_outputs=cotangents, create_graph=True, allow_unused=True)
    live = [(g, p) for g, p in zip(vjp, params, strict=True) if g is not None]
    sizes = [p.numel() for p in params]
    live_mask = [g is not None for g in vjp]

    def product(vector: th.Tensor) -> th.Tensor:
        pieces = vector.split(sizes)
        tangents = th.autograd.grad(
            [g for g, _ in live],
            cotangents,
            grad_outputs=[piece.view_as(p) for piece, p, keep in zip(pieces, params, live_mask, strict=True) if keep],
            retain_graph=True,
            allow_unused=True,
        )
        jv = [th.zeros_like(out) if t is None else t for t, out in zip(tangents, outputs, strict=True)]
        weighted = [m / n_samples for m in metric(jv)]
        return flat_grad(list(outputs), params, grad_outputs=weighted, retain_graph=True) + damping * vector

    return product


def empirical_fisher_vector_product(log_probs: th.Tensor, params: Sequence[nn.Parameter], damping: float) -> MatVec:
    """
    Products with the empirical Fisher matrix F = (1/N) sum_i g_i g_i^T, g_i = grad log pi(a_i|s_i)
    at theta_old, without forming it: F v = (1/N) J^T (J v) with J the N x P Jacobian of the
    per-sample log-probabilities (rows g_i). It is the factored form of
    :func:`analytic_fisher_vector_product` with the log-probabilities as outputs and M = I, so J v
    and J^T w come from the same retained graph.

    :param log_probs: log pi_theta(a_i|s_i) for the N samples, shape (N,), attached to the graph of ``params``
    :param params: actor parameters theta
    :param damping: c in (F + c I) v
    :return: function v -> (F + c I) v
    """
    flat = log_probs.reshape(-1)
    return analytic_fisher_vector_product([flat], lambda tangents: list(tangents), params, damping, flat.numel())


OutputsFn = Callable[[Sequence[th.Tensor]], Sequence[th.Tensor]]


def linearized_fisher_vector_product(
    outputs: Sequence[th.Tensor],
    outputs_of: OutputsFn,
    metric: MetricFn,
    params: Sequence[nn.Parameter],
    damping: float,
    n_samples: int,
) -> MatVec:
    """
    Fisher-vector products in the factored form F = J^T M J / N of
    :func:`analytic_fisher_vector_product`, with J v by forward-mode differentiation.

    ``outputs_of`` is linearised once at the current parameter values (:func:`torch.func.linearize`:
    traced once, its primal part folded into constants at the first product). Each product then
    costs one pass of tangents through the network (J v) and one backward pass through the
    retained graph of ``outputs`` (J^T w), instead of the two backward passes of the
    double-backward trick, which are slow through convolutions.

    :param outputs: distribution parameters, attached to the graph of ``params``: ``outputs_of``
        evaluated on ``params`` themselves
    :param outputs_of: function mapping values of ``params`` (a sequence, in their order) to the
        distribution parameters. It is evaluated again and traced with ``make_fx``, so it must be
        deterministic, free of side effects and without control flow on tensor values (so no
        argument validation of torch distributions)
    :param metric: function mapping tangents J v (one tensor per output) to M J v
    :param params: actor parameters theta
    :param damping: c in (F + c I) v
    :param n_samples: N, the number of states the outputs are computed on
    :return: function v -> (F + c I) v
    :raises Exception: whatever :func:`torch.func.linearize` raises on a function it cannot
        differentiate in forward mode or trace (the caller falls back to another product)
    """
    outputs = list(outputs)
    primals = [param.detach() for param in params]
    with warnings.catch_warnings():
        # torch.fx's constant folding warns about the attributes it creates itself
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node", category=UserWarning)
        _, jvp = th.func.linearize(lambda *values: tuple(outputs_of(values)), *primals)
    sizes = [p.numel() for p in params]

    def product(vector: th.Tensor) -> th.Tensor:
        tangents = [piece.view_as(p) for piece, p in zip(vector.split(sizes), params, strict=True)]
        weighted = [m / n_samples for m in metric(list(jvp(*tangents)))]
        return flat_grad(outputs, params, grad_outputs=weighted, retain_graph=True) + damping * vector

    return product


def max_step_length(direction: th.Tensor, fisher_direction: th.Tensor, max_kl: float) -> float:
    """
    The step length beta with 1/2 (beta s)^T F (beta s) = max_kl, i.e. beta = sqrt(2 delta / s^T F s):
    the largest step along s allowed by the quadratic model of the KL constraint.
    Returns ``nan`` when s^T F s is not positive and finite (the caller rejects the step).
    """
    shs = float(th.dot(direction, fisher_direction))
    if not math.isfinite(shs) or shs <= 0.0:
        return math.nan
    return math.sqrt(2.0 * max_kl / shs)


@dataclass(frozen=True)
class LineSearchResult:
    """
    Outcome of :func:`backtracking_line_search`.

    :param success: whether a step was accepted
    :param step_fraction: fraction of the maximal step that was accepted (0.0 on failure)
    :param n_evaluations: how many candidate steps were evaluated
    :param objective: surrogate at the accepted step (the baseline on failure)
    :param kl: mean KL at the accepted step (0.0 on failure)
    :param reason: why the search failed ("" on success)
    """

    success: bool
    step_fraction: float
    n_evaluations: int
    objective: float
    kl: float
    reason: str = ""


def backtracking_line_search(
    evaluate: Callable[[float], tuple[float, float]],
    baseline_objective: float,
    max_kl: float,
    shrinking_factor: float,
    max_iter: int,
) -> LineSearchResult:
    """
    Backtracking line search on the trust region: try the fractions 1, r, r^2, ... of the
    maximal step and accept the first one whose surrogate is strictly better than
    ``baseline_objective`` and whose measured mean KL is at most ``max_kl``. Non-finite
    objectives or KLs are never accepted.

    :param evaluate: function fraction -> (surrogate, mean KL) at theta_old + fraction * full step
    :param baseline_objective: surrogate at theta_old
    :param max_kl: the trust-region radius delta
    :param shrinking_factor: r in (0, 1)
    :param max_iter: number of candidate steps to try
    :return: the accepted fraction with its surrogate and KL, or a failure with its reason
    """
    fraction = 1.0
    reason = "no candidate evaluated"
    for evaluation in range(1, max_iter + 1):
        objective, kl = evaluate(fraction)
        if not (math.isfinite(objective) and math.isfinite(kl)):
            reason = "non-finite surrogate or KL"
        elif kl > max_kl:
            reason = "KL above target"
        elif objective <= baseline_objective:
            reason = "no surrogate improvement"
        else:
            return LineSearchResult(True, fraction, evaluation, objective, kl)
        fraction *= shrinking_factor
    return LineSearchResult(False, 0.0, max_iter, baseline_objective, 0.0, reason)


@dataclass(frozen=True)
class StepResult:
    """
    Everything measured during one trust-region step, for logging.

    :param accepted: whether the parameters moved
    :param reason: why the step was rejected ("" when accepted)
    :param kl: measured mean KL after the step (0.0 when rejected)
    :param surrogate_gain: actual change of the surrogate (0.0 when rejected)
    :param expected_gain: g^T delta_theta, the gain the linear model predicts for the step taken
        (0.0 when rejected)
    :param line_search_steps: candidate steps evaluated by the line search
    :param cg_residual: norm of the conjugate-gradient residual
    :param cg_iterations: conjugate-gradient iterations spent
    :param step_fraction: accepted fraction of the maximal step
    :param kl_max: after the step, the largest per-state KL(pi_old || pi_new) of the joint action
        distribution on the constraint's states (Theorem 1's D_KL^max on the batch; nan: not measured)
    :param tv_max: after the step, the largest per-state total variation on those states (an upper
        bound where :func:`~sb3_trpo_plus.bound.tv_is_exact` is False; nan: not measured)
    """

    accepted: bool
    reason: str
    kl: float
    surrogate_gain: float
    expected_gain: float
    line_search_steps: int
    cg_residual: float
    cg_iterations: int
    step_fraction: float
    kl_max: float = math.nan
    tv_max: float = math.nan


@dataclass(frozen=True)
class NaturalGradient:
    """
    The natural-gradient direction s ~ F^-1 g at theta_old (:func:`natural_gradient_direction`).

    :param theta_old: the parameters at theta_old, flat (a copy)
    :param baseline: the surrogate at theta_old
    :param gradient: g, the surrogate's gradient (None when it could not be used)
    :param cg: the conjugate-gradient outcome (None when it was not run)
    :param reason: why there is no usable direction ("" when there is one)
    """

    theta_old: th.Tensor
    baseline: float
    gradient: th.Tensor | None = None
    cg: CGResult | None = None
    reason: str = ""

    @property
    def direction(self) -> th.Tensor:
        """s, the conjugate-gradient solution of F s = g."""
        assert self.cg is not None, "no direction: " + self.reason
        return self.cg.solution

    def rejected(self, params: Sequence[nn.Parameter], reason: str, line_search_steps: int = 0) -> StepResult:
        """Restore ``params`` to theta_old bit for bit and report the rejection."""
        write_parameters(self.theta_old, params)
        residual = math.nan if self.cg is None else self.cg.residual_norm
        iterations = 0 if self.cg is None else self.cg.iterations
        return StepResult(False, reason, 0.0, 0.0, 0.0, line_search_steps, residual, iterations, 0.0)


def natural_gradient_direction(
    params: Sequence[nn.Parameter],
    objective: th.Tensor,
    fisher_product: MatVec,
    cg_max_iter: int,
    cg_x0: th.Tensor | None = None,
    cg_residual_tol: float = 1e-10,
) -> NaturalGradient:
    """
    g = grad of the surrogate at theta_old and s ~ F^-1 g by conjugate gradient; a non-finite
    surrogate, gradient or solution gives no direction (``reason`` says which).

    :param params: parameters moved by the step (the actor's)
    :param objective: surrogate at theta_old, attached to the graph of ``params``
    :param fisher_product: function v -> (F + c I) v at theta_old
    :param cg_max_iter: maximum conjugate-gradient iterations
    :param cg_x0: conjugate-gradient starting point (zeros by default)
    :param cg_residual_tol: conjugate-gradient tolerance on the squared residual norm
    """
    theta_old = th.nn.utils.parameters_to_vector(params).detach().clone()
    baseline = float(objective.detach())
    if not math.isfinite(baseline):
        return NaturalGradient(theta_old, baseline, reason="non-finite surrogate")
    gradient = flat_grad(objective, params, retain_graph=True)
    if not bool(th.isfinite(gradient).all()):
        return NaturalGradient(theta_old, baseline, reason="non-finite gradient")
    cg = conjugate_gradient(fisher_product, gradient, max_iter=cg_max_iter, residual_tol=cg_residual_tol, x0=cg_x0)
    if not (bool(th.isfinite(cg.solution).all()) and math.isfinite(cg.residual_norm)):
        return NaturalGradient(theta_old, baseline, gradient, cg, "non-finite conjugate-gradient solution")
    return NaturalGradient(theta_old, baseline, gradient, cg)


def trust_region_update(
    params: Sequence[nn.Parameter],
    natural: NaturalGradient,
    fisher_product: MatVec,
    evaluate: Callable[[], tuple[float, float]],
    max_kl: float,
    shrinking_factor: float,
    line_search_max_iter: int,
) -> StepResult:
    """
    The trust-region step along a natural-gradient direction: maximal step
    beta = sqrt(2 delta / s^T F s), then a backtracking line search on theta_old + fraction *
    beta * s. When there is no direction, any quantity is non-finite or no candidate passes,
    ``params`` are restored to theta_old bit for bit and the reason is returned.

    :param params: parameters moved by the step (the actor's)
    :param natural: the direction (:func:`natural_gradient_direction`)
    :param fisher_product: function v -> (F + c I) v at theta_old
    :param evaluate: function returning (surrogate, constraint value) at the current values of
        ``params``; called without gradient tracking
    :param max_kl: the trust-region radius delta
    :param shrinking_factor: line-search shrinking factor in (0, 1)
    :param line_search_max_iter: number of candidate steps of the line search
    """
    if natural.reason:
        return natural.rejected(params, natural.reason)
    assert natural.gradient is not None and natural.cg is not None
    direction = natural.direction
    beta = max_step_length(direction, fisher_product(direction), max_kl)
    if not math.isfinite(beta):
        return natural.rejected(params, "non-positive curvature s^T F s")
    full_step = beta * direction
    theta_old = natural.theta_old

    def evaluate_fraction(fraction: float) -> tuple[float, float]:
        write_parameters(theta_old + fraction * full_step, params)
        with th.no_grad():
            return evaluate()

    search = backtracking_line_search(evaluate_fraction, natural.baseline, max_kl, shrinking_factor, line_search_max_iter)
    if not search.success:
        return natural.rejected(params, search.reason, search.n_evaluations)
    write_parameters(theta_old + search.step_fraction * full_step, params)
    expected = float(th.dot(natural.gradient, full_step)) * search.step_fraction
    return StepResult(
        accepted=True,
        reason="",
        kl=search.kl,
        surrogate_gain=search.objective - natural.baseline,
        expected_gain=expected,
        line_search_steps=search.n_evaluations,
        cg_residual=natural.cg.residual_norm,
        cg_iterations=natural.cg.iterations,
        step_fraction=search.step_fraction,
    )


def natural_gradient_step(
    params: Sequence[nn.Parameter],
    objective: th.Tensor,
    fisher_product: MatVec,
    evaluate: Callable[[], tuple[float, float]],
    max_kl: float,
    cg_max_iter: int,
    shrinking_factor: float,
    line_search_max_iter: int,
    cg_x0: th.Tensor | None = None,
    cg_residual_tol: float = 1e-10,
) -> StepResult:
    """
    One TRPO update of ``params``: :func:`natural_gradient_direction` (g, then s ~ F^-1 g by
    conjugate gradient), then :func:`trust_region_update` (maximal step, line search, exact
    restore on rejection).

    :param params: parameters moved by the step (the actor's)
    :param objective: surrogate at theta_old, attached to the graph of ``params``
    :param fisher_product: function v -> (F + c I) v at theta_old
    :param evaluate: function returning (surrogate, mean KL to pi_old) at the current
        values of ``params``; called without gradient tracking
    :param max_kl: the trust-region radius delta
    :param cg_max_iter: maximum conjugate-gradient iterations
    :param shrinking_factor: line-search shrinking factor in (0, 1)
    :param line_search_max_iter: number of candidate steps of the line search
    :param cg_x0: conjugate-gradient starting point (zeros by default)
    :param cg_residual_tol: conjugate-gradient tolerance on the squared residual norm
    :return: the measurements of the step
    """
    natural = natural_gradient_direction(params, objective, fisher_product, cg_max_iter, cg_x0, cg_residual_tol)
    return trust_region_update(params, natural, fisher_product, evaluate, max_kl, shrinking_factor, line_search_max_iter)


def fixed_natural_gradient_update(
    params: Sequence[nn.Parameter],
    natural: NaturalGradient,
    step_size: float,
    evaluate: Callable[[], tuple[float, float]],
) -> StepResult:
    """
    The natural-gradient baseline of the paper's comparison: theta = theta_old + step_size * s,
    s ~ F^-1 g, with no line search and no check of the constraint. The step is taken whatever it
    does to the surrogate; only a missing direction, or a non-finite surrogate or constraint
    value after the step, restores theta_old (bit for bit) and reports why.

    :param params: parameters moved by the step (the actor's)
    :param natural: the direction (:func:`natural_gradient_direction`)
    :param step_size: the fixed step length (> 0)
    :param evaluate: function returning (surrogate, constraint value) at the current values of
        ``params``; called without gradient tracking (measured for the logs only)
    """
    if natural.reason:
        return natural.rejected(params, natural.reason)
    assert natural.gradient is not None and natural.cg is not None
    full_step = step_size * natural.direction
    write_parameters(natural.theta_old + full_step, params)
    with th.no_grad():
        objective, kl = evaluate()
    if not (math.isfinite(objective) and math.isfinite(kl)):
        return natural.rejected(params, "non-finite surrogate or KL", 1)
    return StepResult(
        accepted=True,
        reason="",
        kl=kl,
        surrogate_gain=objective - natural.baseline,
        expected_gain=float(th.dot(natural.gradient, full_step)),
        line_search_steps=1,
        cg_residual=natural.cg.residual_norm,
        cg_iterations=natural.cg.iterations,
        step_fraction=1.0,
    )


def penalized_update(
    params: Sequence[nn.Parameter],
    natural: NaturalGradient,
    penalty: float,
    evaluate: Callable[[], tuple[float, float]],
    kl_max: Callable[[], float],
    shrinking_factor: float,
    line_search_max_iter: int,
) -> StepResult:
    """
    A step that maximises the penalised surrogate L(theta) - penalty * kl_max(theta) (Algorithm 1
    of Schulman et al. 2015 when ``penalty`` is Theorem 1's C in the surrogate's scale and
    ``kl_max`` is D_KL^max(pi_old, pi_theta)) by a backtracking line search along s ~ F^-1 g.

    The first candidate is s / penalty, the maximiser of the quadratic model
    g^T d - penalty * 1/2 d^T F d (the mean KL's quadratic model standing in for the maximum);
    the fractions 1, r, r^2, ... of it are tried and the first one that raises the penalised
    surrogate strictly above its value at theta_old (L(theta_old), the penalty being 0 there) is
    accepted. When none does, or any value is non-finite, theta_old is restored bit for bit.

    :param params: parameters moved by the step (the actor's)
    :param natural: the direction (:func:`natural_gradient_direction`)
    :param penalty: the penalty coefficient (> 0, finite)
    :param evaluate: function returning (surrogate, constraint value) at the current values of
        ``params``; called without gradient tracking
    :param kl_max: the penalised divergence at the current values of ``params``, without gradient tracking
    :param shrinking_factor: r in (0, 1)
    :param line_search_max_iter: number of candidate steps
    """
    if natural.reason:
        return natural.rejected(params, natural.reason)
    assert natural.gradient is not None and natural.cg is not None
    if not (math.isfinite(penalty) and penalty > 0.0):
        return natural.rejected(params, "non-finite surrogate or KL")
    full_step = natural.direction / penalty
    theta_old = natural.theta_old

    def evaluate_fraction(fraction: float) -> tuple[float, float]:
        write_parameters(theta_old + fraction * full_step, params)
        with th.no_grad():
            objective, _ = evaluate()
            divergence = kl_max()
        return objective - penalty * divergence, divergence

    search = backtracking_line_search(evaluate_fraction, natural.baseline, math.inf, shrinking_factor, line_search_max_iter)
    if not search.success:
        return natural.rejected(params, search.reason, search.n_evaluations)
    write_parameters(theta_old + search.step_fraction * full_step, params)
    with th.no_grad():
        objective, kl = evaluate()
    return StepResult(
        accepted=True,
        reason="",
        kl=kl,
        surrogate_gain=objective - natural.baseline,
        expected_gain=float(th.dot(natural.gradient, full_step)) * search.step_fraction,
        line_search_steps=search.n_evaluations,
        cg_residual=natural.cg.residual_norm,
        cg_iterations=natural.cg.iterations,
        step_fraction=search.step_fraction,
    )
