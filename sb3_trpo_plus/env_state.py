"""
Saving and restoring the complete state of an environment, so that vine sampling can branch
rollouts from a trunk state (Schulman et al. 2015, section 5.2: "requires the ability to reset
the system to a given state").

A snapshot holds the state of the unwrapped environment, the state of every wrapper of the
chain (TimeLimit's elapsed steps, OrderEnforcing's flag, episode statistics, frame stacks,
normalisation statistics, ...), and the environment's random generator. It is a picklable
value, and can be restored on the instance it was taken from or on another instance built the
same way (branches run on dedicated copies, possibly in subprocesses).

How the unwrapped state is taken, by kind of environment:

- your own: an environment with ``get_state()`` / ``set_state(state)`` methods is used as it is;
  or register an adapter with :func:`register_state_adapter`;
- MuJoCo (gymnasium's ``MujocoEnv``): ``mujoco.mj_getState`` / ``mj_setState`` with
  ``mjSTATE_INTEGRATION`` (positions and velocities alone are not the full state);
- classic control: the env's own attributes (``state``, CartPole's ``steps_beyond_terminated``,
  Pendulum's ``last_u``, ...);
- ALE/Atari: the emulator's ``cloneState(include_rng=True)`` / ``restoreState``;
- Box2D (LunarLander, BipedalWalker, CarRacing), which has no restore API: *replay*. The
  snapshot is the random state at the episode's reset plus the actions taken since; restoring
  resets and replays them. This needs the recording done by :class:`BranchableEnv` and costs
  simulator time proportional to the episode so far (counted in ``replayed_steps``). Register
  other environments that are deterministic under their random generator with
  :func:`register_replay_env`.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import gymnasium as gym
import numpy as np

CLASSIC_CONTROL = ("CartPoleEnv", "PendulumEnv", "AcrobotEnv", "MountainCarEnv", "Continuous_MountainCarEnv")
REPLAY_ENVS = ("LunarLander", "BipedalWalker", "CarRacing")
# Wrapper attributes that are structure, not state
_STRUCTURAL = {"env", "_env", "spec", "_cached_spec", "observation_space", "action_space", "_action_space"}
_STRUCTURAL |= {"_observation_space", "metadata", "_metadata", "render_mode", "_reward_range"}


class UnbranchableEnvError(ValueError):
    """An environment whose state cannot be saved and restored, so that vine sampling cannot branch it."""


class StateAdapter(Protocol):
    """Saves and restores the state of an *unwrapped* environment."""

    def save(self, env: gym.Env) -> Any:
        """A picklable value holding the environment's full state (its random generator excepted)."""

    def restore(self, env: gym.Env, state: Any) -> None:
        """Put ``env`` (the same or another instance built the same way) into ``state``."""


class ProtocolAdapter:
    """For environments with their own ``get_state()`` / ``set_state(state)``."""

    def save(self, env: gym.Env) -> Any:
        return env.get_state()  # type: ignore[attr-defined]

    def restore(self, env: gym.Env, state: Any) -> None:
        env.set_state(state)  # type: ignore[attr-defined]


class MujocoAdapter:
    """gymnasium's MuJoCo environments: the full integration state of ``mjData``."""

    def save(self, env: gym.Env) -> Any:
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(env.model, spec))  # type: ignore[attr-defined]
        mujoco.mj_getState(env.model, env.data, state, spec)  # type: ignore[attr-defined]
        return state

    def restore(self, env: gym.Env, state: Any) -> None:
        import mujoco

        mujoco.mj_setState(env.model, env.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)  # type: ignore[attr-defined]
        mujoco.mj_forward(env.model, env.data)  # type: ignore[attr-defined]


class AttributeAdapter:
    """Environments whose state is their own plain attributes (gymnasium's classic control)."""

    _SKIP: ClassVar[set[str]] = {"np_random", "_np_random", "screen", "clock", "viewer", "surf", *_STRUCTURAL}

    def save(self, env: gym.Env) -> Any:
        return {key: copy.deepcopy(value) for key, value in vars(env).items() if key not in self._SKIP and _plain(value)}

    def restore(self, env: gym.Env, state: Any) -> None:
        for key, value in state.items():
            setattr(env, key, copy.deepcopy(value))


class AtariAdapter:
    """ALE/Atari: the emulator's own state cloning, its random generator included."""

    def save(self, env: gym.Env) -> Any:
        return env.ale.cloneState(include_rng=True)  # type: ignore[attr-defined]

    def restore(self, env: gym.Env, state: Any) -> None:
        env.ale.restoreState(state)  # type: ignore[attr-defined]


