"""
The estimator corrections of issue 26, each checked on a bandit whose exact policy gradient is
known: truncated importance weights that keep their gradient, the combined estimator's scale,
the states of the trust region, the refused combinations and the logged statistics.
"""

from __future__ import annotations

import torch as th

from sb3_trpo_plus.surrogate import self_normalized_surrogate

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
