"""
A refactoring guard: the SHA-256 of TRPOPlus's parameters after three iterations on a fixed set
of cases (single path and vine, every action-space kind, both Fisher products, dict observations,
both branch pools). A change that only moves code must print the same lines before and after.

    python scripts/param_hashes.py [--only NAME ...] > hashes.txt
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnvMultiBinary, IdentityEnvMultiDiscrete, SimpleMultiObsEnv

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.env_state import register_replay_env

SMALL = {"net_arch": [16, 16]}


def _multi_obs_env() -> SimpleMultiObsEnv:
    """SB3's dict-observation grid, with a fixed start (its random start draws from NumPy's global generator)."""
    return SimpleMultiObsEnv(random_start=False)


#: name -> (env id or factory, n_envs, TRPOPlus keyword arguments)
CASES: dict[str, tuple[str | Callable[[], Any], int, dict[str, Any]]] = {
    "cartpole_single_path": ("CartPole-v1", 2, {"n_steps": 128}),
    "pendulum_kl_hessian": ("Pendulum-v1", 2, {"n_steps": 128, "fisher": "kl_hessian"}),
    "pendulum_gsde_subsample": ("Pendulum-v1", 1, {"n_steps": 256, "use_sde": True, "fvp_subsample": 0.5}),
    "pendulum_fast_off": ("Pendulum-v1", 2, {"n_steps": 128, "fast_paths": False}),
    "multidiscrete_single_path": (lambda: IdentityEnvMultiDiscrete(dim=3), 2, {"n_steps": 128}),
    "multibinary_single_path": (lambda: IdentityEnvMultiBinary(dim=4), 2, {"n_steps": 128}),
    "cartpole_vine_defaults": ("CartPole-v1", 1, {"n_steps": 256, "sampling": "vine"}),
    # sampled branch actions with every vine_kwargs default (10-step branches, a 5% share)
    "pendulum_vine_defaults": ("Pendulum-v1", 2, {"n_steps": 1024, "sampling": "vine"}),
    "pendulum_vine_scaled": (
        "Pendulum-v1",
        1,
        {"n_steps": 256, "sampling": "vine", "q": "scaled", "vine_kwargs": {"n_states": 6, "horizon": 8}},
    ),
    "acrobot_vine_paper": (
        "Acrobot-v1",
        1,
        {
            "n_steps": 256,
            "sampling": "vine",
            "q": "uniform",
            "vine_kwargs": {
                "n_states": 8,
                "all_actions": False,
                "state_selection": "geometric",
                "trust_region_states": "rollout_set",
                "estimator": "vine",
                "critic_targets": "trunk",
                "refit_critic_first": False,
                "common_random_numbers": False,
            },
        },
    ),
    "pendulum_vine_subproc": (
        "Pendulum-v1",
        1,
        {
            "n_steps": 128,
            "sampling": "vine",
            "vine_kwargs": {"n_states": 3, "branch_vec_env": "subproc", "n_branch_workers": 2},
        },
    ),
    "multi_obs_single_path": (_multi_obs_env, 1, {"policy": "MultiInputPolicy", "n_steps": 128}),
    "multi_obs_vine": (_multi_obs_env, 1, {"policy": "MultiInputPolicy", "n_steps": 128, "sampling": "vine"}),
}


def parameter_hash(name: str, iterations: int = 3, seed: int = 0) -> str:
    """The SHA-256 of every parameter (policy and critic) after ``iterations`` iterations of ``name``."""
    env_id, n_envs, kwargs = CASES[name]
    kwargs = dict(kwargs)
    policy = kwargs.pop("policy", "MlpPolicy")
    np.random.seed(seed)  # SimpleMultiObsEnv draws its observation tables from the global generator
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = TRPOPlus(policy, env, seed=seed, batch_size=64, policy_kwargs=SMALL, **kwargs)
    model.learn(iterations * model.n_steps * n_envs)
    digest = hashlib.sha256()
    for key, tensor in model.policy.state_dict().items():
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    model.env.close()
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    args = parser.parse_args()
    th.set_num_threads(1)
    register_replay_env(SimpleMultiObsEnv)  # deterministic given its seed and the actions
    for name in args.only or CASES:
        print(f"{name} {parameter_hash(name)}", flush=True)


if __name__ == "__main__":
    main()
