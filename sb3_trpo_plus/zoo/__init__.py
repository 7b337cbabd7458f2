"""
RL Zoo integration: importing this package registers ``trpo_plus`` into rl_zoo3.

Needs the ``zoo`` extra (``pip install "sb3-trpo-plus[zoo]"``). Command line:
``trpo-plus-zoo train --algo trpo_plus --env CartPole-v1`` (or ``python -m sb3_trpo_plus.zoo``).
"""

from sb3_trpo_plus.zoo.configs import ALGO_NAME, default_config, resolve_config, shipped_configs, zoo_configs_dir
from sb3_trpo_plus.zoo.experiment import (
    HeartbeatSettings,
    TRPOPlusExperimentManager,
    ZooOptions,
    current_zoo_options,
    zoo_options,
)
from sb3_trpo_plus.zoo.hyperparams_opt import convert_trpo_plus_params, sample_trpo_plus_params
from sb3_trpo_plus.zoo.registration import register

register()

__all__ = [
    "ALGO_NAME",
    "HeartbeatSettings",
    "TRPOPlusExperimentManager",
    "ZooOptions",
    "convert_trpo_plus_params",
    "current_zoo_options",
    "default_config",
    "register",
    "resolve_config",
    "sample_trpo_plus_params",
    "shipped_configs",
    "zoo_configs_dir",
    "zoo_options",
]
