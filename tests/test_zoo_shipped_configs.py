"""
``-conf`` names the shipped hyperparameter files (``pkg:trpo_plus_vine``, ``trpo_plus_vine``) in a
clone, in an editable install and in a wheel installed into a fresh virtual environment.

The fresh environments are new venvs that see this interpreter's site-packages (torch, rl_zoo3 and the
other dependencies come from there, so nothing big is reinstalled; see :func:`_fresh_venv`); the package
itself is installed into the venv with ``--no-deps``, and each test checks that ``sb3_trpo_plus`` is
imported from the venv's copy, not from this clone or another editable install.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.zoo import TRPOPlusExperimentManager, resolve_config, shipped_configs, zoo_configs_dir

REPO = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO / "tests"


def test_shipped_names_resolve_in_the_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vine = zoo_configs_dir() / "trpo_plus_vine.yml"
    assert set(shipped_configs()) >= {"trpo_plus", "trpo_plus_vine"}
    monkeypatch.chdir(tmp_path)
    for name in ("pkg:trpo_plus_vine", "pkg:trpo_plus_vine.yml", "trpo_plus_vine", "trpo_plus_vine.yml"):
        assert resolve_config(name) == str(vine), name
    # a file of that name in the current folder wins over the bare name, never over pkg:
    (tmp_path / "trpo_plus_vine.yml").write_text("CartPole-v1: {policy: MlpPolicy}\n")
    assert resolve_config("trpo_plus_vine.yml") == "trpo_plus_vine.yml"
    assert resolve_config("pkg:trpo_plus_vine.yml") == str(vine)
    # paths and Python module names (rl_zoo3's other -conf forms) pass unchanged
    assert resolve_config("my/own.yml") == "my/own.yml"
    assert resolve_config("hyperparams.python.ppo_config_example") == "hyperparams.python.ppo_config_example"
    with pytest.raises(FileNotFoundError, match=r"no shipped configuration 'nope'.*pkg:trpo_plus_vine"):
        resolve_config("pkg:nope")
    import argparse

    manager = TRPOPlusExperimentManager(argparse.Namespace(), "trpo_plus", "CartPole-v1", "logs", config="pkg:trpo_plus_vine")
    assert manager.config == str(vine)


def test_an_unknown_shipped_name_is_one_line_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``trpo-plus-zoo train -conf pkg:typo`` ends with the message alone, exit status 2, no traceback."""
    from sb3_trpo_plus.zoo.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--env", "CartPole-v1", "-conf", "pkg:nonexistent", "-f", str(tmp_path), "-n", "100"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "trpo-plus-zoo train: -conf pkg:nonexistent: no shipped configuration 'nonexistent'; "
        "shipped: pkg:trpo_plus, pkg:trpo_plus_vine"
    ]


def _fresh_venv(path: Path) -> Path:
    """
    A venv seeing this interpreter's packages; returns its python. ``--system-site-packages``
    would give the *base* interpreter's packages, which are not this one's when the tests run
    in a virtual environment: this interpreter's site-packages folders are added by a ``.pth``
    file instead (a path line only: the ``.pth`` files inside them, such as an editable install
    of this clone, are not run).
    """
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    python = path / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(venv_site) / "_tests_parent_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH pointing at this clone: only the tests folder (for the plot backend module)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(TESTS_DIR)})
    env.update(extra)
    return env


def _train_with_shipped_vine(python: Path, workdir: Path) -> tuple[str, str]:
    """``trpo-plus-zoo train -conf pkg:trpo_plus_vine`` with the venv's console script; returns (module file, config)."""
    probe = "import sb3_trpo_plus.zoo as z; print(z.__file__); print(z.resolve_config('pkg:trpo_plus_vine'))"
    result = subprocess.run([str(python), "-c", probe], cwd=workdir, env=_clean_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    module_file, config = result.stdout.split()
    train = subprocess.run(
        [str(python.parent / "trpo-plus-zoo"), "train", "--env", "CartPole-v1", "-conf", "trpo_plus_vine",
         "-n", "600", "--eval-freq", "-1", "--seed", "0", "--num-threads", "1", "-f", "logs"],
        cwd=workdir, env=_clean_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert train.returncode == 0, f"{train.stdout}\n{train.stderr}"
    assert f"Loading hyperparameters from: {config}" in train.stdout
    model = TRPOPlus.load(workdir / "logs" / "trpo_plus" / "CartPole-v1_1" / "CartPole-v1.zip")
    assert model.sampling == "vine" and model.vine_kwargs == {}  # the vine defaults
    vine = model._settings().vine
    assert vine is not None and vine.all_actions is True  # "auto" on CartPole's 2 actions: both branched
    return module_file, config


def test_wheel_in_a_fresh_venv_finds_the_shipped_vine_config(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("sb3_trpo_plus-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = ("zoo_configs/trpo_plus.yml", "zoo_configs/trpo_plus_vine.yml", "zoo/cli.py")
    assert all(f"sb3_trpo_plus/{name}" in names for name in shipped), names
    python = _fresh_venv(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    (tmp_path / "work").mkdir()
    module_file, config = _train_with_shipped_vine(python, tmp_path / "work")
    site_dir = Path(module_file).parents[2]
    assert site_dir.is_relative_to(tmp_path / "venv"), module_file
    assert Path(config) == site_dir / "sb3_trpo_plus" / "zoo_configs" / "trpo_plus_vine.yml"
    assert yaml.safe_load(Path(config).read_text())["CartPole-v1"]["sampling"] == "vine"


@pytest.mark.slow  # (about a minute; the clone's names are resolved in the default run, and set-up installs editable)
def test_editable_install_in_a_fresh_venv_finds_the_shipped_vine_config(tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "-q", "-e", str(REPO)],
        check=True,
        capture_output=True,
    )
    (tmp_path / "work").mkdir()
    module_file, config = _train_with_shipped_vine(python, tmp_path / "work")
    # this clone's package (not another editable install), with the clone's top-level zoo_configs
    assert Path(module_file).resolve() == REPO / "sb3_trpo_plus" / "zoo" / "__init__.py"
    assert Path(config) == REPO / "zoo_configs" / "trpo_plus_vine.yml"
