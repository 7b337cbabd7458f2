"""
The theory's statements as measured numbers on exact finite MDPs (:mod:`benchmarks.tabular.mdp`).

Every check returns a slack or an error: a bound holds when its slack (true value minus bound) is
>= 0, an identity when its error is ~0. The KL and total variation come from
:mod:`sb3_trpo_plus.bound` on SB3 ``CategoricalDistribution`` objects, and the surrogate from the
package's own estimators in :mod:`sb3_trpo_plus.surrogate`, so what is checked is the package.
"""

from __future__ import annotations

import numpy as np
import torch as th
from stable_baselines3.common.distributions import CategoricalDistribution

from benchmarks.tabular.mdp import Evaluation, FiniteMDP, evaluate, local_approximation, policy_advantage, softmax
from sb3_trpo_plus.bound import kl_max, penalty_coefficient, per_state_kl, per_state_tv, tv_max
from sb3_trpo_plus.surrogate import exact_sum_surrogate, importance_sampled_surrogate, self_normalized_surrogate


def categorical(policy: np.ndarray) -> CategoricalDistribution:
    """
    An SB3 categorical distribution with one state per row of ``policy`` (float64). A probability
    that underflowed to 0 gives a logit of -inf, which torch's KL treats exactly (an infinite KL
    where the first distribution has mass and the second none).
    """
    with np.errstate(divide="ignore"):
        logits = th.as_tensor(np.log(policy), dtype=th.float64)
    return CategoricalDistribution(policy.shape[1]).proba_distribution(action_logits=logits)


