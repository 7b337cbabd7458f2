"""Where this package's rl_zoo3 hyperparameter files live."""

from __future__ import annotations

from pathlib import Path

ALGO_NAME = "trpo_plus"
#: algorithm name -> default configuration file name (in ``zoo_configs``)
DEFAULT_CONFIGS: dict[str, str] = {ALGO_NAME: "trpo_plus.yml"}


def zoo_configs_dir() -> Path:
    """
    The folder holding this package's hyperparameter files.

    In a wheel, ``zoo_configs`` is shipped inside the package (``sb3_trpo_plus/zoo_configs``);
    in a source checkout (editable install) it is the repository's top-level ``zoo_configs``.

    :return: the folder
    """
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "zoo_configs", package_dir.parent / "zoo_configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"zoo_configs not found next to or inside {package_dir}")


def default_config(algo: str) -> str | None:
    """
    The default hyperparameter file of one of this package's algorithms.

    :param algo: rl_zoo3 algorithm name
    :return: the path of the file, or None for an algorithm of rl_zoo3 itself
    """
    if algo not in DEFAULT_CONFIGS:
        return None
    return str(zoo_configs_dir() / DEFAULT_CONFIGS[algo])
