"""
Vine sampling (Schulman et al. 2015, section 5.2).

1. Run pi_old on the training environment (the *trunk*, collected like single path).
2. Pick a *rollout set* of N trunk states: "uniform", N distinct states uniformly at random;
   or "geometric", N independent draws with replacement with weight gamma^t (t the time since
   the start of the episode), an exact sample of the trunk's discounted state distribution
   (a state drawn twice is branched twice). The choice is made online by reservoir sampling,
   so only the chosen states are snapshotted (:mod:`sb3_trpo_plus.env_state`); see
   :class:`TrunkStates`.
3. At each rollout-set state s_n draw K actions from q (or take every action of a small finite
   space); for each one, restore a dedicated copy of the environment to s_n, take the action,
   then follow pi_old for at most H steps. The discounted return, bootstrapped with the value
   function when the branch is cut or truncated, estimates Q(s_n, a_{n,k}).
4. With common random numbers the K branches of one state start from the same environment
   random state and share the policy's noise at every step, so the Q differences that drive
   the gradient have low variance. A gSDE policy's branches follow the trunk's noise process
   (its exploration matrix at the rollout-set state, renewed when the trunk would renew it;
   see :class:`BranchRunner`).

Branches run side by side on K copies of the environment (a branch pool,
:class:`~sb3_trpo_plus.branch_pool.BranchPool`: in-process or in subprocesses, or any pool
registered with :func:`~sb3_trpo_plus.branch_pool.register_branch_pool`); they never touch the
trunk's episodes, its Monitor statistics or VecNormalize's running statistics (branch
observations and rewards are normalised with the frozen statistics). Every branch step is a real
environment step and counts in the budget.

Branches simulate the trunk's MDP: the copies are trunk environment 0 with every gymnasium
wrapper (:func:`~sb3_trpo_plus.env_state.branch_copy`; taken inside the worker for a
SubprocVecEnv trunk), their wrapper chain is compared with the trunk's at construction, and the
trunk's VecEnv wrappers are replayed on branch observations and rewards (:class:`VecWrappers`).

The modules, one idea each: :mod:`~sb3_trpo_plus.vine.wrappers` (the trunk's VecEnv wrappers
replayed on branches), :mod:`~sb3_trpo_plus.vine.trunk` (the rollout set and snapshots of the
trunk), :mod:`~sb3_trpo_plus.vine.pools` (the branch pools), :mod:`~sb3_trpo_plus.vine.runner`
(the branches of one state), :mod:`~sb3_trpo_plus.vine.probe` (the run-time fidelity probe: a
restored branch copy must reproduce the trunk) and :mod:`~sb3_trpo_plus.vine.sampler` (one vine
iteration).
"""

from sb3_trpo_plus.branch_pool import BranchPool, register_branch_pool
from sb3_trpo_plus.vine.pools import InProcessBranchPool, SubprocBranchPool
from sb3_trpo_plus.vine.probe import FidelityProbe
from sb3_trpo_plus.vine.runner import BranchResult, BranchRunner, bootstraps
from sb3_trpo_plus.vine.sampler import VineSampler
from sb3_trpo_plus.vine.trunk import BranchState, GsdeNoise, TrunkStates, make_trunk_branchable, trunk_snapshotter
from sb3_trpo_plus.vine.wrappers import VecWrappers

__all__ = [
    "BranchPool",
    "BranchResult",
    "BranchRunner",
    "BranchState",
    "FidelityProbe",
    "GsdeNoise",
    "InProcessBranchPool",
    "SubprocBranchPool",
    "TrunkStates",
    "VecWrappers",
    "VineSampler",
    "bootstraps",
    "make_trunk_branchable",
    "register_branch_pool",
    "trunk_snapshotter",
]
