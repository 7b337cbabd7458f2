"""
rl_zoo3's Hugging Face Hub and benchmark scripts for ``trpo-plus-zoo``.

- ``push_to_hub``: rl_zoo3's ``push_to_hub`` script. Two adaptations: (1) rl_zoo3 2.9 imports
  ``generate_metadata`` from ``huggingface_sb3.push_to_hub``, which huggingface_sb3 3.x renamed to
  ``_generate_metadata`` (returning a ``ModelCardData``); a function of the old name and result type
  is provided when it is missing. (2) ``--local-only`` packages the model into its local repository
  folder (``hub/<repo-name>/``: the model zip and its unzipped content, ``config.yml``, ``args.yml``,
  ``env_kwargs.yml``, ``vec_normalize.pkl`` if any, ``train_eval_metrics.zip``, ``results.json`` of
  a fresh evaluation, ``README.md`` model card with its metadata, and the replay video unless
  ``--no-render``) without touching the network: the Hub's repository creation, download and upload
  are skipped. The model card of a ``trpo_plus`` model names ``trpo-plus-zoo`` commands (rl_zoo3's
  ``python -m rl_zoo3.*`` cannot load ``trpo_plus``).
- ``load_from_hub``: rl_zoo3's script; ``--local-repo DIR`` reads the files from a local repository
  folder (e.g. one made by ``push_to_hub --local-only``) instead of downloading them. A failed
  download ends with a one-line error (exit status 1) instead of a traceback.
- ``benchmark``: rl_zoo3's script, whose evaluation subprocess ``python enjoy.py`` (a file of a
  rl_zoo3 clone) is replaced by ``trpo-plus-zoo enjoy`` in this interpreter. Offline with ``--no-hub``.
"""

from __future__ import annotations

import argparse
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: rl_zoo3 module names in a model card -> ``trpo-plus-zoo`` commands
_CARD_COMMANDS = {
    "python -m rl_zoo3.load_from_hub": "trpo-plus-zoo load_from_hub",
    "python -m rl_zoo3.enjoy": "trpo-plus-zoo enjoy",
    "python -m rl_zoo3.train": "trpo-plus-zoo train",
    "python -m rl_zoo3.push_to_hub": "trpo-plus-zoo push_to_hub",
    "pip install rl_zoo3": 'pip install "sb3-trpo-plus[zoo]"',
}


def adapt_model_card(folder: Path, algos: Sequence[str] = ("trpo_plus",)) -> None:
    """
    Rewrite the ``README.md`` model card of a local repository folder so that its commands work for
    this package's algorithms (``trpo-plus-zoo ...``); cards of other algorithms are left alone.

    :param folder: the local repository folder
    :param algos: the algorithm names only ``trpo-plus-zoo`` knows
    """
    card = folder / "README.md"
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    if not any(re.search(rf"--algo {re.escape(algo)}\b", text) for algo in algos):
        return
    for old, new in _CARD_COMMANDS.items():
        text = text.replace(old, new)
    card.write_text(text, encoding="utf-8")


def _hub_api(base: type, local_only: bool) -> type:
    """``HfApi`` whose uploads carry an adapted model card; with ``local_only``, no network call at all."""

    class ZooHubApi(base):  # type: ignore[misc, valid-type]
        def create_repo(self, repo_id: str, **kwargs: Any) -> Any:
            if local_only:
                print(f"--local-only: not creating the Hub repository {repo_id}")
                return f"(local only) https://huggingface.co/{repo_id}"
            return super().create_repo(repo_id, **kwargs)

        def snapshot_download(self, repo_id: str, **kwargs: Any) -> str:
            if local_only:
                local_dir = Path(kwargs["local_dir"])
                local_dir.mkdir(parents=True, exist_ok=True)
                return str(local_dir)
            return super().snapshot_download(repo_id, **kwargs)

        def upload_folder(self, *, repo_id: str, folder_path: str | Path, **kwargs: Any) -> Any:
            adapt_model_card(Path(folder_path))
            if local_only:
                print(f"--local-only: the repository {repo_id} is packaged in {folder_path}, not uploaded")
                return str(folder_path)
            return super().upload_folder(repo_id=repo_id, folder_path=folder_path, **kwargs)

    return ZooHubApi


@contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    missing = object()
    old = getattr(obj, name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


def _generate_metadata_dict(model_name: str, env_id: str, mean_reward: float, std_reward: float) -> dict[str, Any]:
    """huggingface_sb3 2.x's ``generate_metadata`` (a dict), from 3.x's ``_generate_metadata``."""
    from huggingface_sb3.push_to_hub import _generate_metadata

    return dict(_generate_metadata(model_name, env_id, mean_reward, std_reward).to_dict())


def push_to_hub(argv: Sequence[str]) -> None:
    """``trpo-plus-zoo push_to_hub [--local-only] [rl_zoo3 push_to_hub flags]``."""
    import importlib

    import huggingface_hub

    # (``huggingface_sb3.push_to_hub`` the attribute is a function that shadows the module)
    hf_push = importlib.import_module("huggingface_sb3.push_to_hub")
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--local-only", action="store_true")
    own, rest = parser.parse_known_args(list(argv))
    metadata = getattr(hf_push, "generate_metadata", _generate_metadata_dict)
    sys.argv = [sys.argv[0], *rest]
    with (
        _patched(hf_push, "generate_metadata", metadata),
        _patched(huggingface_hub, "HfApi", _hub_api(huggingface_hub.HfApi, own.local_only)),
    ):
        runpy.run_module("rl_zoo3.push_to_hub", run_name="__main__", alter_sys=True)


def _local_file(folder: Path) -> Any:
    def load_from_folder(repo_id: str, filename: str) -> str:
        import requests

        path = folder / filename
        if not path.is_file():
            # rl_zoo3 treats an HTTP error on vec_normalize.pkl as "no normalization"
            raise requests.exceptions.HTTPError(f"{filename} not in the local repository {folder} ({repo_id})")
        return str(path)

    return load_from_folder


def load_from_hub(argv: Sequence[str]) -> None:
    """``trpo-plus-zoo load_from_hub [--local-repo DIR] [rl_zoo3 load_from_hub flags]``."""
    import huggingface_sb3

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--local-repo", type=Path, default=None)
    own, rest = parser.parse_known_args(list(argv))
    sys.argv = [sys.argv[0], *rest]
    if own.local_repo is not None:
        if not own.local_repo.is_dir():
            raise SystemExit(f"trpo-plus-zoo load_from_hub: --local-repo {own.local_repo} is not a folder")
        with _patched(huggingface_sb3, "load_from_hub", _local_file(own.local_repo)):
            runpy.run_module("rl_zoo3.load_from_hub", run_name="__main__", alter_sys=True)
        return
    try:
        runpy.run_module("rl_zoo3.load_from_hub", run_name="__main__", alter_sys=True)
    except (OSError, ValueError, ImportError) as error:
        # no network, unknown repository, TRUST_REMOTE_CODE not set, ... (requests' and
        # huggingface_hub's errors are OSErrors)
        print(f"trpo-plus-zoo load_from_hub: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def benchmark(argv: Sequence[str]) -> None:
    """``trpo-plus-zoo benchmark [rl_zoo3 benchmark flags]``: its ``python enjoy.py`` runs ``trpo-plus-zoo enjoy``."""
    call = subprocess.call

    def call_enjoy(args: Any, *more: Any, **kwargs: Any) -> int:
        if isinstance(args, list) and args[:2] == ["python", "enjoy.py"]:
            args = [sys.executable, "-m", "sb3_trpo_plus.zoo", "enjoy", *args[2:]]
        return call(args, *more, **kwargs)

    sys.argv = [sys.argv[0], *argv]
    with _patched(subprocess, "call", call_enjoy):
        runpy.run_module("rl_zoo3.benchmark", run_name="__main__", alter_sys=True)
