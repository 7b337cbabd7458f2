"""
Which parameters of a policy its action distribution depends on: those the trust-region step
moves and the critic fit must never move.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from sb3_trpo_plus.distributions import distribution_parameters, preserved_state


def probe_observation(space: spaces.Space) -> Any:
    """
    A valid observation of ``space`` built from its structure alone (zero, or the nearest bound,
    for a Box; the first value of a discrete space), touching no random generator: neither the
    space's own (``space.sample()`` would advance it) nor a global one.
    """
    if isinstance(space, spaces.Box):
        return np.clip(np.zeros(space.shape), space.low, space.high).astype(space.dtype)
    if isinstance(space, spaces.Discrete):
        return space.dtype.type(space.start)
    if isinstance(space, spaces.MultiDiscrete):
        return np.array(space.start, dtype=space.dtype)
    if isinstance(space, spaces.MultiBinary):
        return np.zeros(space.shape, dtype=space.dtype)
    if isinstance(space, spaces.Dict):
        return {key: probe_observation(subspace) for key, subspace in space.spaces.items()}
    # another kind of space: sample a private copy, whose generator is not the user's
    return copy.deepcopy(space).sample()


def find_actor_parameters(policy: ActorCriticPolicy, observation_space: spaces.Space) -> list[nn.Parameter]:
    """
    The parameters the action distribution depends on, found by following the autograd
    graph from the distribution's parameters on a probe observation (not by names, so
    custom policies and shared feature extractors are handled). The probe is built from the
    space's structure: sampling the user's space would advance its random generator, which
    SB3's identity environments also draw their states from. The probe's distribution, attached
    to its graph, is not left on the policy (:func:`~sb3_trpo_plus.distributions.preserved_state`).
    """
    obs, _ = policy.obs_to_tensor(probe_observation(observation_space))
    params = [p for p in policy.parameters() if p.requires_grad]
    with preserved_state(policy.action_dist):
        outputs = distribution_parameters(policy.get_distribution(obs))
        grads = th.autograd.grad([out.sum() for out in outputs], params, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]
