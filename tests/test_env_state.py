"""Saving and restoring environment state: bit-identical continuation after a restore."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import (
    FrameStackObservation,
    NormalizeObservation,
    NormalizeReward,
    RecordEpisodeStatistics,
    TimeLimit,
    TransformObservation,
)
from stable_baselines3.common.atari_wrappers import EpisodicLifeEnv, MaxAndSkipEnv, NoopResetEnv
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_trpo_plus.env_state import (
    BranchableEnv,
    EnvSnapshot,
    UnbranchableEnvError,
    check_branchable,
    needs_replay,
    register_replay_env,
    register_state_adapter,
    restore,
    snapshot,
)

gym.register_envs(ale_py)

ENV_IDS = [
    "CartPole-v1",
    "Pendulum-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "LunarLander-v3",
    "BipedalWalker-v3",
    "Hopper-v5",
    "HalfCheetah-v5",
    "Ant-v5",  # reads body positions before its step (stale after mj_step): needs more than mjSTATE_INTEGRATION
    "Humanoid-v5",
    "ALE/Pong-v5",  # sticky actions: the emulator's random generator
    "ALE/Breakout-v5",
]
Trace = list[tuple[Any, ...]]


def _make(env_id: str, monitor: bool, **kwargs: Any) -> BranchableEnv:
    env: gym.Env = gym.make(env_id, **kwargs)
    if monitor:
        env = Monitor(env)
    return BranchableEnv(env)


def _chain(env: gym.Env) -> list[gym.Env]:
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def _statistics(env: gym.Env) -> list[Any]:
    """What the wrappers have counted: compared after a reference run and after its replays."""
    stats: list[Any] = []
    for wrapper in _chain(env):
        if isinstance(wrapper, Monitor):
            stats += [wrapper.total_steps, list(wrapper.episode_returns), list(wrapper.episode_lengths), wrapper.rewards]
        if isinstance(wrapper, TimeLimit):
            stats.append(wrapper._elapsed_steps)
        if isinstance(wrapper, RecordEpisodeStatistics):
            stats += [list(wrapper.return_queue), list(wrapper.length_queue), wrapper.episode_count]
        if isinstance(wrapper, NormalizeObservation):
            stats += [wrapper.obs_rms.mean.tolist(), wrapper.obs_rms.var.tolist(), wrapper.obs_rms.count]
    return stats


def _run(env: gym.Env, actions: list[Any]) -> Trace:
    """Step through ``actions``, resetting after an episode ends; record everything observable."""
    trace: Trace = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        trace.append((np.asarray(obs).copy(), np.float64(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            obs, _ = env.reset()
            trace.append((np.asarray(obs).copy(), "reset"))
    trace.append(("statistics", _statistics(env)))
    return trace


def _assert_same(reference: Trace, trace: Trace) -> None:
    assert len(reference) == len(trace)
    for step, (a, b) in enumerate(zip(reference, trace, strict=True)):
        assert np.array_equal(a[0], b[0]), f"observation differs at step {step}"
        assert a[1:] == b[1:], f"reward, termination or statistics differ at step {step}: {a[1:]} != {b[1:]}"


def _check_branching(make: Callable[[], gym.Env], warmup: int = 15, steps: int = 100) -> Trace:
    """Snapshot after ``warmup`` random steps; the next ``steps`` steps replay bit-identically after restores."""
    env = make()
    env.reset(seed=123)
    env.action_space.seed(7)
    _run(env, [env.action_space.sample() for _ in range(warmup)])
    state = env.get_state()  # type: ignore[attr-defined]
    actions = [env.action_space.sample() for _ in range(steps)]
    reference = _run(env, actions)

    env.set_state(state)  # type: ignore[attr-defined]  # the same instance
    _assert_same(reference, _run(env, actions))
    env.set_state(state)  # type: ignore[attr-defined]  # again: restoring leaves the snapshot as it was
    _assert_same(reference, _run(env, actions))

    other = make()  # another instance built the same way, never reset
    other.set_state(pickle.loads(pickle.dumps(state)))  # type: ignore[attr-defined]
    _assert_same(reference, _run(other, actions))

    clone = copy.deepcopy(env)  # how the vine sampler makes branch copies of an in-process trunk
    clone.set_state(state)  # type: ignore[attr-defined]
    _assert_same(reference, _run(clone, actions))
    return reference


@pytest.mark.parametrize("monitor", [False, True])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_restore_replays_bit_identically(env_id: str, monitor: bool) -> None:
    _check_branching(lambda: _make(env_id, monitor))


def test_random_frame_skip_is_restored() -> None:
    """Atari with a random frame skip draws it from the Python np_random."""
    reference = _check_branching(lambda: _make("ALE/Breakout-v5", True, frameskip=(2, 5)), steps=60)
    assert len(reference) > 60  # lives were lost, and episodes may have ended: not a trivial trace


def _atari_with_sb3_wrappers() -> BranchableEnv:
    env: gym.Env = gym.make("ALE/Breakout-v5", frameskip=1, obs_type="grayscale", repeat_action_probability=0.25)
    env = Monitor(env)
    env = NoopResetEnv(env, noop_max=30)
    env = MaxAndSkipEnv(env, skip=4)  # keeps the last two frames
    env = EpisodicLifeEnv(env)  # keeps the lives and whether the game really ended
    env = FrameStackObservation(env, 4)
    return BranchableEnv(env)


def test_stateful_wrappers_are_restored() -> None:
    def make() -> BranchableEnv:
        env: gym.Env = gym.make("CartPole-v1", max_episode_steps=40)
        env = RecordEpisodeStatistics(env)
        env = NormalizeObservation(env)
        env = NormalizeReward(env)
        env = FrameStackObservation(env, 3)
        return BranchableEnv(Monitor(env))

    reference = _check_branching(make, warmup=30, steps=100)
    assert any(item[1] == "reset" for item in reference[:-1])  # episodes ended within the compared steps
    _check_branching(_atari_with_sb3_wrappers, warmup=20, steps=50)


def test_replayed_env_keeps_its_wrappers_untouched() -> None:
    """Replay steps the unwrapped environment only: no statistics counted twice, no early-reset error."""

    def make() -> BranchableEnv:
        env: gym.Env = gym.make("LunarLander-v3")
        env = NormalizeObservation(env)
        return BranchableEnv(Monitor(env, allow_early_resets=False))

    reference = _check_branching(make, warmup=40, steps=100)
    assert reference[-1][1][0] == 140  # Monitor's total steps, the same after every restore


def test_direct_api_without_the_wrapper() -> None:
    for env_id in ("CartPole-v1", "Hopper-v5"):
        env = gym.make(env_id)
        env.reset(seed=0)
        env.action_space.seed(0)
        _run(env, [env.action_space.sample() for _ in range(10)])
        snap = snapshot(env)
        assert isinstance(snap, EnvSnapshot)
        actions = [env.action_space.sample() for _ in range(30)]
        reference = _run(env, actions)
        other = gym.make(env_id)
        restore(other, pickle.loads(pickle.dumps(snap)))
        _assert_same(reference, _run(other, actions))


def test_wrappers_are_matched_by_class() -> None:
    """A branch copy built without the trunk's Monitor takes its snapshots; another env class is refused."""
    trunk = Monitor(gym.make("CartPole-v1"))
    trunk.reset(seed=3)
    for action in (0, 1, 1, 0):
        trunk.step(action)
    snap = snapshot(trunk)
    actions = [0, 1, 0, 0, 1, 1, 0, 1]
    reference = _run(trunk, actions)
    copy_without_monitor = gym.make("CartPole-v1")
    restore(copy_without_monitor, snap)
    _assert_same(reference[:-1], _run(copy_without_monitor, actions)[:-1])  # the same steps; no Monitor statistics
    with pytest.raises(ValueError, match="cannot be restored onto"):
        restore(gym.make("Acrobot-v1"), snap)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "LunarLander-v3"])