@dataclass
class ReplayLog:
    """What replaying an episode needs: how it was reset and the actions taken since."""

    seed: int | None
    options: dict[str, Any] | None
    rng_state: dict[str, Any] | None
    actions: list[Any] = field(default_factory=list)


@dataclass
class EnvSnapshot:
    """
    The complete state of an environment and its wrappers.

    :param env_state: the unwrapped environment's state (from its adapter), or a :class:`ReplayLog`
    :param rng_state: the unwrapped environment's ``np_random`` bit-generator state
    :param wrappers: (class name, attributes) of every wrapper, outermost first
    """

    env_state: Any
    rng_state: dict[str, Any] | None
    wrappers: list[tuple[str, dict[str, Any]]]


_ADAPTERS: list[tuple[type, StateAdapter]] = []
_REPLAY_TYPES: list[type] = []


def register_state_adapter(env_type: type[gym.Env], adapter: StateAdapter) -> None:
    """
    Make environments of ``env_type`` (subclasses included) branchable with ``adapter``, which
    saves and restores the unwrapped environment's state; the random generator and the wrappers
    are handled here. Later registrations take precedence.
    """
    _ADAPTERS.insert(0, (env_type, adapter))


def register_replay_env(env_type: type[gym.Env]) -> None:
    """
    Make environments of ``env_type`` branchable by replay: only valid when the environment is
    deterministic given its ``np_random`` and the actions (no other source of randomness).
    """
    _REPLAY_TYPES.insert(0, env_type)


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, type(None), np.ndarray, np.generic)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(item) for item in value.values())
    return False


def find_adapter(env: gym.Env) -> StateAdapter | None:
    """The adapter for an unwrapped environment, or None when it can only be replayed or not branched."""
    if callable(getattr(env, "get_state", None)) and callable(getattr(env, "set_state", None)):
        return ProtocolAdapter()
    for env_type, adapter in _ADAPTERS:
        if isinstance(env, env_type):
            return adapter
    names = {cls.__name__ for cls in type(env).__mro__}
    if "MujocoEnv" in names:
        return MujocoAdapter()
    if names & set(CLASSIC_CONTROL):
        return AttributeAdapter()
    if "AtariEnv" in names and hasattr(env, "ale"):
        return AtariAdapter()
    return None


def needs_replay(env: gym.Env) -> bool:
    """Whether an unwrapped environment is branched by replay."""
    if find_adapter(env) is not None:
        return False
    return isinstance(env, tuple(_REPLAY_TYPES)) or bool({cls.__name__ for cls in type(env).__mro__} & set(REPLAY_ENVS))


def check_branchable(env: gym.Env) -> None:
    """
    Raise :class:`UnbranchableEnvError` when ``env`` cannot be saved and restored. Cheap; does
    not touch the environment's state.
    """
    unwrapped = env.unwrapped
    if find_adapter(unwrapped) is not None or needs_replay(unwrapped):
        return
    spec = getattr(unwrapped, "spec", None)
    name = type(unwrapped).__name__ + (f" ({spec.id})" if spec is not None else "")
    raise UnbranchableEnvError(
        f"sampling='vine' cannot save and restore the state of {name}. Make it branchable by giving the "
        "environment get_state() and set_state(state) methods that capture its full state, by "
        "sb3_trpo_plus.env_state.register_state_adapter(YourEnvClass, adapter), or, if it is deterministic "
        "under its np_random, by sb3_trpo_plus.env_state.register_replay_env(YourEnvClass)."
    )


def _wrappers(env: gym.Env) -> list[gym.Wrapper]:
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(env)
        env = env.env
    return chain


def _wrapper_state(wrapper: gym.Wrapper) -> dict[str, Any]:
    state = {}
    for key, value in vars(wrapper).items():
        if key in _STRUCTURAL or isinstance(value, gym.Env):
            continue
        try:
            state[key] = copy.deepcopy(value)
        except Exception:  # handles (files, sockets) are not state
            continue
    return state


