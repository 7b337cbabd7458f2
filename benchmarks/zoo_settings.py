"""
The RL Zoo's tuned TRPO hyperparameters (rl_zoo3 2.x, ``hyperparams/trpo.yml``) for the
benchmark environments, and helpers that build a model and its environment from them.

The settings are copied here so the benchmarks run without rl_zoo3; when rl_zoo3 is installed,
:func:`check_against_rl_zoo3` compares this copy with its ``trpo.yml`` and warns on any
difference. MuJoCo environments use the zoo's ``*mujoco-defaults`` block (declared there for
-v4; used here for -v5). ``normalize: true`` means a ``VecNormalize`` wrapper (observations
and rewards, the zoo's defaults).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

_MUJOCO_DEFAULTS: dict[str, Any] = {
    "normalize": True,
    "n_envs": 2,
    "n_timesteps": 1_000_000,
    "policy": "MlpPolicy",
    "batch_size": 128,
    "n_steps": 1024,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "sub_sampling_factor": 1,
    "cg_max_steps": 25,
    "cg_damping": 0.1,
    "n_critic_updates": 20,
    "learning_rate": 1e-3,
}

ZOO_TRPO: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "n_envs": 2,
        "n_timesteps": 100_000,
        "policy": "MlpPolicy",
        "n_steps": 512,
        "batch_size": 512,
        "cg_damping": 1e-3,
        "gae_lambda": 0.98,
        "gamma": 0.99,
        "learning_rate": 1e-3,
        "n_critic_updates": 20,
    },
    "Pendulum-v1": {
        "n_envs": 2,
        "n_timesteps": 100_000,
        "policy": "MlpPolicy",
        "n_steps": 1024,
        "gamma": 0.9,
        "n_critic_updates": 15,
        "use_sde": True,
        "sde_sample_freq": 4,
    },
    "LunarLander-v3": {
        "n_envs": 2,
        "n_timesteps": 200_000,
        "policy": "MlpPolicy",
        "n_steps": 512,
        "cg_damping": 0.01,
        "gae_lambda": 0.98,
        "gamma": 0.99,
        "learning_rate": 1e-3,
        "n_critic_updates": 15,
    },
    "Hopper-v5": dict(_MUJOCO_DEFAULTS),
    "HalfCheetah-v5": {**_MUJOCO_DEFAULTS, "target_kl": 0.04},
    "Walker2d-v5": dict(_MUJOCO_DEFAULTS),
}

# The zoo's key for each benchmark env (its MuJoCo entries are -v4).
ZOO_KEY = {name: name.replace("-v5", "-v4") for name in ZOO_TRPO}

# Keys that describe the run rather than the algorithm.
_RUN_KEYS = ("n_envs", "n_timesteps", "policy", "normalize")


def settings(env_id: str) -> dict[str, Any]:
    """A copy of the zoo settings of ``env_id`` (run keys and algorithm keys together)."""
    if env_id not in ZOO_TRPO:
        raise ValueError(f"no zoo TRPO settings for {env_id!r}; known: {sorted(ZOO_TRPO)}")
    return copy.deepcopy(ZOO_TRPO[env_id])


def algo_kwargs(env_id: str) -> dict[str, Any]:
    """The constructor arguments of TRPO/TRPOPlus for ``env_id`` (without policy and env)."""
    return {k: v for k, v in settings(env_id).items() if k not in _RUN_KEYS}


def make_env(env_id: str, seed: int, normalize: bool | None = None, n_envs: int | None = None) -> VecEnv:
    """
    The training VecEnv as the zoo builds it: ``make_vec_env`` (Monitor on every env,
    DummyVecEnv), then ``VecNormalize`` when the zoo settings say ``normalize: true``
    (or when ``normalize`` is given explicitly).
    """
    conf = settings(env_id)
    env = make_vec_env(env_id, n_envs=n_envs or conf["n_envs"], seed=seed)
    if conf.get("normalize", False) if normalize is None else normalize:
        env = VecNormalize(env, gamma=conf.get("gamma", 0.99))
    return env


def check_against_rl_zoo3() -> list[str]:
    """Differences between :data:`ZOO_TRPO` and the installed rl_zoo3's trpo.yml ([] if none or no rl_zoo3)."""
    try:
        import rl_zoo3
        import yaml
    except ImportError:
        return []
    path = Path(rl_zoo3.__file__).parent / "hyperparams" / "trpo.yml"
    if not path.exists():
        return []
    with open(path) as file:
        zoo = yaml.safe_load(file)
    problems = []
    for env_id, ours in ZOO_TRPO.items():
        theirs = zoo.get(ZOO_KEY[env_id])
        if theirs is None:
            problems.append(f"{ZOO_KEY[env_id]} missing from {path}")
            continue
        theirs = {k: (float(v) if isinstance(v, float) else v) for k, v in theirs.items()}
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                problems.append(f"{env_id}.{key}: ours={ours.get(key)!r} rl_zoo3={theirs.get(key)!r}")
    for problem in problems:
        warnings.warn(f"zoo settings differ from rl_zoo3: {problem}", stacklevel=2)
    return problems


if __name__ == "__main__":
    print(check_against_rl_zoo3() or "benchmarks/zoo_settings.py matches rl_zoo3's trpo.yml")