def test_time_limit_truncates_at_the_same_step_after_restore(env_id: str) -> None:
    kwargs = {"continuous": True} if env_id == "LunarLander-v3" else {}
    env = BranchableEnv(gym.make(env_id, max_episode_steps=30, **kwargs))
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    env.reset(seed=0)
    for _ in range(20):
        _, _, terminated, truncated, _ = env.step(action)
        assert not (terminated or truncated)
    state = env.get_state()
    for target in (env, BranchableEnv(gym.make(env_id, max_episode_steps=30, **kwargs))):
        target.set_state(state)
        for step in range(10):
            *_, terminated, truncated, _ = target.step(action)
            assert not terminated
            assert truncated == (step == 9)


@pytest.mark.parametrize("env_id", ["LunarLander-v3", "BipedalWalker-v3"])
def test_box2d_replay_after_several_episodes(env_id: str) -> None:
    """A Box2D world's history changes how it steps: each episode starts from a fresh world, so replays match."""
    env, other = _make(env_id, False), _make(env_id, False)
    env.reset(seed=4)
    env.action_space.seed(4)
    for _ in range(8):  # snapshots in 8 successive episodes, each after some random steps
        while True:
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
                break
        for _ in range(5):
            env.step(env.action_space.sample())
        state = env.get_state()
        actions = [env.action_space.sample() for _ in range(40)]
        reference = _run(env, actions)
        other.set_state(state)
        _assert_same(reference, _run(other, actions))