def snapshot(env: gym.Env) -> EnvSnapshot:
    """
    The complete state of ``env``: unwrapped environment, random generator and wrappers.
    Replay-based environments must be snapshotted through :meth:`BranchableEnv.get_state`.
    """
    unwrapped = env.unwrapped
    adapter = find_adapter(unwrapped)
    if adapter is None:
        check_branchable(env)
        raise UnbranchableEnvError(
            f"{type(unwrapped).__name__} is branched by replay: wrap it in sb3_trpo_plus.env_state.BranchableEnv"
        )
    rng = getattr(unwrapped, "_np_random", None)
    rng_state = copy.deepcopy(rng.bit_generator.state) if rng is not None else None
    wrappers = [(type(w).__name__, _wrapper_state(w)) for w in _wrappers(env) if not isinstance(w, BranchableEnv)]
    return EnvSnapshot(adapter.save(unwrapped), rng_state, wrappers)


def restore(env: gym.Env, snap: EnvSnapshot) -> None:
    """
    Put ``env`` into the state of ``snap``. Wrappers are matched by class, in order; a wrapper
    of ``env`` with no counterpart in the snapshot keeps its state.
    """
    unwrapped = env.unwrapped
    adapter = find_adapter(unwrapped)
    if adapter is None:
        raise UnbranchableEnvError(f"{type(unwrapped).__name__} is branched by replay: restore it through BranchableEnv")
    adapter.restore(unwrapped, snap.env_state)
    if snap.rng_state is not None:
        unwrapped.np_random.bit_generator.state = copy.deepcopy(snap.rng_state)
    saved = list(snap.wrappers)
    for wrapper in _wrappers(env):
        if isinstance(wrapper, BranchableEnv):
            continue
        for position, (name, state) in enumerate(saved):
            if name == type(wrapper).__name__:
                for key, value in state.items():
                    setattr(wrapper, key, copy.deepcopy(value))
                del saved[position]
                break


def _reinitialize(env: gym.Env) -> None:
    """
    Rebuild an unwrapped environment in place with the arguments it was made with. Box2D keeps
    its world across resets, and a world's history (allocator and contact order) changes how it
    steps: a replay is bit-identical only from a freshly built world.
    """
    spec = getattr(env, "spec", None)
    kwargs = dict(spec.kwargs) if spec is not None else {}
    if "render_mode" in inspect.signature(type(env).__init__).parameters:
        kwargs["render_mode"] = getattr(env, "render_mode", None)
    env.close()
    type(env).__init__(env, **kwargs)


class BranchableEnv(gym.Wrapper):
    """
    A transparent wrapper with ``get_state()`` and ``set_state(state)``, so that any process
    holding the environment (a DummyVecEnv, or a SubprocVecEnv through ``env_method``) can
    snapshot and restore it. For replay-based environments it records what replay needs.

    The vine sampler inserts it into the environments of a DummyVecEnv itself; with a
    SubprocVecEnv add it when building the environments:
    ``make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv)``.

    :param env: the environment to make branchable
    :raises UnbranchableEnvError: if ``env`` cannot be branched
    """

    def __init__(self, env: gym.Env) -> None:
        check_branchable(env)
        super().__init__(env)
        self.replay = needs_replay(env.unwrapped)
        self.log: ReplayLog | None = None
        self.replayed_steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self.replay:
            rng_state = None if seed is not None else dict(copy.deepcopy(self.env.unwrapped.np_random.bit_generator.state))
            self.log = ReplayLog(seed, copy.deepcopy(options), rng_state)
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self.log is not None:
            self.log.actions.append(copy.deepcopy(action))
        return self.env.step(action)

    def get_state(self) -> EnvSnapshot | ReplayLog:
        """A snapshot of the wrapped environment's current state."""
        if not self.replay:
            return snapshot(self.env)
        if self.log is None:
            raise RuntimeError("get_state() before the first reset(): there is no episode to replay")
        return ReplayLog(self.log.seed, self.log.options, self.log.rng_state, list(self.log.actions))

    def set_state(self, state: EnvSnapshot | ReplayLog) -> None:
        """Put the wrapped environment into ``state`` (from :meth:`get_state` on this or an identical environment)."""
        if not isinstance(state, ReplayLog):
            restore(self.env, state)
            return
        _reinitialize(self.env.unwrapped)
        if state.rng_state is not None:
            self.env.unwrapped.np_random.bit_generator.state = copy.deepcopy(state.rng_state)
        self.env.reset(seed=state.seed, options=copy.deepcopy(state.options))
        for action in state.actions:
            self.env.step(action)
        self.replayed_steps += len(state.actions)
        self.log = ReplayLog(state.seed, state.options, state.rng_state, list(state.actions))
