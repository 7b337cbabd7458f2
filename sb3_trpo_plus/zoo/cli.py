"""
``trpo-plus-zoo``: rl_zoo3's scripts with ``trpo_plus`` registered.

Usage: ``trpo-plus-zoo <command> [flags of the rl_zoo3 script]``, with the commands ``train``,
``enjoy``, ``record_video``, ``record_training``, ``plot_train``, ``all_plots``,
``plot_from_file``, ``push_to_hub``, ``load_from_hub`` and ``benchmark``. Every flag is handed
unchanged to the rl_zoo3 script of the same name; ``--algo`` (``--algos`` for ``all_plots``)
defaults to ``trpo_plus`` instead of ``ppo``, and still accepts every algorithm of rl_zoo3.
``push_to_hub --local-only`` packages a model into its local repository folder without network,
``load_from_hub --local-repo DIR`` reads such a folder (:mod:`sb3_trpo_plus.zoo.hub`).

``train`` understands three more flags, for ``-optimize`` with a database ``--storage``
(``sqlite:///...``, ``postgresql://...``): ``--heartbeat-interval`` (seconds, default 10; 0
turns heartbeat and retries off), ``--grace-period`` (seconds without heartbeat before a running
trial is declared dead, default 60) and ``--max-retry`` (re-queues of a dead trial, default 3);
``--search-vine``, which adds vine sampling (rollout-set size, branches, horizon, state
selection, q) to the ``-optimize`` search space, for environments vine mode can branch; and
``--trial-seeds K`` with ``--trial-aggregate mean|median`` (default mean): each ``-optimize`` trial
trains K seeds in lockstep and reports their aggregate, the pruner seeing the running aggregate
(:mod:`sb3_trpo_plus.zoo.multiseed`; K = 1, the default, is rl_zoo3's single unseeded run).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Callable, Sequence

from sb3_trpo_plus.zoo.configs import UnknownConfigError

COMMANDS = (
    "train",
    "enjoy",
    "record_video",
    "record_training",
    "plot_train",
    "all_plots",
    "plot_from_file",
    "push_to_hub",
    "load_from_hub",
    "benchmark",
)
#: flag naming the algorithm, per command (prepended with ``trpo_plus``; a later flag on the command line wins)
ALGO_FLAGS = {
    "train": "--algo",
    "enjoy": "--algo",
    "record_video": "--algo",
    "record_training": "--algo",
    "plot_train": "--algo",
    "all_plots": "--algos",
    "push_to_hub": "--algo",
    "load_from_hub": "--algo",
}
USAGE = (
    "usage: trpo-plus-zoo {" + ",".join(COMMANDS) + "} [flags of the rl_zoo3 script]\n"
    "       trpo-plus-zoo <command> --help   shows the flags of that script"
)


def _heartbeat_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--heartbeat-interval", type=int, default=10)
    parser.add_argument("--grace-period", type=int, default=60)
    parser.add_argument("--max-retry", type=int, default=3)
    parser.add_argument("--search-vine", action="store_true")
    parser.add_argument("--trial-seeds", type=int, default=1)
    parser.add_argument("--trial-aggregate", choices=("mean", "median"), default="mean")
    return parser


def _train() -> None:
    from rl_zoo3.train import train

    from sb3_trpo_plus.zoo.experiment import HeartbeatSettings, ZooOptions, zoo_options
    from sb3_trpo_plus.zoo.multiseed import TrialSeeds

    own, rest = _heartbeat_parser().parse_known_args(sys.argv[1:])
    sys.argv[1:] = rest
    if own.trial_seeds < 1:
        raise SystemExit(f"trpo-plus-zoo train: --trial-seeds must be >= 1, got {own.trial_seeds}")
    heartbeat = None
    if own.heartbeat_interval > 0:
        heartbeat = HeartbeatSettings(
            interval=own.heartbeat_interval,
            grace_period=own.grace_period,
            max_retry=own.max_retry if own.max_retry >= 0 else None,
        )
    options = ZooOptions(
        heartbeat=heartbeat,
        trial_seeds=TrialSeeds(own.trial_seeds, own.trial_aggregate) if own.trial_seeds > 1 else None,
        search_vine=own.search_vine,
    )
    with zoo_options(options):
        train()


def _enjoy() -> None:
    from rl_zoo3.enjoy import enjoy

    enjoy()


def _run_script(module: str) -> Callable[[], None]:
    """rl_zoo3 scripts that only run under ``if __name__ == "__main__"``."""

    def run() -> None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)

    return run


def _plot(name: str) -> Callable[[], None]:
    def run() -> None:
        import rl_zoo3.plots

        getattr(rl_zoo3.plots, name)()

    return run


def _hub(name: str) -> Callable[[], None]:
    def run() -> None:
        from sb3_trpo_plus.zoo import hub

        getattr(hub, name)(sys.argv[1:])

    return run


SCRIPTS: dict[str, Callable[[], None]] = {
    "train": _train,
    "enjoy": _enjoy,
    "record_video": _run_script("rl_zoo3.record_video"),
    "record_training": _run_script("rl_zoo3.record_training"),
    "plot_train": _plot("plot_train"),
    "all_plots": _plot("all_plots"),
    "plot_from_file": _plot("plot_from_file"),
    "push_to_hub": _hub("push_to_hub"),
    "load_from_hub": _hub("load_from_hub"),
    "benchmark": _hub("benchmark"),
}


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point of ``trpo-plus-zoo`` and ``python -m sb3_trpo_plus.zoo``.

    :param argv: command and flags (default: ``sys.argv[1:]``)
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, flags = args[0], args[1:]
    if command not in SCRIPTS:
        print(f"trpo-plus-zoo: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)

    import sb3_trpo_plus.zoo  # importing it registers trpo_plus (once)

    if command in ALGO_FLAGS:
        flags = [ALGO_FLAGS[command], sb3_trpo_plus.zoo.ALGO_NAME, *flags]
    sys.argv = [f"trpo-plus-zoo {command}", *flags]
    try:
        SCRIPTS[command]()
    except UnknownConfigError as error:  # a user's typo, not a bug: the message alone says what to do
        print(f"trpo-plus-zoo {command}: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