def test_replay_counts_replayed_steps_and_needs_the_wrapper() -> None:
    bare = gym.make("LunarLander-v3")
    assert needs_replay(bare)
    check_branchable(bare)  # branchable, once wrapped
    bare.reset(seed=1)
    with pytest.raises(UnbranchableEnvError, match=r"LunarLander.*replay.*BranchableEnv"):
        snapshot(bare)
    late = BranchableEnv(bare)  # wrapped in the middle of an episode
    with pytest.raises(UnbranchableEnvError, match="next reset"):
        late.get_state()
    late.reset(seed=1)
    late.get_state()

    env = BranchableEnv(gym.make("LunarLander-v3"))
    env.reset(seed=1)
    for _ in range(12):
        env.step(0)
    other = BranchableEnv(gym.make("LunarLander-v3"))
    assert other.replayed_steps == 0
    other.set_state(env.get_state())
    other.set_state(env.get_state())
    assert other.replayed_steps == 24
    assert env.replayed_steps == 0
    assert BranchableEnv(gym.make("CartPole-v1")).replayed_steps == 0


def test_snapshots_skip_functions_and_stay_picklable() -> None:
    def make() -> BranchableEnv:
        return BranchableEnv(TransformObservation(gym.make("Pendulum-v1"), lambda obs: obs * 2.0, None))

    _check_branching(make, steps=30)


def test_subproc_vec_env_branches_through_env_method() -> None:
    vec_env = make_vec_env("LunarLander-v3", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, wrapper_class=BranchableEnv)
    try:
        vec_env.reset()
        rng = np.random.default_rng(0)
        for _ in range(10):
            vec_env.step(rng.integers(4, size=2))
        state = vec_env.env_method("get_state", indices=[0])[0]
        vec_env.env_method("set_state", state, indices=[1])
        for _ in range(60):
            action = rng.integers(4)
            obs, rewards, dones, _ = vec_env.step(np.array([action, action]))
            assert np.array_equal(obs[0], obs[1])
            assert rewards[0] == rewards[1]
            assert dones[0] == dones[1]
        assert vec_env.get_attr("replayed_steps") == [0, 10]
    finally:
        vec_env.close()


