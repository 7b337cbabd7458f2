"""Shared set-up of the test suite: one intra-op thread, small SB3 policies, parameter snapshots."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import ConstantSchedule

# The suite runs on small machines shared with other jobs: one thread per test process, which is
# also what makes float results (and thus the parity tolerances) independent of the core count.
th.set_num_threads(1)


def build_policy(
    action_space: spaces.Space,
    seed: int,
    obs_dim: int = 5,
    net_arch: list[int] | None = None,
    perturb: float = 0.3,
    policy_class: type[ActorCriticPolicy] = ActorCriticPolicy,
    **kwargs: Any,
) -> ActorCriticPolicy:
    """
    A small SB3 actor-critic policy on a Box observation space, with its weights moved away from
    the orthogonal initialisation (whose near-zero action head makes every distribution almost
    uniform and hides errors in the Fisher information).
    """
    th.manual_seed(seed)
    policy = policy_class(
        spaces.Box(-2.0, 2.0, (obs_dim,)),
        action_space,
        ConstantSchedule(1e-3),
        net_arch=[16, 16] if net_arch is None else net_arch,
        **kwargs,
    )
    if perturb:
        with th.no_grad():
            for param in policy.parameters():
                param.add_(perturb * th.randn_like(param))
    return policy


def actor_parameters(policy: ActorCriticPolicy, obs: th.Tensor) -> list[th.nn.Parameter]:
    """The parameters the action distribution depends on (followed through autograd)."""
    from sb3_trpo_plus.distributions import distribution_parameters

    params = [p for p in policy.parameters() if p.requires_grad]
    outputs = distribution_parameters(policy.get_distribution(obs))
    grads = th.autograd.grad([out.sum() for out in outputs], params, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


def flat(params: Any) -> th.Tensor:
    """A detached copy of parameters as one vector."""
    return th.nn.utils.parameters_to_vector(list(params)).detach().clone()


@pytest.fixture
def make_policy() -> Callable[..., ActorCriticPolicy]:
    return build_policy


@pytest.fixture
def small_hyperparams() -> dict[str, int]:
    """Budget of the integration tests: one iteration is 64 steps per env."""
    return {"n_steps": 64, "batch_size": 32, "n_critic_updates": 2}


def step_problem(space: spaces.Space, seed: int = 0) -> tuple[ActorCriticPolicy, list[th.nn.Parameter], th.Tensor, Any, Any]:
    """
    A policy step's inputs on a small policy (:func:`build_policy`) over 64 random states: the
    policy, its actor parameters, the states, the importance-sampled surrogate of random
    advantages for actions drawn from the policy, and those actions.
    """
    from sb3_trpo_plus.surrogate import importance_sampled_surrogate

    th.manual_seed(seed)
    policy = build_policy(space, seed)
    obs = th.randn(64, 5)
    params = actor_parameters(policy, obs)
    with th.no_grad():
        old = policy.get_distribution(obs)
        actions = old.sample()
        log_q = old.log_prob(actions)
    advantages = th.randn(64)

    def objective(distribution: Any) -> th.Tensor:
        return importance_sampled_surrogate(distribution.log_prob(actions), log_q, advantages)

    return policy, params, obs, objective, actions

