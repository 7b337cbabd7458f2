"""
Where this package's rl_zoo3 hyperparameter files live, and how ``-conf`` names them.

The files of ``zoo_configs/`` ship inside the wheel (``sb3_trpo_plus/zoo_configs/``); in a clone
or an editable install they are the repository's top-level ``zoo_configs/``. ``-conf`` names them
without a path, the same way in every kind of install:

- ``-conf pkg:trpo_plus_vine`` (or ``pkg:trpo_plus_vine.yml``): always the shipped file; an
  unknown name is an error that lists the shipped files;
- ``-conf trpo_plus_vine`` (or ``trpo_plus_vine.yml``): the shipped file, unless a file of that
  name exists in the current folder (then that file, as in rl_zoo3);
- anything else (a path, a Python module name) is handed to rl_zoo3 unchanged.
"""

from __future__ import annotations

from pathlib import Path

ALGO_NAME = "trpo_plus"
#: algorithm name -> default configuration file name (in ``zoo_configs``)
DEFAULT_CONFIGS: dict[str, str] = {ALGO_NAME: "trpo_plus.yml"}
#: prefix of ``-conf`` that names a shipped configuration file
SHIPPED_PREFIX = "pkg:"


class UnknownConfigError(FileNotFoundError):
    """``-conf pkg:NAME`` with a NAME that is not shipped (``trpo-plus-zoo`` prints it as one line)."""


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


def shipped_configs() -> dict[str, Path]:
    """:return: name without extension (``trpo_plus_vine``) -> path, for every shipped ``.yml`` file"""
    return {path.stem: path for path in sorted(zoo_configs_dir().glob("*.yml"))}


def _shipped(name: str) -> Path | None:
    stem = name[: -len(".yml")] if name.endswith(".yml") else name
    return shipped_configs().get(stem)


def resolve_config(config: str) -> str:
    """
    The file a ``-conf`` value names (see the module docstring).

    :param config: value of ``-conf``
    :return: the path of a shipped file, or ``config`` unchanged
    :raises UnknownConfigError: ``pkg:NAME`` with a NAME that is not shipped
    """
    if config.startswith(SHIPPED_PREFIX):
        name = config[len(SHIPPED_PREFIX) :]
        path = _shipped(name)
        if path is None:
            known = ", ".join(f"{SHIPPED_PREFIX}{stem}" for stem in shipped_configs())
            raise UnknownConfigError(f"-conf {config}: no shipped configuration {name!r}; shipped: {known}")
        return str(path)
    if "/" in config or "\\" in config or Path(config).exists():
        return config
    path = _shipped(config)
    return str(path) if path is not None else config


def default_config(algo: str) -> str | None:
    """
    The default hyperparameter file of one of this package's algorithms.

    :param algo: rl_zoo3 algorithm name
    :return: the path of the file, or None for an algorithm of rl_zoo3 itself
    """
    if algo not in DEFAULT_CONFIGS:
        return None
    return str(zoo_configs_dir() / DEFAULT_CONFIGS[algo])
