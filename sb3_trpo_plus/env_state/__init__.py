"""
Saving and restoring the complete state of an environment, so that vine sampling can branch
rollouts from a trunk state (Schulman et al. 2015, section 5.2: "requires the ability to reset
the system to a given state").

A snapshot (:class:`EnvSnapshot`) holds the state of the unwrapped environment, its random
generator ``np_random`` and the state of every wrapper of the chain (TimeLimit's elapsed steps,
OrderEnforcing's flag, PassiveEnvChecker's flags, episode statistics, SB3's ``Monitor``, frame
stacks, normalisation statistics, ...). It is a picklable value and can be restored on the
instance it was taken from or on another instance built the same way (branches run on
dedicated copies, possibly in subprocesses). Taking or restoring a snapshot never disturbs
another instance, and a snapshot is never modified by a restore (it can be restored many times).

How the unwrapped environment's state is taken, in order of precedence:

1. an adapter registered with :func:`register_state_adapter` for its class (or a base class);
2. your own: an environment with ``get_state()`` and ``set_state(state)`` methods (``set_state``
   taking the single value ``get_state`` returned) is used as it is. The random generator
   ``np_random`` and the wrappers are handled here, so these methods only need the simulator's
   own state;
3. gymnasium's MuJoCo environments (``MujocoEnv``): ``mujoco.mj_getState`` / ``mj_setState``
   with ``mjSTATE_INTEGRATION`` (positions and velocities alone are not the full state: controls,
   applied forces, activations and the constraint solver's warm start are needed too), then the
   quantities that ``mj_step`` leaves computed at the *previous* positions and that environments
   read before their next step (body positions for Ant's and Humanoid's forward reward, contact
   forces, sensors, ...);
4. ALE/Atari (``ale_py``'s ``AtariEnv``): the emulator's ``cloneState(include_rng=True)`` /
   ``restoreState`` (sticky actions draw from the emulator's generator; a random frame skip
   draws from ``np_random``, which is saved too);
5. gymnasium's classic control (CartPole, Pendulum, Acrobot, MountainCar,
   MountainCarContinuous): the environment's plain attributes (``state``, CartPole's
   ``steps_beyond_terminated``, Pendulum's ``last_u``, ...);
6. *replay*, for Box2D (LunarLander, BipedalWalker, CarRacing), which has no restore API, and for
   the classes registered with :func:`register_replay_env`: any environment that is
   deterministic given its ``np_random`` and the actions. The snapshot is how the episode was
   reset (seed, options and the state of ``np_random`` at that reset) plus the actions taken
   since; restoring resets the unwrapped environment and steps it through those actions (the
   wrappers are bypassed and get their saved state back afterwards). Replay needs the recording
   done by :class:`BranchableEnv`, so a replayed environment can be snapshotted only through it,
   and only from the first ``reset()`` after it was wrapped. Its cost is simulator time
   proportional to the episode so far; it is counted in :attr:`BranchableEnv.replayed_steps`.
   Box2D keeps its physics world across episodes and a world's history changes how it steps,
   so a replayed Box2D environment is rebuilt (``type(env).__init__`` with its constructor
   arguments) at every reset: the trunk's episodes and their replays all start from a fresh
   world.

Anything else raises :class:`UnbranchableEnvError` from :func:`check_branchable`, which the
algorithm calls at construction.

Wrappers are saved generically: a copy of each wrapper's instance attributes, except the wrapped
environment, spaces, the spec, its constructor arguments, functions and anything that cannot be
pickled (open files, renderers).

The modules, one idea each: :mod:`~sb3_trpo_plus.env_state.adapters` (state adapters),
:mod:`~sb3_trpo_plus.env_state.registry` (which environments are branchable and how),
:mod:`~sb3_trpo_plus.env_state.snapshots` (snapshot and restore),
:mod:`~sb3_trpo_plus.env_state.replay` (replay), :mod:`~sb3_trpo_plus.env_state.branchable`
(:class:`BranchableEnv`), :mod:`~sb3_trpo_plus.env_state.fidelity` (what vine's fidelity probe
compares), :mod:`~sb3_trpo_plus.env_state.copies` (branch copies and chain
checks) and :mod:`~sb3_trpo_plus.env_state.failures` (the worker-failure transport), over
:mod:`~sb3_trpo_plus.env_state.layers`, :mod:`~sb3_trpo_plus.env_state.attributes` and
:mod:`~sb3_trpo_plus.env_state.errors`.
"""

from sb3_trpo_plus.env_state.adapters import (
    AtariAdapter,
    AttributeAdapter,
    MujocoAdapter,
    MujocoState,
    ProtocolAdapter,
    StateAdapter,
)
from sb3_trpo_plus.env_state.branchable import BranchableEnv
from sb3_trpo_plus.env_state.copies import branch_copy, check_same_chain, wrapper_chain
from sb3_trpo_plus.env_state.errors import BranchFidelityError, ChainMismatchError, UnbranchableEnvError
from sb3_trpo_plus.env_state.failures import BranchWorkerError, WorkerFailure, raise_failure
from sb3_trpo_plus.env_state.fidelity import ProbeRecord, Transition, fidelity_tolerance, largest_difference
from sb3_trpo_plus.env_state.registry import (
    check_branchable,
    find_adapter,
    needs_replay,
    register_replay_env,
    register_state_adapter,
)
from sb3_trpo_plus.env_state.replay import ReplayLog
from sb3_trpo_plus.env_state.snapshots import EnvSnapshot, restore, snapshot

__all__ = [
    "AtariAdapter",
    "AttributeAdapter",
    "BranchFidelityError",
    "BranchWorkerError",
    "BranchableEnv",
    "ChainMismatchError",
    "EnvSnapshot",
    "MujocoAdapter",
    "MujocoState",
    "ProbeRecord",
    "ProtocolAdapter",
    "ReplayLog",
    "StateAdapter",
    "Transition",
    "UnbranchableEnvError",
    "WorkerFailure",
    "branch_copy",
    "check_branchable",
    "check_same_chain",
    "fidelity_tolerance",
    "find_adapter",
    "largest_difference",
    "needs_replay",
    "raise_failure",
    "register_replay_env",
    "register_state_adapter",
    "restore",
    "snapshot",
    "wrapper_chain",
]
