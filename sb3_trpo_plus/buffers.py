"""
The vine's batch: the rollout-set states, the branch actions with their log-probability under
the sampling distribution q that drew them, and the branch Q estimates. (Single-path batches are
SB3's rollout samples: there q = pi_old, so log q is the stored ``old_log_prob``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch as th
from stable_baselines3.common.type_aliases import TensorDict


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
    """

    observations: th.Tensor | TensorDict
    actions: th.Tensor
    log_q: th.Tensor
    q_values: th.Tensor
    group: th.Tensor
    n_states: int
    all_actions: bool
