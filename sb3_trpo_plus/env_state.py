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
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import pickle
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

__all__ = [
    "BranchableEnv",
    "ChainMismatchError",
    "EnvSnapshot",
    "ReplayLog",
    "StateAdapter",
    "UnbranchableEnvError",
    "branch_copy",
    "check_branchable",
    "check_same_chain",
    "find_adapter",
    "needs_replay",
    "register_replay_env",
    "register_state_adapter",
    "restore",
    "snapshot",
    "wrapper_chain",
]

_CLASSIC_CONTROL = frozenset({"CartPoleEnv", "PendulumEnv", "AcrobotEnv", "MountainCarEnv", "Continuous_MountainCarEnv"})
_BOX2D = frozenset({"LunarLander", "BipedalWalker", "CarRacing"})
# Attributes that are structure or configuration, never state: not saved, never overwritten.
_STRUCTURAL = frozenset(
    (
        "env _env spec _cached_spec observation_space action_space _action_space _observation_space metadata "
        "_metadata render_mode _reward_range reward_range _saved_kwargs"
    ).split()
)
# Quantities of mjData computed by mj_forward / mj_rnePostConstraint that an environment may read
# between steps. After mj_step they describe the positions *before* the last integration, so they
# are saved as they are rather than recomputed from the restored state.
_MUJOCO_DERIVED = tuple(
    (
        "xpos xquat xmat xipos ximat xiquat xanchor xaxis geom_xpos geom_xmat geom_xquat site_xpos site_xmat "
        "site_xquat cam_xpos cam_xmat light_xpos light_xdir subtree_com cdof cinert crb ten_length "
        "ten_velocity actuator_length actuator_velocity actuator_force cvel cdof_dot cacc cfrc_int cfrc_ext "
        "subtree_linvel subtree_angmom qfrc_bias qfrc_passive qfrc_spring qfrc_damper qfrc_gravcomp "
        "qfrc_fluid qfrc_actuator qfrc_smooth qacc_smooth qfrc_constraint qacc sensordata energy"
    ).split()
)


class UnbranchableEnvError(ValueError):
    """An environment whose state cannot be saved and restored, so that vine sampling cannot branch it."""


class ChainMismatchError(UnbranchableEnvError):
    """Branch copies whose wrappers differ from the trunk's: the branches would simulate another MDP."""


@runtime_checkable
class StateAdapter(Protocol):
    """
    Saves and restores the state of an *unwrapped* environment of one kind.

    The environment's random generator ``np_random`` and its wrappers are saved and restored by
    :func:`snapshot` / :func:`restore` themselves: an adapter handles the simulator only.
    """

    def save(self, env: gym.Env) -> Any:
        """
        Save the state of an unwrapped environment.

        :param env: the unwrapped environment
        :return: a picklable value holding the environment's full state (``np_random`` excepted),
            sharing no mutable object with the environment
        """
        ...

    def restore(self, env: gym.Env, state: Any) -> None:
        """
        Put an unwrapped environment into a saved state.

        :param env: the unwrapped environment: the one ``state`` was saved from, or another built the same way
        :param state: a value returned by :meth:`save`; it must not be modified (it may be restored again)
        """
        ...


class ProtocolAdapter:
    """For environments with their own ``get_state()`` / ``set_state(state)`` methods."""

    def save(self, env: gym.Env) -> Any:
        """
        :param env: the unwrapped environment
        :return: a copy of what ``env.get_state()`` returns
        """
        return copy.deepcopy(env.get_state())  # type: ignore[attr-defined]

    def restore(self, env: gym.Env, state: Any) -> None:
        """
        :param env: the unwrapped environment
        :param state: a value from :meth:`save` (a copy is passed to ``env.set_state``)
        """
        env.set_state(copy.deepcopy(state))  # type: ignore[attr-defined]


