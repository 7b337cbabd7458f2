"""
Exact policy evaluation on finite MDPs (NumPy, float64, linear solves, no sampling).

An MDP has S states and A actions: transitions P[s, a, s'], rewards R[s, a], a discount gamma in
[0, 1) and an initial distribution rho0. A stationary policy is an (S, A) table of action
probabilities; here it is always a softmax of an (S, A) table of logits. For a policy pi:

    V_pi = (I - gamma P_pi)^{-1} r_pi,   Q_pi = R + gamma P V_pi,   A_pi = Q_pi - V_pi,
    eta(pi) = rho0 . V_pi,
    rho_pi = (I - gamma P_pi^T)^{-1} rho0,

with P_pi[s, s'] = sum_a pi(a|s) P[s, a, s'] and r_pi[s] = sum_a pi(a|s) R[s, a]. rho_pi is the
paper's unnormalised discounted visitation frequency, sum_t gamma^t P(s_t = s), of total mass
1 / (1 - gamma); (1 - gamma) rho_pi is the normalised discounted state distribution a batch mean
estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FiniteMDP:
    """
    A finite discounted MDP.

    :param transitions: P[s, a, s'], shape (S, A, S), rows summing to 1
    :param rewards: R[s, a], shape (S, A)
    :param gamma: discount factor in [0, 1)
    :param initial: rho0, shape (S,), summing to 1
    """

    transitions: np.ndarray
    rewards: np.ndarray
    gamma: float
    initial: np.ndarray

    @property
    def n_states(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.rewards.shape[1])


def random_mdp(rng: np.random.Generator, n_states: int, n_actions: int, gamma: float, concentration: float = 1.0) -> FiniteMDP:
    """
    A random MDP: every P[s, a, .] and rho0 drawn from a symmetric Dirichlet law (a small
    ``concentration`` gives nearly deterministic transitions), rewards uniform in [-1, 1].

    :param rng: NumPy generator
    :param n_states: S >= 1
    :param n_actions: A >= 1
    :param gamma: discount factor in [0, 1)
    :param concentration: Dirichlet parameter of the transition rows (> 0)
    :return: the MDP
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    transitions = rng.dirichlet(np.full(n_states, concentration), size=(n_states, n_actions))
    rewards = rng.uniform(-1.0, 1.0, size=(n_states, n_actions))
    initial = rng.dirichlet(np.ones(n_states))
    return FiniteMDP(transitions, rewards, gamma, initial)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of an (S, A) table of logits: the tabular softmax policy."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Evaluation:
    """
    Everything exact about one policy on one MDP.

    :param policy: pi(a|s), shape (S, A)
    :param values: V_pi, shape (S,)
    :param q_values: Q_pi, shape (S, A)
    :param advantages: A_pi = Q_pi - V_pi, shape (S, A)
    :param eta: expected discounted return from rho0
    :param visitation: rho_pi, the unnormalised discounted visitation frequencies, shape (S,)
    """

    policy: np.ndarray
    values: np.ndarray
    q_values: np.ndarray
    advantages: np.ndarray
    eta: float
    visitation: np.ndarray


def evaluate(mdp: FiniteMDP, policy: np.ndarray) -> Evaluation:
    """
    Exact V, Q, A, eta and rho of ``policy`` by two linear solves.

    :param mdp: the MDP
    :param policy: pi(a|s), shape (S, A)
    :return: the evaluation
    """
    p_pi = np.einsum("sa,sat->st", policy, mdp.transitions)
    r_pi = (policy * mdp.rewards).sum(axis=1)
    identity = np.eye(mdp.n_states)
    values = np.linalg.solve(identity - mdp.gamma * p_pi, r_pi)
    q_values = mdp.rewards + mdp.gamma * mdp.transitions @ values
    visitation = np.linalg.solve(identity - mdp.gamma * p_pi.T, mdp.initial)
    return Evaluation(policy, values, q_values, q_values - values[:, None], float(mdp.initial @ values), visitation)


def policy_advantage(evaluation: Evaluation, new_policy: np.ndarray, visitation: np.ndarray | None = None) -> float:
    """
    sum_s rho(s) sum_a pi~(a|s) A_pi(s, a), with rho = rho_pi by default (then it is
    L_pi(pi~) - eta(pi)); with rho = rho_pi~ it is eta(pi~) - eta(pi) (eq. (2) of the paper).

    :param evaluation: the evaluation of pi (its advantages and visitation)
    :param new_policy: pi~(a|s), shape (S, A)
    :param visitation: the state weights rho (rho_pi when None)
    :return: the weighted advantage of pi~ under pi
    """
    weights = evaluation.visitation if visitation is None else visitation
    return float(weights @ (new_policy * evaluation.advantages).sum(axis=1))


def local_approximation(evaluation: Evaluation, new_policy: np.ndarray) -> float:
    """
    The paper's L_pi(pi~) = eta(pi) + sum_s rho_pi(s) sum_a pi~(a|s) A_pi(s, a) (eq. (3)).

    :param evaluation: the evaluation of the current policy pi
    :param new_policy: pi~(a|s), shape (S, A)
    :return: L_pi(pi~)
    """
    return evaluation.eta + policy_advantage(evaluation, new_policy)
