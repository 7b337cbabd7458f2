"""The errors of environments that vine sampling cannot branch."""

from __future__ import annotations


class UnbranchableEnvError(ValueError):
    """An environment whose state cannot be saved and restored, so that vine sampling cannot branch it."""


class ChainMismatchError(UnbranchableEnvError):
    """Branch copies whose wrappers differ from the trunk's: the branches would simulate another MDP."""


class BranchFidelityError(UnbranchableEnvError):
    """
    A branch copy restored to a trunk state did not reproduce the trunk's next step (raised by
    vine's run-time fidelity probe, before the branches' Q-values reach a policy step).
    """