def _copy_plain(value: Any) -> Any:
    """A copy of a plain value (numbers, strings, arrays and containers of them), or ``_NOT_PLAIN``."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic)):
        return value
    if type(value) is np.ndarray:  # exact types only: subclasses (named tuples, ...) are copied by pickling
        return value.copy() if value.dtype != object else _NOT_PLAIN
    if type(value) in (list, tuple):
        items = [_copy_plain(item) for item in value]
        if any(item is _NOT_PLAIN for item in items):
            return _NOT_PLAIN
        return items if type(value) is list else tuple(items)
    if type(value) is dict:
        copied = {key: _copy_plain(item) for key, item in value.items()}
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in copied.values()) else copied
    return _NOT_PLAIN


_NOT_PLAIN = object()


def _plain_attributes(env: gym.Env, skip: frozenset[str]) -> dict[str, Any]:
    state = {}
    for key, value in vars(env).items():
        if key in skip or key in _STRUCTURAL:
            continue
        copied = _copy_plain(value)
        if copied is not _NOT_PLAIN:
            state[key] = copied
    return state


def _set_attributes(env: Any, state: dict[str, Any]) -> None:
    for key, value in state.items():
        setattr(env, key, copy.deepcopy(value))


class AttributeAdapter:
    """Environments whose whole state is their own plain attributes (gymnasium's classic control)."""

    _SKIP: ClassVar[frozenset[str]] = frozenset({"_np_random", "screen", "clock", "viewer", "surf", "isopen"})

    def save(self, env: gym.Env) -> dict[str, Any]:
        """
        :param env: the unwrapped environment
        :return: copies of its attributes that are numbers, strings, arrays or containers of them
        """
        return _plain_attributes(env, self._SKIP)

    def restore(self, env: gym.Env, state: dict[str, Any]) -> None:
        """
        :param env: the unwrapped environment
        :param state: a value from :meth:`save`
        """
        _set_attributes(env, state)


@dataclass
class MujocoState:
    """
    The state of a gymnasium MuJoCo environment.

    :param integration: ``mj_getState(..., mjSTATE_INTEGRATION)``
    :param derived: the derived quantities of ``mjData`` that environments read between steps
    :param attributes: the environment's plain Python attributes
    """

    integration: np.ndarray
    derived: dict[str, np.ndarray]
    attributes: dict[str, Any]


class MujocoAdapter:
    """gymnasium's MuJoCo environments: the full integration state of ``mjData`` and what steps read from it."""

    _SKIP: ClassVar[frozenset[str]] = frozenset({"_np_random", "model", "data", "mujoco_renderer", "fullpath"})

    def save(self, env: gym.Env) -> MujocoState:
        """
        :param env: the unwrapped ``MujocoEnv``
        :return: its integration state, derived quantities and plain attributes
        """
        import mujoco

        model, data = env.model, env.data  # type: ignore[attr-defined]
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        integration = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, integration, spec)
        derived = {name: getattr(data, name).copy() for name in _MUJOCO_DERIVED if hasattr(data, name)}
        return MujocoState(integration, derived, _plain_attributes(env, self._SKIP))

    def restore(self, env: gym.Env, state: MujocoState) -> None:
        """
        :param env: the unwrapped ``MujocoEnv``
        :param state: a value from :meth:`save`
        """
        import mujoco

        model, data = env.model, env.data  # type: ignore[attr-defined]
        mujoco.mj_setState(model, data, state.integration, mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(model, data)  # contacts and constraints consistent with the restored state
        for name, value in state.derived.items():
            getattr(data, name)[...] = value
        _set_attributes(env, state.attributes)


class AtariAdapter:
    """ALE/Atari: the emulator's own state cloning, its random generator included."""

    def save(self, env: gym.Env) -> Any:
        """
        :param env: the unwrapped ``AtariEnv``
        :return: an ``ale_py.ALEState`` (picklable)
        """
        return env.ale.cloneState(include_rng=True)  # type: ignore[attr-defined]

    def restore(self, env: gym.Env, state: Any) -> None:
        """
        :param env: the unwrapped ``AtariEnv``
        :param state: a value from :meth:`save`
        """
        env.ale.restoreState(state)  # type: ignore[attr-defined]


@dataclass
class ReplayLog:
    """
    What replaying an episode needs: how it was reset and the actions taken since.

    :param seed: the seed passed to ``reset``
    :param options: the options passed to ``reset``
    :param rng_state: ``np_random``'s bit-generator state just before the reset
    :param actions: the actions the unwrapped environment received since the reset
    """

    seed: int | None
    options: dict[str, Any] | None
    rng_state: dict[str, Any]
    actions: list[Any] = field(default_factory=list)


@dataclass
class EnvSnapshot:
    """
    The complete state of an environment and its wrappers (picklable).

    :param env_class: qualified name of the unwrapped environment's class
    :param kind: "adapter" (``env_state`` comes from a :class:`StateAdapter`) or "replay"
        (``env_state`` is a :class:`ReplayLog`)
    :param env_state: the unwrapped environment's state
    :param rng_state: the unwrapped environment's ``np_random`` bit-generator state (None if it had none yet)
    :param rng_seed: the unwrapped environment's ``_np_random_seed``
    :param wrappers: (qualified names of the wrapper's class and of the wrapper classes it derives
        from, saved attributes) of every wrapper, outermost first
    """

    env_class: str
    kind: Literal["adapter", "replay"]
    env_state: Any
    rng_state: dict[str, Any] | None
    rng_seed: int | None
    wrappers: list[tuple[tuple[str, ...], dict[str, Any]]]


@dataclass
class _ReplayType:
    env_type: type
    rebuild: bool


_ADAPTERS: list[tuple[type, StateAdapter]] = []
_REPLAY_TYPES: list[_ReplayType] = []


def register_state_adapter(env_type: type[gym.Env], adapter: StateAdapter) -> None:
    """
    Make environments of ``env_type`` (subclasses included) branchable with ``adapter``, which
    saves and restores the unwrapped environment's own state; the random generator ``np_random``
    and the wrappers are handled by :func:`snapshot` and :func:`restore`. A registered adapter
    takes precedence over every built-in one, and later registrations over earlier ones.

    :param env_type: class of the unwrapped environments the adapter applies to
    :param adapter: an object with ``save(env) -> state`` and ``restore(env, state)`` (see :class:`StateAdapter`)
    """
    if not isinstance(adapter, StateAdapter):
        raise TypeError(f"a state adapter needs save(env) and restore(env, state) methods, got {adapter!r}")
    _ADAPTERS.insert(0, (env_type, adapter))


def register_replay_env(env_type: type[gym.Env], rebuild: bool = False) -> None:
    """
    Make environments of ``env_type`` (subclasses included) branchable by replay (see the module
    documentation): only valid when the environment is deterministic given its ``np_random`` and
    the actions, with no other source of randomness and no state carried across ``reset()``
    (or ``rebuild=True``).

    :param env_type: class of the unwrapped environments
    :param rebuild: rebuild the environment in place (``type(env).__init__`` with its spec's keyword
        arguments, or else its attributes of the same names) at every reset, for simulators whose
        history changes how they step (as Box2D's world does)
    """
    _REPLAY_TYPES.insert(0, _ReplayType(env_type, rebuild))


def _class_names(env: gym.Env) -> set[str]:
    return {cls.__name__ for cls in type(env).__mro__}


def _has_protocol(env: gym.Env) -> bool:
    get_state, set_state = getattr(env, "get_state", None), getattr(env, "set_state", None)
    if not (callable(get_state) and callable(set_state)):
        return False
    try:  # gymnasium's MujocoEnv has set_state(qpos, qvel): not the protocol
        inspect.signature(set_state).bind(None)
        inspect.signature(get_state).bind()
    except (TypeError, ValueError):
        return False
    return True


def find_adapter(env: gym.Env) -> StateAdapter | None:
    """
    The adapter that saves and restores an unwrapped environment.

    :param env: the unwrapped environment
    :return: its adapter, or None when it can only be replayed (see :func:`needs_replay`) or not branched at all
    """
    for env_type, adapter in _ADAPTERS:
        if isinstance(env, env_type):
            return adapter
    if _has_protocol(env):
        return ProtocolAdapter()
    names = _class_names(env)
    if "MujocoEnv" in names and hasattr(env, "model") and hasattr(env, "data"):
        return MujocoAdapter()
    if "AtariEnv" in names and hasattr(env, "ale"):
        return AtariAdapter()
    if type(env).__module__.startswith("gymnasium.envs.classic_control") and names & _CLASSIC_CONTROL:
        return AttributeAdapter()
    return None


def _replay_type(env: gym.Env) -> _ReplayType | None:
    for replay_type in _REPLAY_TYPES:
        if isinstance(env, replay_type.env_type):
            return replay_type
    if type(env).__module__.startswith("gymnasium.envs.box2d") and _class_names(env) & _BOX2D:
        return _ReplayType(type(env), rebuild=True)
    return None


def needs_replay(env: gym.Env) -> bool:
    """
    Whether an environment is branched by replay (and so must be wrapped in :class:`BranchableEnv`
    before its episode starts for snapshots to be possible).

    :param env: the environment (wrapped or not)
    :return: True when no adapter applies and its unwrapped environment is a replay type
    """
    unwrapped = env.unwrapped
    return find_adapter(unwrapped) is None and _replay_type(unwrapped) is not None


def _describe(env: gym.Env) -> str:
    unwrapped = env.unwrapped
    spec = getattr(unwrapped, "spec", None)
    name = f"{type(unwrapped).__module__}.{type(unwrapped).__qualname__}"
    return name + (f" (id {spec.id!r})" if spec is not None else "")


def check_branchable(env: gym.Env) -> None:
    """
    Check that ``env`` can be snapshotted and restored. Cheap (it looks at types only) and does
    not touch the environment's state. An environment branched by replay passes: it is
    branchable once wrapped in :class:`BranchableEnv` (the vine sampler does that for the
    environments of a DummyVecEnv; with a SubprocVecEnv, build the environments with
    ``wrapper_class=BranchableEnv``); :func:`snapshot` says so if the wrapper is missing.

    :param env: the environment (wrapped or not)
    :raises UnbranchableEnvError: naming the environment's class and id, and how to add support
    """
    unwrapped = env.unwrapped
    if find_adapter(unwrapped) is not None or _replay_type(unwrapped) is not None:
        return
    raise UnbranchableEnvError(
        f"sampling='vine' cannot save and restore the state of {_describe(env)}. Make it branchable by "
        "giving the environment class get_state() and set_state(state) methods that capture its full state "
        "(its np_random and its wrappers are saved separately), or by "
        "sb3_trpo_plus.env_state.register_state_adapter(YourEnvClass, adapter) with an adapter that has "
        "save(env) -> state and restore(env, state) methods, or, if it is deterministic given its np_random "
        "and the actions, by sb3_trpo_plus.env_state.register_replay_env(YourEnvClass)."
    )


def _chain(env: gym.Env) -> list[gym.Wrapper]:
    """The wrappers of ``env``, outermost first."""
    wrappers = []
    while isinstance(env, gym.Wrapper):
        wrappers.append(env)
        env = env.env
    return wrappers


def _qualified(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _lineage(wrapper: gym.Wrapper) -> tuple[str, ...]:
    """Qualified names of a wrapper's class and of the wrapper classes it derives from, most specific first."""
    generic = (gym.Wrapper, gym.ObservationWrapper, gym.ActionWrapper, gym.RewardWrapper, gym.Env)
    return tuple(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in type(wrapper).__mro__
        if issubclass(cls, gym.Wrapper) and cls not in generic
    )


def _is_configuration(value: Any) -> bool:
    """Values that are not state: environments, spaces, functions, classes, modules, files."""
    return isinstance(
        value,
        (
            gym.Env,
            gym.spaces.Space,
            types.FunctionType,
            types.BuiltinFunctionType,
            types.MethodType,
            functools.partial,
            type,
            types.ModuleType,
            io.IOBase,
        ),
    )


def _wrapper_state(wrapper: gym.Wrapper) -> dict[str, Any]:
    state = {}
    for key, value in vars(wrapper).items():
        if key in _STRUCTURAL or _is_configuration(value):
            continue
        copied = _copy_plain(value)
        if copied is _NOT_PLAIN:
            try:  # a pickle round trip copies, and proves the snapshot picklable
                copied = pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            except Exception:  # handles (files, sockets, renderers) and functions are not state
                continue
        state[key] = copied
    return state


def _is_internal(wrapper: gym.Wrapper) -> bool:
    return isinstance(wrapper, (BranchableEnv, _ReplayRecorder))


def _recorder(env: gym.Env) -> _ReplayRecorder | None:
    for wrapper in _chain(env):
        if isinstance(wrapper, _ReplayRecorder):
            return wrapper
    return None


def _get_rng(env: gym.Env) -> tuple[dict[str, Any] | None, int | None]:
    rng = getattr(env, "_np_random", None)
    if rng is None:
        return None, None
    return copy.deepcopy(rng.bit_generator.state), getattr(env, "_np_random_seed", None)


def _set_rng(env: gym.Env, state: dict[str, Any], seed: int | None = None) -> None:
    rng = getattr(env, "_np_random", None)
    if rng is None or type(rng.bit_generator).__name__ != state["bit_generator"]:
        rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
        env.np_random = rng
    rng.bit_generator.state = copy.deepcopy(state)
    if seed is not None:
        env._np_random_seed = seed  # type: ignore[attr-defined]


def snapshot(env: gym.Env) -> EnvSnapshot:
    """
    Save the complete state of ``env``: unwrapped environment, its ``np_random`` and every wrapper.

    :param env: the environment (wrapped or not). An environment branched by replay must contain
        a :class:`BranchableEnv` that saw the current episode's ``reset()``
    :return: a picklable snapshot, to be restored with :func:`restore` on ``env`` or on another
        environment built the same way
    :raises UnbranchableEnvError: if ``env`` cannot be snapshotted
    """
    unwrapped = env.unwrapped
    adapter = find_adapter(unwrapped)
    if adapter is not None:
        kind: Literal["adapter", "replay"] = "adapter"
        env_state = adapter.save(unwrapped)
    else:
        check_branchable(env)
        recorder = _recorder(env)
        if recorder is None:
            raise UnbranchableEnvError(
                f"{_describe(env)} is branched by replay, which needs the recording done by "
                "sb3_trpo_plus.env_state.BranchableEnv: wrap the environment in it before its episode starts "
                "(with a SubprocVecEnv: make_vec_env(..., wrapper_class=BranchableEnv))"
            )
        if recorder.log is None:
            raise UnbranchableEnvError(
                f"{_describe(env)} is branched by replay and its current episode began before it was wrapped in "
                "BranchableEnv: there is nothing to replay; snapshots are possible after the next reset()"
            )
        kind = "replay"
        env_state = copy.deepcopy(recorder.log)
    rng_state, rng_seed = _get_rng(unwrapped)
    wrappers = [(_lineage(w), _wrapper_state(w)) for w in _chain(env) if not _is_internal(w)]
    return EnvSnapshot(_qualified(unwrapped), kind, env_state, rng_state, rng_seed, wrappers)


def restore(env: gym.Env, snap: EnvSnapshot) -> None:
    """
    Put ``env`` into the state saved in ``snap`` (which is not modified, and can be restored again).

    Wrappers are matched by class, outermost first, in order: a wrapper of ``env`` with no
    counterpart in the snapshot keeps its state, and the state of a snapshot's wrapper that
    ``env`` lacks is ignored (so a branch copy built without SB3's ``Monitor`` can take a
    snapshot of a monitored trunk).

    :param env: the environment the snapshot was taken from, or another built the same way
    :param snap: a snapshot from :func:`snapshot` or :meth:`BranchableEnv.get_state`
    :raises ValueError: if the snapshot is of another kind of environment
    :raises UnbranchableEnvError: if ``env`` cannot be restored (a replayed environment without :class:`BranchableEnv`)
    """
    unwrapped = env.unwrapped
    if snap.env_class != _qualified(unwrapped):
        raise ValueError(f"a snapshot of {snap.env_class} cannot be restored onto {_qualified(unwrapped)}")
    if snap.kind == "adapter":
        adapter = find_adapter(unwrapped)
        if adapter is None:
            raise UnbranchableEnvError(f"no state adapter for {_describe(env)} (was it registered in this process?)")
        adapter.restore(unwrapped, snap.env_state)
    else:
        recorder = _recorder(env)
        if recorder is None:
            raise UnbranchableEnvError(
                f"{_describe(env)} is restored by replay, which needs sb3_trpo_plus.env_state.BranchableEnv around it"
            )
        recorder.replay(snap.env_state)
    if snap.rng_state is not None:
        _set_rng(unwrapped, snap.rng_state, snap.rng_seed)
    saved = list(snap.wrappers)
    for wrapper in _chain(env):
        if _is_internal(wrapper):
            continue
        lineage = _lineage(wrapper)
        for position, (saved_lineage, state) in enumerate(saved):
            # the same wrapper class in both lineages (generic bases excluded): rl_zoo3, once
            # imported, makes gym.make build its PatchedTimeLimit (a TimeLimit) where a
            # subprocess without it builds TimeLimit, or another TimeLimit subclass
            if set(saved_lineage) & set(lineage):
                _set_attributes(wrapper, state)
                del saved[: position + 1]
                break


_KEPT_ON_REBUILD = ("spec", "action_space", "observation_space", "_np_random", "_np_random_seed")


def _rebuild(env: gym.Env) -> None:
    """
    Rebuild an unwrapped environment in place with the arguments it was made with (its spec's
    keyword arguments, else its attributes of the same names), keeping its spec, its spaces (and
    their random generators) and its ``np_random``.
    """
    spec = getattr(env, "spec", None)
    spec_kwargs = dict(spec.kwargs) if spec is not None else {}
    kwargs: dict[str, Any] = {}
    for name, parameter in list(inspect.signature(type(env).__init__).parameters.items())[1:]:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            kwargs.update({key: value for key, value in spec_kwargs.items() if key not in kwargs})
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            if name in spec_kwargs:
                kwargs[name] = spec_kwargs[name]
            elif name in vars(env):
                kwargs[name] = vars(env)[name]
    kept = {key: vars(env)[key] for key in _KEPT_ON_REBUILD if key in vars(env)}
    env.close()
    type(env).__init__(env, **kwargs)
    for key, value in kept.items():
        setattr(env, key, value)


class _ReplayRecorder(gym.Wrapper):
    """
    The innermost wrapper of a replayed environment (inserted by :class:`BranchableEnv`): records
    how each episode was reset and the actions the unwrapped environment received, and replays them.

    :param env: the unwrapped environment
    :param rebuild: rebuild the environment at every reset (see :func:`register_replay_env`)
    """

    def __init__(self, env: gym.Env, rebuild: bool) -> None:
        super().__init__(env)
        self.rebuild = rebuild
        self.log: ReplayLog | None = None
        self.replayed_steps = 0

    def _start(self, seed: int | None, options: dict[str, Any] | None, rng_state: dict[str, Any]) -> Any:
        unwrapped = self.env.unwrapped
        if self.rebuild:
            _rebuild(unwrapped)
        _set_rng(unwrapped, rng_state)
        return unwrapped.reset(seed=seed, options=copy.deepcopy(options))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        rng_state = dict(copy.deepcopy(self.env.unwrapped.np_random.bit_generator.state))  # creates np_random if needed
        self.log = ReplayLog(seed, copy.deepcopy(options), rng_state)
        return self._start(seed, options, rng_state)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self.log is not None:
            self.log.actions.append(copy.deepcopy(action))
        return self.env.step(action)

    def replay(self, log: ReplayLog) -> None:
        """
        Reset the unwrapped environment as ``log`` says and step it through ``log``'s actions,
        bypassing every wrapper.

        :param log: the episode to replay (not modified)
        """
        self._start(log.seed, log.options, log.rng_state)
        unwrapped = self.env.unwrapped
        for action in log.actions:
            unwrapped.step(copy.deepcopy(action))
        self.replayed_steps += len(log.actions)
        self.log = copy.deepcopy(log)


class BranchableEnv(gym.Wrapper):
    """
    A transparent wrapper with ``get_state()`` and ``set_state(state)``, so that whoever holds the
    environment (a DummyVecEnv, or a SubprocVecEnv through ``env_method("get_state")``) can
    snapshot and restore it: ``get_state()`` is :func:`snapshot` and ``set_state(state)`` is
    :func:`restore` on the wrapped environment (wrappers outside this one are not saved, so make
    it the outermost). For an environment branched by replay, it inserts the recorder that replay
    needs at the bottom of the wrapper chain (between the unwrapped environment and its innermost
    wrapper); snapshots are possible from the first ``reset()`` after wrapping.

    The vine sampler inserts it into the environments of a DummyVecEnv itself; with a
    SubprocVecEnv add it when building the environments:
    ``make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv)``.
    Then trunk environment ``i`` is snapshotted by ``dummy_vec_env.envs[i].get_state()`` or
    ``subproc_vec_env.env_method("get_state", indices=[i])[0]`` and restored by ``set_state(snap)``
    on this or any identically built copy (a copy may lack the trunk's ``Monitor``). Restoring a replayed environment
    costs a rebuild plus one simulator step per step of the episode so far
    (:attr:`replayed_steps`).

    :param env: the environment to make branchable
    :raises UnbranchableEnvError: if ``env`` cannot be branched
    """

    @classmethod
    def around(cls, env: gym.Env) -> BranchableEnv:
        """:return: ``env`` if it is a :class:`BranchableEnv`, else ``env`` wrapped in one"""
        return env if isinstance(env, BranchableEnv) else cls(env)

    def __init__(self, env: gym.Env) -> None:
        check_branchable(env)
        replay_type = _replay_type(env.unwrapped) if needs_replay(env) else None
        if replay_type is not None and _recorder(env) is None:
            chain = _chain(env)
            if chain:
                chain[-1].env = _ReplayRecorder(chain[-1].env, replay_type.rebuild)
            else:
                env = _ReplayRecorder(env, replay_type.rebuild)
        super().__init__(env)

    @property
    def replayed_steps(self) -> int:
        """Simulator steps spent replaying episodes to restore snapshots (0 unless branched by replay)."""
        recorder = _recorder(self.env)
        return 0 if recorder is None else recorder.replayed_steps

    def get_state(self) -> EnvSnapshot:
        """
        :return: a snapshot of the wrapped environment's current state (see :func:`snapshot`)
        """
        return snapshot(self.env)

    def set_state(self, state: EnvSnapshot) -> None:
        """
        :param state: a snapshot from :meth:`get_state` on this or an identically built environment (see :func:`restore`)
        """
        restore(self.env, state)

    def wrapper_chain(self) -> list[tuple[str, ...]]:
        """:return: :func:`wrapper_chain` of this environment (callable through ``SubprocVecEnv.env_method``)"""
        return wrapper_chain(self)

    def branch_copy_blob(self) -> bytes:
        """:return: a cloudpickled :func:`branch_copy` of this environment (callable through ``SubprocVecEnv.env_method``)"""
        return _branch_copy_blob(self)

    def guarded_call(self, method: str, *args: Any) -> Any:
        """
        Call one of this wrapper's methods and return its result, or a :class:`WorkerFailure`
        instead of raising: an exception raised in a SubprocVecEnv worker kills it and reaches
        the main process as a bare ``EOFError``; a returned failure names the environment and the
        original exception.

        :param method: the method's name
        :param args: its arguments
        :return: its result, or a :class:`WorkerFailure`
        """
        try:
            return getattr(self, method)(*args)
        except Exception as error:
            return WorkerFailure.capture(self, method, error)


# ---------------------------------------------------------------------------------------- branch copies

#: wrappers whose work is a side effect outside the process (files, videos, windows) that a copy
#: would repeat: branch copies refuse them rather than silently writing or dropping them
_REFUSED_WRAPPERS: dict[str, str] = {
    "gymnasium.wrappers.rendering.RecordVideo": "it records videos of every episode to files",
    "gymnasium.wrappers.rendering.HumanRendering": "it opens a window",
}


def wrapper_chain(env: gym.Env) -> list[tuple[str, ...]]:
    """
    What an environment is made of, outermost first: the lineage (see :func:`snapshot`) of every
    wrapper (this module's own transparent wrappers excepted), then the unwrapped environment's class.

    :param env: the environment
    :return: one tuple of qualified class names per layer
    """
    layers: list[tuple[str, ...]] = [_lineage(w) for w in _chain(env) if not _is_internal(w)]
    return [*layers, (_qualified(env.unwrapped),)]


def _layer_name(layer: tuple[str, ...]) -> str:
    return layer[0] if layer else "gymnasium.Wrapper"


#: wrappers that only record (statistics, files) and do not change the MDP: a branch copy built
#: by the user may lack them
_RECORDERS = frozenset({"stable_baselines3.common.monitor.Monitor", "gymnasium.wrappers.common.RecordEpisodeStatistics"})


def _matches(ours: tuple[str, ...], theirs: tuple[str, ...]) -> bool:
    return bool(set(ours) & set(theirs))


def check_same_chain(trunk: list[tuple[str, ...]], branch: list[tuple[str, ...]], where: str = "branch copies") -> None:
    """
    Refuse branch copies that are not the trunk's environment, wrapper for wrapper.

    Two layers match when their lineages share a class (rl_zoo3's ``PatchedTimeLimit`` matches
    gymnasium's ``TimeLimit``, as in :func:`restore`). Wrappers that only record (SB3's
    ``Monitor``, gymnasium's ``RecordEpisodeStatistics``) may be missing from a branch copy.

    :param trunk: :func:`wrapper_chain` of the trunk's environment
    :param branch: :func:`wrapper_chain` of a branch copy
    :param where: how the branch copies were made (for the message)
    :raises ChainMismatchError: naming the first wrapper that differs
    """
    ours_layers = [layer for layer in trunk if not (set(layer) & _RECORDERS)]
    theirs_layers = [layer for layer in branch if not (set(layer) & _RECORDERS)]
    for position in range(max(len(ours_layers), len(theirs_layers))):
        ours = ours_layers[position] if position < len(ours_layers) else None
        theirs = theirs_layers[position] if position < len(theirs_layers) else None
        if ours is not None and theirs is not None and _matches(ours, theirs):
            continue
        if ours is not None and not any(_matches(ours, layer) for layer in theirs_layers[position:]):
            problem = f"{where} lack the trunk's wrapper {_layer_name(ours)}"
        else:
            problem = f"{where} have the wrapper {_layer_name(theirs or ())} that the trunk's environment does not have"
        trunk_text = " -> ".join(_layer_name(layer) for layer in trunk)
        branch_text = " -> ".join(_layer_name(layer) for layer in branch)
        raise ChainMismatchError(
            f"sampling='vine': {problem}, so the branches would simulate another MDP than the trunk. "
            f"Trunk: {trunk_text}. Branch copy: {branch_text}. Build the branch copies with every wrapper of the "
            "trunk, in the same order (vine_kwargs['make_branch_env']), or leave make_branch_env unset to have "
            "copies of the trunk's own environment."
        )


def _side_effects(env: gym.Env) -> dict[int, Any]:
    """
    A deepcopy memo that drops what writes outside the process: SB3's ``Monitor`` results writer
    and open files held by wrappers (a copy of a ``Monitor`` then counts its own episodes in
    memory and writes nothing).
    """
    from stable_baselines3.common.monitor import ResultsWriter

    memo: dict[int, Any] = {}
    for layer in [*_chain(env), env.unwrapped]:
        name = _qualified(layer)
        if name in _REFUSED_WRAPPERS:
            raise UnbranchableEnvError(
                f"sampling='vine' cannot copy the trunk's wrapper {name} for its branches: {_REFUSED_WRAPPERS[name]}, "
                "and its copies would do it again for every branch. Remove it from the training environment (record "
                "videos from a separate evaluation environment)."
            )
        for value in vars(layer).values():
            if isinstance(value, (ResultsWriter, io.IOBase)):
                memo[id(value)] = None
    return memo


def branch_copy(env: gym.Env) -> gym.Env:
    """
    A copy of ``env``, every wrapper included, for branching: the same MDP, without the side
    effects that leave the process (SB3's ``Monitor`` keeps counting but writes no file; open
    files of other wrappers are dropped). Its state is a copy of ``env``'s; branches put it into a
    snapshot's state with :func:`restore` before stepping it.

    :param env: the trunk's environment
    :return: the copy (picklable with cloudpickle, so that subprocesses can be given it)
    :raises UnbranchableEnvError: naming the wrapper that cannot be copied, and how to proceed
    """
    memo = _side_effects(env)
    try:
        return copy.deepcopy(env, memo)
    except Exception as error:
        culprit = _qualified(env.unwrapped)
        for layer in [env.unwrapped, *reversed(_chain(env))]:  # innermost first: the first that fails
            own = {key: value for key, value in vars(layer).items() if key != "env"}
            try:
                copy.deepcopy(own, dict(memo))
            except Exception:
                culprit = _qualified(layer)
                break
        raise UnbranchableEnvError(
            f"sampling='vine' runs its branches on copies of the trunk's environment, and {culprit} cannot be copied "
            f"({type(error).__name__}: {error}). Make it copyable (copy.deepcopy / pickle, e.g. by dropping handles in "
            "__getstate__), or pass vine_kwargs={'make_branch_env': <callable building the same environment, every "
            "wrapper included>}."
        ) from error


def _branch_copy_blob(env: gym.Env) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(branch_copy(env))


@dataclass
class WorkerFailure:
    """
    An exception raised inside a worker process, carried back as a value so that the caller can
    re-raise it with the environment it happened in (instead of the bare ``EOFError`` of a dead worker).

    :param env: :func:`_describe` of the environment
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
        return cls(env if isinstance(env, str) else _describe(env), call, exception, repr(error), traceback.format_exc())

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
