"""
rl_zoo3's experiment manager, with this package's defaults and fault-tolerant distributed tuning.

:class:`TRPOPlusExperimentManager` differs from :class:`rl_zoo3.exp_manager.ExperimentManager` in
three ways, none of which changes anything for rl_zoo3's own algorithms unless asked for:

1. For the algorithms of this package, the default hyperparameter file is the package's
   ``zoo_configs/<algo>.yml`` instead of rl_zoo3's ``hyperparams/<algo>.yml`` (``-conf`` still wins,
   and names the shipped files as ``pkg:trpo_plus_vine``, see :func:`~sb3_trpo_plus.zoo.configs.resolve_config`).
2. Every trial records which worker ran it (user attribute ``worker``: ``host:pid``); with
   :attr:`ZooOptions.trial_seeds` (``--trial-seeds K``), a trial trains K seeds and reports their
   mean or median (:mod:`sb3_trpo_plus.zoo.multiseed`); with :attr:`ZooOptions.search_vine`
   (``--search-vine``) every trial records the user attribute ``search_vine``, which adds vine
   sampling to its search space (:func:`~sb3_trpo_plus.zoo.hyperparams_opt.sample_trpo_plus_params`).
3. With :attr:`ZooOptions.heartbeat` set (the ``trpo-plus-zoo`` command line does it for database
   storages), a study on a relational database (``sqlite:///...``,
   ``postgresql://...``) uses Optuna's heartbeat: every running trial refreshes a timestamp in the
   database; a trial whose worker died (killed, machine lost) stops refreshing it and, after the
   grace period, the next worker that looks at the study marks it FAIL and re-queues its
   parameters (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`). Before leaving, a worker waits
   for the trials that were still running when it finished; if one of them turns out stale, it
   runs the retry itself, so a study never ends with a lost trial just because the surviving
   workers were done first.

These options are a :class:`ZooOptions`, given to the manager's constructor (``options=``) or, since
``rl_zoo3.train.train()`` builds the manager itself, set for the duration of a ``with``
:func:`zoo_options` block (a context variable, restored when the block ends), which is what
``trpo-plus-zoo train`` does with its own flags.
"""

from __future__ import annotations

import inspect
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from rl_zoo3.exp_manager import ExperimentManager

from sb3_trpo_plus.zoo.configs import default_config, resolve_config
from sb3_trpo_plus.zoo.hyperparams_opt import SEARCH_VINE_ATTR
from sb3_trpo_plus.zoo.multiseed import TrialSeeds, multi_seed_objective


@dataclass(frozen=True)
class HeartbeatSettings:
    """
    Optuna heartbeat of a relational-database storage.

    :param interval: seconds between two heartbeats of a running trial
    :param grace_period: seconds without heartbeat after which a running trial is stale
    :param max_retry: how many times the parameters of a failed trial are re-queued
        (None: without limit)
    """

    interval: int = 10
    grace_period: int = 60
    max_retry: int | None = 3

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"the heartbeat interval must be a positive number of seconds, got {self.interval}")
        if self.grace_period <= self.interval:
            raise ValueError(
                f"the grace period ({self.grace_period} s) must be longer than the heartbeat interval ({self.interval} s)"
            )
        if self.max_retry is not None and self.max_retry < 0:
            raise ValueError(f"max_retry must be >= 0 or None, got {self.max_retry}")

    def storage_kwargs(self) -> dict[str, Any]:
        """:return: the heartbeat arguments of :class:`optuna.storages.RDBStorage`"""
        return {
            "heartbeat_interval": self.interval,
            "grace_period": self.grace_period,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry),
        }


def database_storage(url: str, heartbeat: HeartbeatSettings | None = None, attempts: int = 5) -> RDBStorage:
    """
    An Optuna storage on a relational database, safe for workers that start at the same time.

    On an empty database, the first workers race to create Optuna's tables (PostgreSQL then
    reports a duplicate type or table to the losers); the creation is retried, and finds the
    tables made by the winner.

    :param url: SQLAlchemy URL of the database
    :param heartbeat: heartbeat and retry of dead trials (None: Optuna's default, no heartbeat)
    :param attempts: how many times the creation of the tables is tried
    :return: the storage
    """
    kwargs = heartbeat.storage_kwargs() if heartbeat is not None else {}
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def is_database_url(storage: Any) -> bool:
    """
    :param storage: value of rl_zoo3's ``--storage``
    :return: whether it is a SQLAlchemy URL (as opposed to a journal file ``*.log`` or an object)
    """
    return isinstance(storage, str) and "://" in storage and not storage.endswith(".log")


def worker_name() -> str:
    """:return: ``host:pid`` of this process"""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ZooOptions:
    """
    What ``trpo-plus-zoo train`` adds to rl_zoo3's experiment manager.

    :param heartbeat: heartbeat of database storages during ``-optimize`` (None: Optuna's default,
        no heartbeat)
    :param trial_seeds: several seeds per tuning trial (None: rl_zoo3's single unseeded run per trial)
    :param search_vine: add vine sampling to the tuning search space
    """

    heartbeat: HeartbeatSettings | None = None
    trial_seeds: TrialSeeds | None = None
    search_vine: bool = False


