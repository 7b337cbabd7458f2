"""scripts/installed.py, the check that lets scripts/setup.sh skip pip when everything is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("installed", ROOT / "scripts" / "installed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _project(dependencies: list[str], **extras: list[str]) -> dict:
    return {"name": "example", "version": "0.1.0", "dependencies": dependencies, "optional-dependencies": extras}


def test_satisfied_requirements_pass(installed: ModuleType) -> None:
    project = _project(["numpy>=1.0", "torch"], test=["pytest>=8", "gymnasium[mujoco]>=1.0"])
    assert installed.missing_requirement(project, ["test"]) is None


def test_the_first_unsatisfied_requirement_is_named(installed: ModuleType) -> None:
    project = _project(["numpy>=1.0"], test=["pytest>=999"], zoo=["no-such-package-xyz"])
    assert "pytest" in installed.missing_requirement(project, ["test"])
    assert "does not satisfy >=999" in installed.missing_requirement(project, ["test"])
    assert installed.missing_requirement(project, ["zoo"]) == "no-such-package-xyz is not installed"
    assert installed.missing_requirement(project, []) is None  # extras not asked for do not count


def test_an_extra_of_a_requirement_counts(installed: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gymnasium[mujoco]`` needs mujoco itself: its absence is found through gymnasium's metadata."""
    real_version = installed.metadata.version

    def version(name: str) -> str:
        if name == "mujoco":
            raise installed.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(installed.metadata, "version", version)
    problem = installed.missing_requirement(_project(["gymnasium[mujoco]"]), [])
    assert problem == "mujoco is not installed (needed by gymnasium[mujoco])"
    assert installed.missing_requirement(_project(["gymnasium"]), []) is None


def test_another_checkout_is_not_taken_for_this_one(installed: ModuleType, tmp_path: Path) -> None:
    """An editable install of a different clone (CI's fresh clone beside a developer's) means: install."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    problem = installed.missing(["test"], root=tmp_path)
    assert problem is not None and "sb3-trpo-plus" in problem


def test_this_checkouts_requirements_are_satisfied_here(installed: ModuleType) -> None:
    """The suite runs where scripts/setup.sh installed every extra, so the check must find nothing missing."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert installed.missing_requirement(project, ["zoo", "bench", "test"]) is None