def kl_and_tv(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-state KL(old || new) and total variation, by :mod:`sb3_trpo_plus.bound`."""
    p, q = categorical(old), categorical(new)
    return per_state_kl(p, q).numpy(), per_state_tv(p, q).numpy()


def identity_error(mdp: FiniteMDP, old: Evaluation, new_policy: np.ndarray) -> float:
    """
    |eta(pi~) - eta(pi) - sum_s rho_pi~(s) sum_a pi~(a|s) A_pi(s, a)|, eq. (2) of the paper: an
    exact identity, so only rounding remains.
    """
    new = evaluate(mdp, new_policy)
    return abs(new.eta - old.eta - policy_advantage(old, new_policy, visitation=new.visitation))


def theorem1_slacks(mdp: FiniteMDP, old: Evaluation, new_policy: np.ndarray) -> tuple[float, float]:
    """
    Slacks of Theorem 1, eta(pi~) - (L_pi(pi~) - C * bound term), in its KL form (D_KL^max) and
    its total-variation form ((D_TV^max)^2), C = 4 eps gamma / (1 - gamma)^2 and
    eps = max_{s,a} |A_pi(s, a)|.
    """
    c = penalty_coefficient(float(np.abs(old.advantages).max()), mdp.gamma)
    p, q = categorical(old.policy), categorical(new_policy)
    surrogate = local_approximation(old, new_policy)
    eta_new = evaluate(mdp, new_policy).eta
    return (
        eta_new - (surrogate - c * float(kl_max(p, q))),
        eta_new - (surrogate - c * float(tv_max(p, q)) ** 2),
    )


def cpi_slack(mdp: FiniteMDP, old: Evaluation, other_policy: np.ndarray, alpha: float) -> float:
    """
    Slack of Kakade and Langford's bound for the mixture pi_new = (1 - alpha) pi + alpha pi' in
    the paper's form (eqs. (5) and (6)):

        eta(pi_new) >= L_pi(pi_new) - 2 eps gamma alpha^2 / (1 - gamma)^2,
        eps = max_s |sum_a pi'(a|s) A_pi(s, a)|.
    """
    mixture = (1.0 - alpha) * old.policy + alpha * other_policy
    epsilon = float(np.abs((other_policy * old.advantages).sum(axis=1)).max())
    penalty = 2.0 * epsilon * mdp.gamma * alpha**2 / (1.0 - mdp.gamma) ** 2
    return evaluate(mdp, mixture).eta - (local_approximation(old, mixture) - penalty)


def _pairs(n_states: int, n_actions: int) -> tuple[th.Tensor, th.Tensor]:
    """Every (state, action) pair: state indices and action indices, S * A rows."""
    states = th.arange(n_states).repeat_interleave(n_actions)
    actions = th.arange(n_actions).repeat(n_states)
    return states, actions


def package_surrogates(old: Evaluation, new_policy: np.ndarray, gamma: float) -> dict[str, float]:
    """
    The package's surrogate estimators evaluated exactly, on the enumerated batch of every
    (s, a) pair, for comparison with (1 - gamma) (L_pi(pi~) - eta(pi)).

    The batch mean of :func:`importance_sampled_surrogate` is an exact expectation over
    s ~ d_pi = (1 - gamma) rho_pi and a ~ q when every row is weighted by its probability
    d_pi(s) q(a|s): the weight, times the number of rows, is folded into the advantage fed to it.
    Both samplings of the paper are evaluated: single path (q = pi) and uniform q. The vine's
    all-actions estimators (:func:`exact_sum_surrogate`, :func:`self_normalized_surrogate`, one
    group per state, all actions branched) get the state weight S d_pi(s) folded into Q (a
    per-state factor; the self-normalised one then sums pi~ Q over actions, its weights adding
    up to 1 per state).
    """
    n_states, n_actions = old.policy.shape
    states, actions = _pairs(n_states, n_actions)
    new_log = th.as_tensor(np.log(new_policy), dtype=th.float64)[states, actions]
    advantages = th.as_tensor(old.advantages, dtype=th.float64)[states, actions]
    state_weight = th.as_tensor((1.0 - gamma) * old.visitation, dtype=th.float64)[states]
    rows = n_states * n_actions
    samplers = {"single_path": old.policy, "uniform_q": np.full_like(old.policy, 1.0 / n_actions)}
    found = {}
    for name, q in samplers.items():
        q_rows = th.as_tensor(q, dtype=th.float64)[states, actions]
        fed = rows * state_weight * q_rows * advantages
        found[name] = float(importance_sampled_surrogate(new_log, th.log(q_rows), fed))
    per_state_q = n_states * state_weight * advantages
    found["vine_exact_sum"] = float(exact_sum_surrogate(new_log, per_state_q, states, n_states))
    uniform_log = th.full_like(new_log, -float(np.log(n_actions)))
    found["vine_self_normalized"] = float(self_normalized_surrogate(new_log, uniform_log, per_state_q, states, n_states))
    return found


def surrogate_errors(old: Evaluation, new_policy: np.ndarray, gamma: float) -> dict[str, float]:
    """|package estimator - (1 - gamma) (L_pi(pi~) - eta(pi))| for every estimator of :func:`package_surrogates`."""
    target = (1.0 - gamma) * policy_advantage(old, new_policy)
    return {name: abs(value - target) for name, value in package_surrogates(old, new_policy, gamma).items()}


def surrogate_gradient_error(mdp: FiniteMDP, logits: np.ndarray, step: float = 1e-5) -> float:
    """
    First-order match at pi~ = pi (eq. (4)): the gradient of the package's single-path surrogate
    w.r.t. the logits of pi~ at pi~ = pi, by autograd, against (1 - gamma) times the gradient
    of eta by central differences. Returns the largest absolute difference over the logits.
    """
    old = evaluate(mdp, softmax(logits))
    n_states, n_actions = logits.shape
    states, actions = _pairs(n_states, n_actions)
    theta = th.tensor(logits, dtype=th.float64, requires_grad=True)
    new_log = th.log_softmax(theta, dim=1)[states, actions]
    q_rows = th.as_tensor(old.policy, dtype=th.float64)[states, actions]
    weight = th.as_tensor((1.0 - mdp.gamma) * old.visitation, dtype=th.float64)[states] * q_rows
    fed = n_states * n_actions * weight * th.as_tensor(old.advantages, dtype=th.float64)[states, actions]
    (gradient,) = th.autograd.grad(importance_sampled_surrogate(new_log, th.log(q_rows), fed), theta)
    numeric = np.zeros_like(logits)
    for index in np.ndindex(*logits.shape):
        shift = np.zeros_like(logits)
        shift[index] = step
        numeric[index] = (evaluate(mdp, softmax(logits + shift)).eta - evaluate(mdp, softmax(logits - shift)).eta) / (2 * step)
    return float(np.abs(gradient.numpy() - (1.0 - mdp.gamma) * numeric).max())
