"""
The branch pools the package registers (see :mod:`sb3_trpo_plus.branch_pool`): ``"dummy"``
(:class:`InProcessBranchPool`) and ``"subproc"`` (:class:`SubprocBranchPool`).
"""

from sb3_trpo_plus.vine.pools.inprocess import InProcessBranchPool
from sb3_trpo_plus.vine.pools.subproc import SubprocBranchPool

__all__ = ["InProcessBranchPool", "SubprocBranchPool"]