class HiddenStateEnv(gym.Env):
    """An environment whose state lives in an object no adapter knows."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.counter = [0]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.counter = [0]
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.counter[0] += int(action) + int(self.np_random.integers(3))
        return np.array([self.counter[0]], dtype=np.float32), 1.0, False, False, {}


class ProtocolEnv(HiddenStateEnv):
    def get_state(self) -> list[int]:
        return self.counter

    def set_state(self, state: list[int]) -> None:
        self.counter = state


def test_unbranchable_env_is_named_with_a_fix() -> None:
    with pytest.raises(
        UnbranchableEnvError, match=r"HiddenStateEnv.*get_state\(\) and set_state\(state\).*register_state_adapter"
    ):
        check_branchable(HiddenStateEnv())
    with pytest.raises(UnbranchableEnvError, match="HiddenStateEnv"):
        BranchableEnv(HiddenStateEnv())
    gym.register("HiddenStateForTest-v0", entry_point=HiddenStateEnv, max_episode_steps=10)
    try:
        with pytest.raises(UnbranchableEnvError, match=r"HiddenStateEnv \(id 'HiddenStateForTest-v0'\)"):
            check_branchable(gym.make("HiddenStateForTest-v0"))
    finally:
        del gym.registry["HiddenStateForTest-v0"]


def test_check_branchable_does_not_disturb_the_env() -> None:
    for env_id in ("CartPole-v1", "LunarLander-v3", "Hopper-v5", "ALE/Pong-v5"):
        env = gym.make(env_id)
        env.reset(seed=0)
        chain = [type(wrapper) for wrapper in _chain(env)]
        rng_state = env.unwrapped.np_random.bit_generator.state
        state = np.array(env.unwrapped.state) if env_id == "CartPole-v1" else None
        check_branchable(env)
        assert [type(wrapper) for wrapper in _chain(env)] == chain
        assert env.unwrapped.np_random.bit_generator.state == rng_state
        if state is not None:
            assert np.array_equal(env.unwrapped.state, state)


def _check_continuation(make: Callable[[], gym.Env]) -> None:
    env = BranchableEnv(make())
    env.reset(seed=5)
    for action in (1, 0, 1):
        env.step(action)
    state = env.get_state()
    reference = _run(env, [1, 0, 0, 1])
    env.set_state(state)
    _assert_same(reference, _run(env, [1, 0, 0, 1]))
    other = BranchableEnv(make())
    other.set_state(pickle.loads(pickle.dumps(state)))
    _assert_same(reference, _run(other, [1, 0, 0, 1]))


def test_get_state_protocol_is_used() -> None:
    check_branchable(ProtocolEnv())
    _check_continuation(ProtocolEnv)


def test_registered_adapter_and_replay() -> None:
    class CounterAdapter:
        def save(self, env: gym.Env) -> Any:
            return list(env.counter)  # type: ignore[attr-defined]

        def restore(self, env: gym.Env, state: Any) -> None:
            env.counter = list(state)  # type: ignore[attr-defined]

    class AdaptedEnv(HiddenStateEnv):
        pass

    class ReplayedEnv(HiddenStateEnv):
        pass

    with pytest.raises(UnbranchableEnvError):
        check_branchable(AdaptedEnv())
    register_state_adapter(AdaptedEnv, CounterAdapter())
    register_replay_env(ReplayedEnv)
    with pytest.raises(TypeError):
        register_state_adapter(AdaptedEnv, object())  # type: ignore[arg-type]
    _check_continuation(AdaptedEnv)
    _check_continuation(ReplayedEnv)


class PatchedTimeLimitForTest(gym.wrappers.TimeLimit):
    """Like rl_zoo3's PatchedTimeLimit, which gym.make builds once rl_zoo3 is imported."""


def test_wrappers_match_their_subclasses() -> None:
    # a trunk built with TimeLimit (say, in a subprocess), a branch copy built with a subclass of it
    trunk = BranchableEnv(gym.wrappers.TimeLimit(gym.make("CartPole-v1").unwrapped, max_episode_steps=40))
    trunk.reset(seed=0)
    for _ in range(7):
        trunk.step(0 if _ % 2 else 1)
    branch = BranchableEnv(PatchedTimeLimitForTest(gym.make("CartPole-v1").unwrapped, max_episode_steps=40))
    branch.set_state(trunk.get_state())
    assert branch.env._elapsed_steps == 7  # type: ignore[attr-defined]
    # and the other way round
    trunk.set_state(branch.get_state())
    assert trunk.env._elapsed_steps == 7  # type: ignore[attr-defined]
    # and between two different subclasses of TimeLimit (rl_zoo3's, once imported, and another)
    from rl_zoo3.gym_patches import PatchedTimeLimit

    zoo = BranchableEnv(PatchedTimeLimit(gym.make("CartPole-v1").unwrapped, max_episode_steps=40))
    zoo.set_state(branch.get_state())
    assert zoo.env._elapsed_steps == 7  # type: ignore[attr-defined]
