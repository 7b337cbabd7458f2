"""
Replay, for environments without a restore API that are deterministic given their ``np_random``
and the actions: the record of an episode (:class:`ReplayLog`) and the innermost wrapper that
records and replays it (:class:`ReplayRecorder`).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from sb3_trpo_plus.env_state.attributes import set_rng
from sb3_trpo_plus.env_state.layers import InternalWrapper, wrappers_of


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


_KEPT_ON_REBUILD = ("spec", "action_space", "observation_space", "_np_random", "_np_random_seed")


def rebuild_in_place(env: gym.Env) -> None:
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


class ReplayRecorder(InternalWrapper):
    """
    The innermost wrapper of a replayed environment (inserted by :class:`BranchableEnv`): records
    how each episode was reset and the actions the unwrapped environment received, and replays them.

    :param env: the unwrapped environment
    :param rebuild: rebuild the environment at every reset (see :func:`register_replay_env`)

    With :attr:`watch` on (vine's fidelity probe turns it on), it also keeps a copy of every
    observation of the current episode, the reset's first (:attr:`observations`); a replay then
    fills it with the replayed observations, so that they can be compared with the trunk's.
    """

    def __init__(self, env: gym.Env, rebuild: bool) -> None:
        super().__init__(env)
        self.rebuild = rebuild
        self.log: ReplayLog | None = None
        self.replayed_steps = 0
        self.watch = False
        self.observations: list[Any] | None = None

    def _start(self, seed: int | None, options: dict[str, Any] | None, rng_state: dict[str, Any]) -> Any:
        unwrapped = self.env.unwrapped
        if self.rebuild:
            rebuild_in_place(unwrapped)
        set_rng(unwrapped, rng_state)
        return unwrapped.reset(seed=seed, options=copy.deepcopy(options))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        rng_state = dict(copy.deepcopy(self.env.unwrapped.np_random.bit_generator.state))  # creates np_random if needed
        self.log = ReplayLog(seed, copy.deepcopy(options), rng_state)
        obs, info = self._start(seed, options, rng_state)
        self.observations = [copy.deepcopy(obs)] if self.watch else None
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self.log is not None:
            self.log.actions.append(copy.deepcopy(action))
        result = self.env.step(action)
        if self.observations is not None:
            self.observations.append(copy.deepcopy(result[0]))
        return result

    def replay(self, log: ReplayLog) -> None:
        """
        Reset the unwrapped environment as ``log`` says and step it through ``log``'s actions,
        bypassing every wrapper.

        :param log: the episode to replay (not modified)
        """
        obs, _ = self._start(log.seed, log.options, log.rng_state)
        unwrapped = self.env.unwrapped
        observations = [copy.deepcopy(obs)] if self.watch else None
        for action in log.actions:
            result = unwrapped.step(copy.deepcopy(action))
            if observations is not None:
                observations.append(copy.deepcopy(result[0]))
        self.observations = observations
        self.replayed_steps += len(log.actions)
        self.log = copy.deepcopy(log)


def find_recorder(env: gym.Env) -> ReplayRecorder | None:
    for wrapper in wrappers_of(env):
        if isinstance(wrapper, ReplayRecorder):
            return wrapper
    return None
