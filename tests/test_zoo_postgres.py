"""
Several `trpo-plus-zoo train -optimize` workers on one Optuna study in a real PostgreSQL server.

The fixture starts a throw-away server: ``initdb`` into a temporary folder and ``pg_ctl start``
listening on 127.0.0.1 only, on a free port, with no Unix socket outside that folder (as the
``postgres`` user when the tests run as root, which PostgreSQL refuses). If the server programs are
missing and the tests run as root on Debian/Ubuntu, the fixture installs them with apt-get (as
``scripts/setup.sh`` does). The server is stopped and its folder removed at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg2
import pytest
from optuna.trial import TrialState
from zoo_utils import TINY_OPTIMIZE, ZOO, zoo_env

#: heartbeat of the workers: a killed worker's trial is declared dead after 4 s without heartbeat
HEARTBEAT = ["--heartbeat-interval", "1", "--grace-period", "4"]


def _postgres_bindir() -> Path:
    """The folder of initdb/pg_ctl, installing PostgreSQL with apt-get if it is missing."""

    def find() -> Path | None:
        for candidate in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]:
            if candidate and Path(candidate).with_name("pg_ctl").exists():
                return Path(candidate).resolve().parent
        return None

    bindir = find()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env, capture_output=True)
        bindir = find()
    if bindir is None:
        pytest.fail("PostgreSQL server programs (initdb, pg_ctl) not found, and installing them needs root and apt-get")
    return bindir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """URL of a fresh database on a PostgreSQL server started for these tests."""
    bindir = _postgres_bindir()
    workdir = Path(tempfile.mkdtemp(prefix="trpo_plus_pg_"))
    as_server_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
        as_server_user = ["runuser", "-u", "postgres", "--"]
    data = workdir / "data"
    port = _free_port()
    subprocess.run(
        [
            *as_server_user,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    pg_ctl = [*as_server_user, str(bindir / "pg_ctl"), "-D", str(data)]
    options = f"-h 127.0.0.1 -p {port} -k {workdir} -c fsync=off -c max_connections=50"
    subprocess.run([*pg_ctl, "-l", str(workdir / "server.log"), "-w", "-o", options, "start"], check=True, capture_output=True)
    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE optuna_tests")
        connection.close()
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the zoo extra installs psycopg2
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna_tests"
    finally:
        subprocess.run([*pg_ctl, "-w", "-m", "fast", "stop"], check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _libpq_url(url: str) -> str:
    """The SQLAlchemy URL without its driver name, as libpq reads it."""
    return url.replace("postgresql+psycopg2://", "postgresql://")


def _worker(workdir: Path, name: str, args: list[str]) -> subprocess.Popen[str]:
    (workdir / name).mkdir()
    return subprocess.Popen(
        [*ZOO, "train", *TINY_OPTIMIZE, "-f", "logs", *args],
        cwd=workdir / name,
        env=zoo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(worker: subprocess.Popen[str]) -> str:
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output
    return output


def test_postgres_server_is_on_loopback_only(postgres_url: str) -> None:
    with psycopg2.connect(_libpq_url(postgres_url)) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW listen_addresses")
        assert cursor.fetchone() == ("127.0.0.1",)
    connection.close()


def test_two_workers_share_one_study(postgres_url: str, tmp_path: Path) -> None:
    """Two workers, 2 trials each, started together on one new study: 4 trials, all finished, none lost or duplicated."""
    workers = [
        _worker(tmp_path, f"worker{seed}", ["-n", "1024", "--n-trials", "2", "--pruner", "none", "--seed", str(seed),
                                             "--storage", postgres_url, "--study-name", "two_workers", *HEARTBEAT])
        for seed in (1, 2)
    ]  # fmt: skip
    for worker in workers:
        _finish(worker)
    study = optuna.load_study(study_name="two_workers", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert sorted(trial.number for trial in trials) == [0, 1, 2, 3]
    assert all(trial.state == TrialState.COMPLETE and trial.value is not None for trial in trials)
    # each worker ran (and recorded) exactly its own 2 trials
    ran_by = Counter(trial.user_attrs["worker"].rsplit(":", 1)[1] for trial in trials)
    assert ran_by == {str(worker.pid): 2 for worker in workers}
    # every trial is a row of PostgreSQL's table, once
    with psycopg2.connect(_libpq_url(postgres_url)) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT number) FROM trials JOIN studies USING (study_id) WHERE study_name = %s",
            ("two_workers",),
        )
        assert cursor.fetchone() == (4, 4)
    connection.close()


def test_killed_worker_does_not_lose_its_trial(postgres_url: str, tmp_path: Path) -> None:
    """
    Worker A is killed (SIGKILL) in the middle of a trial's training; worker B declares that trial dead
    once its heartbeat stops, re-runs its parameters and completes the study's 4 trials.

    The kill waits for the sampler's last step (it records ``n_steps`` as a user attribute after every
    parameter is drawn): a worker killed while still sampling leaves a trial with part of the
    parameters, which Optuna's retry keeps and completes with fresh draws (a different guarantee).
    """
    common = ["-n", "4096", "--n-evaluations", "2", "--max-total-trials", "4", "--pruner", "none",
              "--storage", postgres_url, "--study-name", "killed_worker", *HEARTBEAT]  # fmt: skip
    killed = _worker(tmp_path, "killed", [*common, "--seed", "1"])
    survivor = _worker(tmp_path, "survivor", [*common, "--seed", "2"])

    # one storage (one connection pool) for the whole watch: a storage per look would open a
    # connection each time and exhaust the server's max_connections on a slow machine
    watch = optuna.storages.RDBStorage(postgres_url)
    victim = None
    while victim is None:
        assert killed.poll() is None, killed.communicate()[0]
        try:
            study = optuna.load_study(study_name="killed_worker", storage=watch)
        except KeyError:  # the study does not exist yet
            study = None
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if study else []:
            sampled = "n_steps" in trial.user_attrs
            if sampled and trial.user_attrs.get("worker", "").endswith(f":{killed.pid}"):
                victim = trial.number
        time.sleep(0.2)
    watch.engine.dispose()
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL

    _finish(survivor)
    study = optuna.load_study(study_name="killed_worker", storage=postgres_url)
    trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    assert trials[victim].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[victim].params
    assert retry.user_attrs["worker"].endswith(f":{survivor.pid}")
    states = Counter(trial.state for trial in trials.values())
    assert states == {TrialState.COMPLETE: 4, TrialState.FAIL: 1}