_OPTIONS: ContextVar[ZooOptions | None] = ContextVar("sb3_trpo_plus_zoo_options", default=None)


@contextmanager
def zoo_options(options: ZooOptions) -> Iterator[ZooOptions]:
    """
    Within the block, every :class:`TRPOPlusExperimentManager` built without ``options=`` (such as
    the one ``rl_zoo3.train.train()`` builds) uses ``options``; the previous options come back after.

    :param options: the options
    """
    token = _OPTIONS.set(options)
    try:
        yield options
    finally:
        _OPTIONS.reset(token)


def current_zoo_options() -> ZooOptions:
    """:return: the options in force (those of the innermost :func:`zoo_options` block, or the defaults)"""
    return _OPTIONS.get() or ZooOptions()


class TRPOPlusExperimentManager(ExperimentManager):
    """
    rl_zoo3's experiment manager with the defaults of this package (see the module docstring).
    Takes the arguments of :class:`rl_zoo3.exp_manager.ExperimentManager`, plus:

    :param options: what ``trpo-plus-zoo train`` adds (default: :func:`current_zoo_options`)
    """

    def __init__(self, *args: Any, options: ZooOptions | None = None, **kwargs: Any) -> None:
        self.options = options if options is not None else current_zoo_options()
        bound = inspect.signature(ExperimentManager.__init__).bind(self, *args, **kwargs)
        if bound.arguments.get("config") is None:
            config = default_config(bound.arguments["algo"])
            if config is not None:
                bound.arguments["config"] = config
        else:
            bound.arguments["config"] = resolve_config(bound.arguments["config"])
        ExperimentManager.__init__(*bound.args, **bound.kwargs)
        self._study: optuna.Study | None = None

    def objective(self, trial: optuna.Trial) -> float:
        """
        rl_zoo3's objective, after recording which worker runs the trial; with ``options.trial_seeds``,
        the trial trains several seeds and returns their aggregate
        (:func:`~sb3_trpo_plus.zoo.multiseed.multi_seed_objective`).

        :param trial: the Optuna trial
        :return: the last mean evaluation reward (its aggregate over the seeds)
        """
        trial.set_user_attr("worker", worker_name())
        if self.options.search_vine:
            trial.set_user_attr(SEARCH_VINE_ATTR, True)
        if self.options.trial_seeds is not None:
            return multi_seed_objective(self, trial, self.options.trial_seeds)
        return super().objective(trial)

    @contextmanager
    def _study_storage(self) -> Iterator[None]:
        """
        While active, the study that rl_zoo3 creates on a database URL gets the storage of
        :func:`database_storage` (with heartbeat if ``options.heartbeat`` is set) instead of a plain
        one, and is remembered in ``self._study``.
        """
        create_study = optuna.create_study
        heartbeat = self.options.heartbeat

        def create_study_on_database(*args: Any, **kwargs: Any) -> optuna.Study:
            if is_database_url(kwargs.get("storage")):
                kwargs["storage"] = database_storage(kwargs["storage"], heartbeat)
            self._study = create_study(*args, **kwargs)
            return self._study

        optuna.create_study = create_study_on_database  # type: ignore[assignment]
        try:
            yield
        finally:
            optuna.create_study = create_study  # type: ignore[assignment]

    def _wait_for_running_trials(self, study: optuna.Study, interval: float) -> int:
        """
        Wait until the trials running now are finished by their workers or failed as stale
        (which re-queues them), then count the trials waiting to be run.

        :param study: the study, on a storage with heartbeat
        :param interval: seconds between two looks at the study
        :return: the number of WAITING trials
        """
        watched = {trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        while watched:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            states = {trial.number: trial.state for trial in study.get_trials(deepcopy=False)}
            watched = {number for number in watched if states[number] == TrialState.RUNNING}
            if watched:
                if self.verbose > 0:
                    print(f"Waiting for running trials {sorted(watched)} (finished or stale) before leaving")
                time.sleep(interval)
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def hyperparameters_optimization(self) -> None:
        """rl_zoo3's optimisation; with a heartbeat, also runs the retries of trials whose worker died."""
        heartbeat = self.options.heartbeat
        if not is_database_url(self.storage):
            super().hyperparameters_optimization()
            return
        run: Callable[[], None] = super().hyperparameters_optimization
        with self._study_storage():
            run()
            if heartbeat is None:
                return
            assert self._study is not None
            n_trials = self.n_trials
            try:
                while (n_waiting := self._wait_for_running_trials(self._study, heartbeat.interval)) > 0:
                    if self.verbose > 0:
                        print(f"Running {n_waiting} re-queued trial(s) of stale workers")
                    if self.max_total_trials is None:
                        # with --max-total-trials, rl_zoo3 counts the study's trials itself
                        self.n_trials = n_waiting
                    n_before = len(self._study.get_trials(deepcopy=False))
                    run()
                    if len(self._study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) >= n_waiting and (
                        len(self._study.get_trials(deepcopy=False)) == n_before
                    ):
                        # nothing ran (e.g. --max-total-trials already reached): do not loop forever
                        break
            finally:
                self.n_trials = n_trials
