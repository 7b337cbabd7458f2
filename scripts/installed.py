"""
Whether this checkout is already installed, with every requirement it declares, in the Python
environment running this script: exit 0 if so (``scripts/setup.sh`` then skips pip), 1 otherwise,
printing the first thing missing.

It reads ``pyproject.toml`` itself (not the installed metadata, which may be older than the
checkout), and checks:

- the distribution ``sb3-trpo-plus`` is installed in editable mode from this very folder, at the
  version the checkout declares;
- each requirement of ``dependencies`` and of the extras named on the command line is installed at
  a version its specifier allows, and so are the requirements of any extras it names
  (``gymnasium[mujoco,box2d]`` needs mujoco and box2d).

    python scripts/installed.py zoo bench test
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _missing_requirement(requirement: str) -> str | None:
    from packaging.requirements import Requirement

    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return None
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return f"{req.name} is not installed"
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        return f"{req.name} {version} does not satisfy {req.specifier}"
    for extra in req.extras:
        for sub in metadata.requires(req.name) or []:
            sub_req = Requirement(sub)
            if sub_req.marker is not None and sub_req.marker.evaluate({"extra": extra}):
                problem = _missing_requirement(sub.split(";")[0])
                if problem is not None:
                    return f"{problem} (needed by {req.name}[{extra}])"
    return None


def missing_requirement(project: dict[str, Any], extras: list[str]) -> str | None:
    """
    The first requirement of a ``[project]`` table that the environment does not satisfy, or None.

    :param project: the ``[project]`` table of a ``pyproject.toml``
    :param extras: the optional-dependency groups whose requirements count too
    :return: a sentence naming the requirement and what is installed
    """
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    for requirement in requirements:
        problem = _missing_requirement(requirement)
        if problem is not None:
            return problem
    return None


def missing(extras: list[str], root: Path = ROOT) -> str | None:
    """
    The first thing the checkout at ``root`` needs that the environment lacks, or None.

    :param extras: the optional-dependency groups that must be installed too
    :param root: the checkout (the folder of ``pyproject.toml``)
    :return: a sentence naming what is missing
    """
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    try:
        dist = metadata.distribution(project["name"])
    except metadata.PackageNotFoundError:
        return f"{project['name']} is not installed"
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if not direct_url.get("dir_info", {}).get("editable") or direct_url.get("url") != root.as_uri():
        return f"{project['name']} is not installed in editable mode from {root}"
    if dist.version != project["version"]:
        return f"{project['name']} {dist.version} is installed, the checkout is {project['version']}"
    return missing_requirement(project, extras)


def main() -> int:
    try:
        problem = missing(sys.argv[1:])
    except ImportError as error:  # no packaging (or Python < 3.11 without tomllib): install to be sure
        problem = f"cannot check ({error})"
    if problem is not None:
        print(f"setup: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
