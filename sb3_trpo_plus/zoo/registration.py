"""
Registration of ``trpo_plus`` into rl_zoo3, without editing rl_zoo3's files.

rl_zoo3 keeps its algorithms in plain dictionaries that its scripts import *by name*
(``from rl_zoo3.utils import ALGOS``): every module holds a reference to the same dictionary
object, so adding keys in place makes ``trpo_plus`` visible to all of them (train, the
experiment manager, enjoy, record_video, record_training, push_to_hub, load_from_hub), while
rebinding the names would not. The same holds for the sampler and converter tables of
``rl_zoo3.hyperparams_opt``. Existing keys are never touched.

The default hyperparameter file of an algorithm is ``hyperparams/<algo>.yml`` inside rl_zoo3's
package; ``rl_zoo3.train`` builds its :class:`~rl_zoo3.exp_manager.ExperimentManager` through the
module global of that name, which :func:`register` points at
:class:`~sb3_trpo_plus.zoo.experiment.TRPOPlusExperimentManager`, a subclass that defaults the
configuration of this package's algorithms to ``zoo_configs/<algo>.yml`` and behaves exactly
like its parent for every other algorithm.
"""

from __future__ import annotations

import rl_zoo3.hyperparams_opt
import rl_zoo3.train
import rl_zoo3.utils

from sb3_trpo_plus.trpo_plus import TRPOPlus
from sb3_trpo_plus.zoo.configs import ALGO_NAME
from sb3_trpo_plus.zoo.experiment import TRPOPlusExperimentManager
from sb3_trpo_plus.zoo.hyperparams_opt import convert_trpo_plus_params, sample_trpo_plus_params


def _add(table: dict, key: str, value: object) -> None:
    """Add ``key`` to one of rl_zoo3's tables; refuse to replace something else registered under it."""
    if table.get(key, value) is not value:
        raise RuntimeError(f"rl_zoo3 already has a different entry for {key!r}: {table[key]!r}")
    table[key] = value


def register() -> None:
    """
    Make ``trpo_plus`` available to every rl_zoo3 script of this process (idempotent).
    """
    _add(rl_zoo3.utils.ALGOS, ALGO_NAME, TRPOPlus)
    _add(rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER, ALGO_NAME, sample_trpo_plus_params)
    _add(rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER, ALGO_NAME, convert_trpo_plus_params)
    rl_zoo3.train.ExperimentManager = TRPOPlusExperimentManager  # type: ignore[misc]
