"""
The worker-failure transport: an exception raised in a worker process (a branch copy's, or a
SubprocVecEnv trunk's) carried back as a value (:class:`WorkerFailure`) and raised in the caller
as :class:`BranchWorkerError`, naming the environment and chained to the original exception.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from sb3_trpo_plus.env_state.layers import describe


@dataclass
class WorkerFailure:
    """
    An exception raised inside a worker process, carried back as a value so that the caller can
    re-raise it with the environment it happened in (instead of the bare ``EOFError`` of a dead worker).

    :param env: :func:`describe` of the environment
    :param call: what was called
    :param exception: the exception, if it could be pickled, else None
    :param text: ``repr`` of the exception
    :param traceback: the formatted traceback
    """

    env: str
    call: str
    exception: BaseException | None
    text: str
    traceback: str

    @classmethod
    def capture(cls, env: gym.Env | str, call: str, error: BaseException) -> WorkerFailure:
        """:return: the failure of ``call`` on ``env`` with ``error`` (being handled)"""
        import traceback

        try:
            exception: BaseException | None = pickle.loads(pickle.dumps(error))
        except Exception:
            exception = None
        return cls(env if isinstance(env, str) else describe(env), call, exception, repr(error), traceback.format_exc())

    def error(self, where: str) -> BranchWorkerError:
        """:return: the error to raise in the caller (chain it to :attr:`exception`)"""
        return BranchWorkerError(
            f"{where}: {self.call} on {self.env} raised {self.text}\n--- traceback in the worker ---\n{self.traceback}"
        )


class BranchWorkerError(RuntimeError):
    """An environment raised inside a worker process (a branch copy or a SubprocVecEnv trunk)."""


def raise_failure(result: Any, where: str) -> Any:
    """
    :param result: what a worker sent back
    :param where: what the caller asked (for the message)
    :return: ``result``, unless it is a :class:`WorkerFailure`
    :raises BranchWorkerError: for a :class:`WorkerFailure`, chained to the worker's exception
    """
    if isinstance(result, WorkerFailure):
        raise result.error(where) from result.exception
    return result
