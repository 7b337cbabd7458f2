"""
The vine's batch: the rollout-set states, the branch actions with their log-probability under
the sampling distribution q that drew them, and the branch Q estimates. (Single-path batches are
SB3's rollout samples: there q = pi_old, so log q is the stored ``old_log_prob``.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import TensorDict

from sb3_trpo_plus import observations as batches


@dataclass
class VineBatch:
    """
    What one vine iteration gives the surrogate: for N rollout-set states and K actions each,
    rows ordered state by state (row n * K + k is action k of state n).

    :param observations: the state of every row (each rollout-set state repeated K times)
    :param actions: a_{n,k}, in the format the policy's distribution takes
    :param log_q: log q(a_{n,k} | s_n) (zeros when every action of a finite space is branched)
    :param q_values: the branch estimates of Q(s_n, a_{n,k})
    :param group: n, the rollout-set state of every row
    :param n_states: N
    :param all_actions: whether the K actions are the whole finite action space (exact sum estimator)
    :param partial_returns: every row's discounted branch rewards (its Q without the bootstrap)
    :param bootstrap_discount: gamma^L of every row whose branch is bootstrapped, 0 for the others
    :param bootstrap_rows: the rows whose branch is bootstrapped
    :param bootstrap_observations: the states those branches stopped in (NumPy, as the policy
        sees them; None when no branch is bootstrapped)
    :param critic_observations: value-function targets from the branches: the rollout-set states
        and every state a branch continued from (NumPy; None when not recorded)
    :param critic_returns: their targets (V(s_n) = E_{a ~ pi_old} Q(s_n, a) for a rollout-set
        state, the discounted return-to-go for a visited state)
    :param trunk: the trunk's samples (SB3's rollout samples), set by the algorithm for the
        estimators that also use the trunk
    """

    observations: th.Tensor | TensorDict
    actions: th.Tensor
    log_q: th.Tensor
    q_values: th.Tensor
    group: th.Tensor
    n_states: int
    all_actions: bool
    partial_returns: th.Tensor | None = None
    bootstrap_discount: th.Tensor | None = None
    bootstrap_rows: th.Tensor | None = None
    bootstrap_observations: np.ndarray | dict[str, np.ndarray] | None = None
    critic_observations: np.ndarray | dict[str, np.ndarray] | None = None
    critic_returns: np.ndarray | None = None
    trunk: Any = None

    def rebootstrapped(self, bootstrap_values: th.Tensor) -> VineBatch:
        """
        This batch with every bootstrapped Q-value completed by ``bootstrap_values`` (the values
        of :attr:`bootstrap_observations`, e.g. from a refitted critic) instead of the values it
        was completed with during the branches.
        """
        if self.partial_returns is None or self.bootstrap_discount is None or self.bootstrap_rows is None:
            return self
        q_values = self.partial_returns.clone()
        rows = self.bootstrap_rows
        q_values[rows] += self.bootstrap_discount[rows] * bootstrap_values.reshape(-1).to(q_values.dtype)
        return replace(self, q_values=q_values)


def every_kth(samples: Any, k: int) -> Any:
    """Every ``k``-th sample of SB3's rollout samples (observations, actions, log-probabilities, advantages)."""
    if k <= 1:
        return samples
    every = slice(None, None, k)
    return samples._replace(
        observations=batches.index(samples.observations, every),
        actions=samples.actions[every],
        old_log_prob=samples.old_log_prob[every],
        advantages=samples.advantages[every],
    )
