"""
The fast paths (NumPy actor for rollouts, fused critic fit) compute exactly what the generic torch
paths compute, or are not used (issue 8): every option of Adam is replicated or sends the critic
fit to torch; hooks, instance patches and weights edited by a callback during a rollout are
honoured as torch's forward honours them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import flat
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback, ProgressBarCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv
from torch.optim import optimizer as optimizer_globals

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.critic import ValueTargets, fit_critic, fit_critic_torch
from sb3_trpo_plus.distributions import TorchNoise, _sample_categoricals, log_softmax, multinomial_one
from sb3_trpo_plus.fast import FusedMlpCritic, NumpyActor
from sb3_trpo_plus.fast import critic as fused_critic
from sb3_trpo_plus.sampling import has_callbacks

SMALL = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 2}

# ----------------------------------------------------------------------------- fused critic and Adam's options


def _trained(optimizer_class: Any = th.optim.Adam, **optimizer_kwargs: Any) -> TRPOPlus:
    learning_rate = optimizer_kwargs.pop("lr", 1e-3)  # SB3 passes the learning rate itself
    if optimizer_class is th.optim.AdamW:
        optimizer_kwargs.pop("decoupled_weight_decay", None)  # AdamW's decay is always decoupled
    policy_kwargs = {"optimizer_class": optimizer_class, "optimizer_kwargs": optimizer_kwargs, "net_arch": [16, 16]}
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = TRPOPlus("MlpPolicy", env, seed=0, learning_rate=learning_rate, policy_kwargs=policy_kwargs, **SMALL)
    model.learn(2 * 2 * SMALL["n_steps"])  # two iterations: the optimizer has state
    return model


def _fit_both(model: TRPOPlus, fused: FusedMlpCritic) -> tuple[th.Tensor, th.Tensor, dict, dict]:
    twin = copy.deepcopy(model.policy)
    actor_ids = {id(p) for p in model._actor_params}
    pairs = zip(twin.parameters(), model.policy.parameters(), strict=True)
    twin_actor = [p for p, q in pairs if id(q) in actor_ids]
    targets = ValueTargets.from_buffer(model.rollout_buffer)
    np.random.seed(5)
    fused.fit(targets.observations, targets.returns, 3, 32)
    policy = model.policy
    model.policy = twin
    np.random.seed(5)
    fit_critic_torch(twin, targets, 3, 32, twin_actor)
    model.policy = policy
    return flat(policy.parameters()), flat(twin.parameters()), policy.optimizer.state_dict(), twin.optimizer.state_dict()


ADAM_OPTIONS = {
    "default": {},
    "lr_betas_eps": {"lr": 3e-3, "betas": (0.5, 0.9), "eps": 1e-3},
    "l2": {"weight_decay": 0.1},
    "decoupled": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "amsgrad": {"amsgrad": True},
    "amsgrad_decoupled": {"amsgrad": True, "weight_decay": 0.05, "decoupled_weight_decay": True},
    "maximize": {"maximize": True, "weight_decay": 0.1},
    "foreach_false": {"foreach": False},
}


@pytest.mark.parametrize("update", ["torch_kernel", "numpy"])
@pytest.mark.parametrize("options", ADAM_OPTIONS.values(), ids=ADAM_OPTIONS.keys())
@pytest.mark.parametrize("optimizer_class", [th.optim.Adam, th.optim.AdamW])
def test_fused_critic_replicates_every_adam_option(
    optimizer_class: Any, options: dict[str, Any], update: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both Adam updates of the fused fit: torch's fused CPU kernel, and the NumPy one used where torch has none."""
    if update == "numpy":
        monkeypatch.setattr(fused_critic, "fused_adam_kernel", lambda decoupled: None)
    else:
        assert fused_critic.fused_adam_kernel(decoupled=False) is not None
        assert fused_critic.fused_adam_kernel(decoupled=True) is not None
    model = _trained(optimizer_class, **dict(options))
    fused = FusedMlpCritic.from_policy(model.policy)
    assert fused is not None, "an option the fused fit replicates should not send it to torch"
    ours, torch_params, ours_state, torch_state = _fit_both(model, fused)
    assert th.allclose(ours, torch_params, atol=2e-6, rtol=0), float((ours - torch_params).abs().max())
    for key, state in torch_state["state"].items():
        for name, value in state.items():
            assert th.allclose(ours_state["state"][key][name], value, atol=1e-6, rtol=1e-4), (key, name)


@contextmanager
def _global_optimizer_hook() -> Iterator[None]:
    handle = optimizer_globals.register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: None)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _global_module_hook() -> Iterator[None]:
    handle = th.nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        yield
    finally:
        handle.remove()


FALLBACKS: dict[str, tuple[Any, dict[str, Any], Callable[[Any], Any] | None]] = {
    # (optimizer class, its options, a change made to the built policy)
    "fused_kernel": (th.optim.Adam, {"fused": True}, None),
    "capturable": (th.optim.Adam, {"capturable": True}, None),
    "differentiable": (th.optim.Adam, {"differentiable": True}, None),
    "tensor_betas": (th.optim.Adam, {}, lambda p: p.optimizer.param_groups[0].__setitem__("betas", (th.tensor(0.9), 0.999))),
    "rmsprop": (th.optim.RMSprop, {}, None),
    "sgd": (th.optim.SGD, {}, None),
    "adamax": (th.optim.Adamax, {}, None),
    "unknown_group_key": (th.optim.Adam, {}, lambda p: p.optimizer.param_groups[0].__setitem__("new_option", 1)),
    "step_pre_hook": (th.optim.Adam, {}, lambda p: p.optimizer.register_step_pre_hook(lambda *a: None)),
    "step_post_hook": (th.optim.Adam, {}, lambda p: p.optimizer.register_step_post_hook(lambda *a: None)),
    "patched_step": (th.optim.Adam, {}, lambda p: setattr(p.optimizer, "step", p.optimizer.step)),
    "value_forward_hook": (th.optim.Adam, {}, lambda p: p.value_net.register_forward_hook(lambda m, i, o: o * 2)),
    "value_pre_hook": (th.optim.Adam, {}, lambda p: p.mlp_extractor.value_net.register_forward_pre_hook(lambda m, i: i)),
    "backward_hook": (th.optim.Adam, {}, lambda p: p.value_net.register_full_backward_hook(lambda m, gi, go: None)),
    "param_grad_hook": (th.optim.Adam, {}, lambda p: p.value_net.weight.register_hook(lambda g: g * 2)),
    "patched_predict_values": (th.optim.Adam, {}, lambda p: setattr(p, "predict_values", p.predict_values)),
    "patched_value_net": (th.optim.Adam, {}, lambda p: setattr(p.value_net, "forward", p.value_net.forward)),
}
# options torch itself refuses on a CPU policy during training: only the decision is checked
NOT_TRAINABLE_ON_CPU = {"capturable", "differentiable"}


@pytest.mark.parametrize("name", FALLBACKS)
def test_anything_the_fused_critic_does_not_replicate_goes_to_torch(name: str) -> None:
    optimizer_class, options, modify = FALLBACKS[name]
    policy_kwargs = {"optimizer_class": optimizer_class, "optimizer_kwargs": options, "net_arch": [16, 16]}
    model = TRPOPlus("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=policy_kwargs, **SMALL)
    if modify is not None:
        assert FusedMlpCritic.from_policy(model.policy) is not None
        modify(model.policy)
    assert FusedMlpCritic.from_policy(model.policy) is None
    if name not in NOT_TRAINABLE_ON_CPU:
        model.learn(SMALL["n_steps"])  # and training goes through torch's optimizer


@pytest.mark.parametrize("hook", [_global_optimizer_hook, _global_module_hook], ids=["optimizer", "module"])
def test_global_hooks_send_the_critic_fit_to_torch(hook: Callable[[], Any]) -> None:
    model = TRPOPlus("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    assert FusedMlpCritic.from_policy(model.policy) is not None
    with hook():
        assert FusedMlpCritic.from_policy(model.policy) is None
    assert FusedMlpCritic.from_policy(model.policy) is not None


def test_fused_critic_with_decoupled_weight_decay_trains_as_torch() -> None:
    # the whole algorithm: one iteration with the fast paths equals one with the generic torch paths
    def run(fast_paths: bool) -> th.Tensor:
        policy_kwargs = {"optimizer_kwargs": {"weight_decay": 0.5, "decoupled_weight_decay": True}, "net_arch": [16]}
        model = TRPOPlus("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=policy_kwargs, fast_paths=fast_paths, **SMALL)
        model.learn(2 * SMALL["n_steps"])
        return flat(model.policy.parameters())

    fused = run(True)
    generic = run(False)
    assert th.allclose(fused, generic, atol=1e-5, rtol=0), float((fused - generic).abs().max())


# ----------------------------------------------------------------------------- NumPy actor: hooks, patches, edits


class EditAt(BaseCallback):
    """Runs ``edit(policy)`` once, after the ``at``-th step of the first rollout."""

    def __init__(self, edit: Callable[[Any], Any], at: int = 10) -> None:
        super().__init__()
        self.edit, self.at, self.calls = edit, at, 0

    def _on_step(self) -> bool:
        self.calls += 1
        if self.calls == self.at:
            self.edit(self.model.policy)
        return True


def _rollout(
    env_id: str, setup: Callable[[Any], Any] | None, edit: Callable[[Any], Any] | None, fast_paths: bool = True
) -> dict[str, np.ndarray]:
    model = TRPOPlus("MlpPolicy", env_id, seed=0, policy_kwargs={"net_arch": [16]}, fast_paths=fast_paths, **SMALL)
    if setup is not None:
        setup(model.policy)
    callback = EditAt(edit) if edit is not None else None
    model.learn(SMALL["n_steps"], callback=callback)
    buffer = model.rollout_buffer
    return {"actions": buffer.actions, "log_probs": buffer.log_probs, "values": buffer.values, "rewards": buffer.rewards}


def _same_rollout(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.allclose(a[key], b[key], atol=1e-5, rtol=1e-5) for key in a)


def _action_hook(policy: Any) -> Any:
    # a shift that changes every distribution (a constant one would leave a softmax unchanged)
    return policy.action_net.register_forward_hook(lambda module, inputs, output: output + th.arange(output.shape[-1]) + 1.0)


def _patch_forward(policy: Any) -> None:
    original = policy.forward
    policy.forward = lambda obs, deterministic=False: original(obs, deterministic=True)


def _patch_actor_latent(policy: Any) -> None:
    original = policy.mlp_extractor.forward_actor
    policy.mlp_extractor.forward_actor = lambda features: 0.5 * original(features)


def _patch_distribution(policy: Any) -> None:
    original = policy.action_dist.proba_distribution
    policy.action_dist.proba_distribution = lambda mean, log_std: original(mean, log_std + 1.0)


def _global_action_hook(policy: Any) -> Any:
    return th.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: output + th.arange(output.shape[-1]) + 1.0 if module is policy.action_net else None
    )


SETUPS: dict[str, Callable[[Any], Any]] = {
    "forward_hook": _action_hook,
    "forward_pre_hook": lambda p: p.mlp_extractor.policy_net.register_forward_pre_hook(lambda m, i: (2.0 * i[0],)),
    "value_hook": lambda p: p.value_net.register_forward_hook(lambda m, i, o: o - 3.0),
    "global_forward_hook": _global_action_hook,
    "patched_policy_forward": _patch_forward,
    "patched_mlp_extractor": _patch_actor_latent,
    "patched_distribution": _patch_distribution,
}


@pytest.mark.parametrize("name", SETUPS)
def test_hooks_and_instance_patches_send_the_rollout_to_torch(name: str) -> None:
    handles: list[Any] = []

    def setup(policy: Any) -> None:
        handle = SETUPS[name](policy)
        if handle is not None:
            handles.append(handle)

    try:
        plain = _rollout("Pendulum-v1", None, None)
        fast = _rollout("Pendulum-v1", setup, None)
        for handle in handles:
            handle.remove()
        generic = _rollout("Pendulum-v1", setup, None, fast_paths=False)
    finally:
        for handle in handles:
            handle.remove()
    assert not _same_rollout(plain, generic), "the change should change the rollout"
    assert _same_rollout(fast, generic)


def _mul(name: str, factor: float) -> Callable[[Any], None]:
    def edit(policy: Any) -> None:
        with th.no_grad():
            policy.get_parameter(name).mul_(factor)

    return edit


def _shift(name: str, shift: float) -> Callable[[Any], None]:
    def edit(policy: Any) -> None:
        with th.no_grad():
            policy.get_parameter(name).add_(shift)

    return edit


def _add_data(name: str, shift: float) -> Callable[[Any], None]:
    def edit(policy: Any) -> None:
        policy.get_parameter(name).data[0].add_(shift)  # no version bump: seen through the NumPy views

    return edit


def _replace_data(name: str, shift: float) -> Callable[[Any], None]:
    def edit(policy: Any) -> None:
        param = policy.get_parameter(name)
        param.data = param.data + shift * (th.arange(len(param.data)) == 0)  # new storage

    return edit


def _load_state_dict(policy: Any) -> None:
    policy.load_state_dict({key: 1.5 * value for key, value in policy.state_dict().items()})


def _hook_mid_rollout(policy: Any) -> None:
    _action_hook(policy)


EDITS: dict[str, Callable[[Any], Any]] = {
    "no_grad_inplace_head": _mul("action_net.weight", 3.0),
    "data_inplace_head": _add_data("action_net.weight", 0.5),
    "data_inplace_first_layer": _add_data("mlp_extractor.policy_net.0.weight", 0.5),
    "data_inplace_first_critic_layer": _add_data("mlp_extractor.value_net.0.bias", 0.5),
    "data_inplace_log_std": _add_data("log_std", 1.0),
    "no_grad_inplace_log_std": _shift("log_std", 1.0),
    "replaced_data": _replace_data("action_net.bias", 0.5),
    "load_state_dict": _load_state_dict,
    "hook_added": _hook_mid_rollout,
    "patch_added": _patch_forward,
}


# log_std exists only on the Gaussian policy (Pendulum)
_EDIT_CASES = [(name, env_id) for name in EDITS for env_id in ("Pendulum-v1", "CartPole-v1")
               if "log_std" not in name or env_id == "Pendulum-v1"]  # fmt: skip


@pytest.mark.parametrize(("name", "env_id"), _EDIT_CASES)
def test_a_policy_edited_by_a_callback_during_a_rollout_is_followed(name: str, env_id: str) -> None:
    plain = _rollout(env_id, None, None)
    fast = _rollout(env_id, None, EDITS[name])
    generic = _rollout(env_id, None, EDITS[name], fast_paths=False)
    assert not _same_rollout(plain, generic), "the edit should change the rollout"
    assert _same_rollout(fast, generic)


# ----------------------------------------------------------------------------- the switch


def _learned(fast_paths: bool = True, **kwargs: Any) -> TRPOPlus:
    model = TRPOPlus("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs={"net_arch": [16]}, fast_paths=fast_paths, **SMALL)
    model.learn(2 * SMALL["n_steps"], **kwargs)
    return model


def _refuse(cls: Any, policy: Any) -> None:
    raise AssertionError("a fast path was consulted with fast_paths=False")


def test_fast_paths_false_runs_the_generic_paths_only(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _learned()
    assert NumpyActor.from_policy(fast.policy) is not None and FusedMlpCritic.from_policy(fast.policy) is not None
    with monkeypatch.context() as patch:  # the switch never even asks the fast paths
        patch.setattr(NumpyActor, "from_policy", classmethod(_refuse))
        patch.setattr(FusedMlpCritic, "from_policy", classmethod(_refuse))
        generic = _learned(fast_paths=False)
    with monkeypatch.context() as patch:  # what the benchmarks and tests patched before the switch existed
        patch.setattr(NumpyActor, "from_policy", classmethod(lambda cls, policy: None))
        patch.setattr(FusedMlpCritic, "from_policy", classmethod(lambda cls, policy: None))
        patched = _learned()
    assert th.equal(flat(generic.policy.parameters()), flat(patched.policy.parameters()))
    assert np.array_equal(generic.rollout_buffer.actions, patched.rollout_buffer.actions)
    assert th.allclose(flat(fast.policy.parameters()), flat(generic.policy.parameters()), atol=1e-4)


def test_fast_paths_is_saved_and_loaded(tmp_path: Any) -> None:
    model = _learned(fast_paths=False)
    model.save(tmp_path / "model.zip")
    assert TRPOPlus.load(tmp_path / "model.zip").fast_paths is False
    assert TRPOPlus("MlpPolicy", "Pendulum-v1").fast_paths is True
    with pytest.raises(ValueError, match="fast_paths"):
        TRPOPlus("MlpPolicy", "Pendulum-v1", fast_paths="no")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- no hidden order in the critic fit


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "dict"])
def test_the_critic_fit_needs_no_prior_flattening_of_the_buffer(env_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the critic fit receives its data explicitly: on a freshly collected buffer (no _policy_batch()
    # has flattened it) it runs the same path and computes the same fit as on the flattened buffer
    if env_id == "dict":
        model = TRPOPlus("MultiInputPolicy", SimpleMultiObsEnv(), seed=0, **SMALL)
    else:
        model = TRPOPlus("MlpPolicy", make_vec_env(env_id, n_envs=2, seed=0), seed=0, **SMALL)
    model.learn(model.n_steps * model.n_envs)  # the optimizer has state
    callback = CallbackList([])
    callback.init_callback(model)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]
    buffer = model.rollout_buffer
    assert not buffer.generator_ready
    fresh = ValueTargets.from_buffer(buffer)
    assert not buffer.generator_ready, "building the targets leaves the buffer as it is"
    next(buffer.get(None))
    flattened = ValueTargets.from_buffer(buffer)
    if isinstance(fresh.observations, dict):
        assert all(np.array_equal(fresh.observations[k], flattened.observations[k]) for k in fresh.observations)  # type: ignore[index]
    else:
        assert np.array_equal(fresh.observations, flattened.observations)  # type: ignore[arg-type]
    assert np.array_equal(fresh.returns, flattened.returns)

    fused_fits: list[int] = []
    original_fit = FusedMlpCritic.fit
    monkeypatch.setattr(FusedMlpCritic, "fit", lambda self, *a: fused_fits.append(1) or original_fit(self, *a))
    twin = copy.deepcopy(model.policy)
    pairs = list(zip(twin.parameters(), model.policy.parameters(), strict=True))
    actor_ids = {id(p) for p in model._actor_params}
    twin_actor = [p for p, q in pairs if id(q) in actor_ids]
    np.random.seed(5)
    fresh_losses = fit_critic(model.policy, fresh, 2, 32, model._actor_params)
    np.random.seed(5)
    flattened_losses = fit_critic(twin, flattened, 2, 32, twin_actor)
    assert fresh_losses == flattened_losses
    assert th.equal(flat(model.policy.parameters()), flat(twin.parameters()))
    assert len(fused_fits) == (0 if env_id == "dict" else 2), "the fused fit serves both, or neither"


# ----------------------------------------------------------------------------- categorical draws, locals


@pytest.mark.parametrize("scale", [0.01, 1.0, 8.0, 60.0])
@pytest.mark.parametrize(("rows", "n_actions"), [(1, 2), (2, 4), (8, 6), (5, 18), (33, 3)])
def test_multinomial_one_draws_what_torch_multinomial_draws(rows: int, n_actions: int, scale: float) -> None:
    """The NumPy actor's categorical draw is SB3's: same choices, same generator state afterwards."""
    generator = np.random.default_rng(rows * 100 + n_actions)
    for seed in range(200):
        logits = (scale * generator.standard_normal((rows, n_actions))).astype(np.float32)
        probs = np.exp(log_softmax(logits))
        th.manual_seed(seed)
        expected = th.multinomial(th.from_numpy(probs), 1, True).numpy()[:, 0]
        state_after_torch = th.get_rng_state()
        th.manual_seed(seed)
        drawn = multinomial_one(probs)
        assert np.array_equal(drawn, expected), (seed, probs)
        assert th.equal(th.get_rng_state(), state_after_torch)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5])
def test_multinomial_one_rejects_what_torch_rejects(bad: float) -> None:
    probs = np.full((2, 3), 1.0 / 3.0, dtype=np.float32)
    probs[1, 2] = bad
    with pytest.raises(RuntimeError) as from_torch:
        th.multinomial(th.from_numpy(probs), 1, True)
    with pytest.raises(RuntimeError) as ours:
        multinomial_one(probs)
    assert str(ours.value) == str(from_torch.value)


class _ObsTensorCheck(BaseCallback):
    """Asserts at every step that the ``obs_tensor`` local is the step's observations, on the policy's device."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0

    def _on_step(self) -> bool:
        obs_tensor = self.locals["obs_tensor"]
        assert obs_tensor.device == self.model.policy.device
        assert th.equal(obs_tensor.cpu(), th.as_tensor(self.model._last_obs))  # the trunk moves on after the callbacks
        self.checked += 1
        return True


@pytest.mark.parametrize("fast_paths", [True, False])
def test_the_obs_tensor_local_is_the_steps_observations_on_the_policys_device(fast_paths: bool) -> None:
    check = _ObsTensorCheck()
    model = TRPOPlus("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), seed=0, fast_paths=fast_paths, **SMALL)
    model.learn(2 * 2 * SMALL["n_steps"], callback=check)
    assert check.checked == 2 * SMALL["n_steps"]


# ----------------------------------------------------------------------------- kept noise tensors, lean rollouts


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (8, 17), (4, 64)])
def test_torch_noise_draws_what_fresh_tensors_draw(shape: tuple[int, int]) -> None:
    """Drawing into kept tensors gives th.randn's and exponential_'s values and generator state, call after call."""
    noise = TorchNoise()
    th.manual_seed(3)
    expected = [(th.randn(shape).numpy(), th.empty(shape, dtype=th.float32).exponential_(1.0).numpy()) for _ in range(5)]
    state_after_torch = th.get_rng_state()
    th.manual_seed(3)
    for normal, exponential in expected:
        assert np.array_equal(noise.normal(shape), normal)
        assert np.array_equal(noise.exponential(shape), exponential)
    assert th.equal(th.get_rng_state(), state_after_torch)


@pytest.mark.parametrize("dims", [[3], [2, 4]])
def test_categorical_draws_with_kept_noise_are_the_fresh_draws(dims: list[int]) -> None:
    generator = np.random.default_rng(0)
    noise = TorchNoise()
    for seed in range(50):
        head = (3.0 * generator.standard_normal((5, sum(dims)))).astype(np.float32)
        th.manual_seed(seed)
        expected_columns, expected_log_prob = _sample_categoricals(head, dims)
        th.manual_seed(seed)
        columns, log_prob = _sample_categoricals(head, dims, noise)
        assert all(np.array_equal(a, b) for a, b in zip(columns, expected_columns, strict=True))
        assert np.array_equal(log_prob, expected_log_prob)


@pytest.mark.parametrize(("bad", "where"), [(np.nan, 2), (np.inf, 2), (-np.inf, slice(None))])
def test_categorical_draws_with_kept_noise_reject_what_torch_rejects(bad: float, where: Any) -> None:
    """Invalid logits (a NaN, an infinity, no finite logit in a row) raise torch's error, noticed after the draw."""
    head = np.zeros((3, 5), dtype=np.float32)
    head[1, where] = bad
    with np.errstate(invalid="ignore"), pytest.raises(RuntimeError) as fresh:
        _sample_categoricals(head, [5])
    with np.errstate(invalid="ignore"), pytest.raises(RuntimeError) as kept:
        _sample_categoricals(head, [5], TorchNoise())
    assert str(kept.value) == str(fresh.value)


def test_has_callbacks() -> None:
    """Only SB3's stand-ins for "no callback" count as none: ConvertCallback(None), (nested) empty callback lists."""
    assert not has_callbacks(ConvertCallback(None))
    assert not has_callbacks(CallbackList([ConvertCallback(None), CallbackList([])]))
    assert has_callbacks(ConvertCallback(lambda _locals, _globals: True))
    assert not has_callbacks(CallbackList([]))
    assert not has_callbacks(CallbackList([CallbackList([]), CallbackList([CallbackList([])])]))
    assert has_callbacks(CallbackList([CallbackList([_ObsTensorCheck()])]))
    assert has_callbacks(CallbackList([ProgressBarCallback()]))
    assert has_callbacks(_ObsTensorCheck())


class _Passive(BaseCallback):
    """A callback that does nothing: its presence sends the rollout through the full per-step path."""

    def _on_step(self) -> bool:
        return True


LEAN_CASES = {
    "cartpole": ("CartPole-v1", {}),
    "pendulum": ("Pendulum-v1", {}),
    "pendulum_gsde": ("Pendulum-v1", {"use_sde": True, "sde_sample_freq": 8}),
    "multidiscrete": ("multidiscrete", {}),
    "multibinary": ("multibinary", {}),
}


@pytest.mark.parametrize("case", LEAN_CASES.values(), ids=LEAN_CASES.keys())
def test_a_rollout_without_callbacks_is_the_rollout_with_one(
    case: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Without callbacks the collector skips the locals, the tensors and the per-step staleness
    check: the parameters, the buffer and torch's generator end exactly where they do when a
    callback that does nothing forces the full per-step path.
    """
    from stable_baselines3.common.envs import IdentityEnvMultiBinary, IdentityEnvMultiDiscrete

    env_id, kwargs = case
    factories: dict[str, Any] = {
        "multidiscrete": lambda: IdentityEnvMultiDiscrete(dim=3),
        "multibinary": lambda: IdentityEnvMultiBinary(dim=4),
    }
    results = []
    full_path_steps = []
    original_act = NumpyActor.act

    def counting_act(self: NumpyActor, *args: Any) -> Any:
        full_path_steps[-1] += 1
        return original_act(self, *args)

    monkeypatch.setattr(NumpyActor, "act", counting_act)
    for callback in (None, _Passive()):
        full_path_steps.append(0)
        env = make_vec_env(factories.get(env_id, env_id), n_envs=2, seed=0)
        model = TRPOPlus("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [16, 16]}, **SMALL, **kwargs)
        model.learn(2 * 2 * SMALL["n_steps"], callback=callback)
        results.append((flat(model.policy.parameters()), model.rollout_buffer.log_probs.copy(), th.get_rng_state()))
    numpy_actor = NumpyActor.from_policy(model.policy) is not None  # not for MultiDiscrete or MultiBinary observations
    expected = [0, 2 * SMALL["n_steps"]] if numpy_actor else [0, 0]
    assert full_path_steps == expected, "no callback: the lean path; a callback: the full one"
    assert numpy_actor == (env_id in ("CartPole-v1", "Pendulum-v1"))
    (params, log_probs, rng), (params_cb, log_probs_cb, rng_cb) = results
    assert th.equal(params, params_cb)
    assert np.array_equal(log_probs, log_probs_cb)
    assert th.equal(rng, rng_cb)


@pytest.mark.parametrize(("rows", "columns"), [(1, 1), (7, 3), (128, 64), (512, 256)])
def test_the_critics_outer_product_is_the_blas_product(rows: int, columns: int) -> None:
    """Back through the value head, broadcasting gives delta @ weight to the bit, signs of zeros included."""
    generator = np.random.default_rng(rows + columns)
    delta = generator.standard_normal((rows, 1)).astype(np.float32)
    delta[::3] = 0.0
    delta[1::5] = -0.0
    weight = generator.standard_normal((1, columns)).astype(np.float32)
    weight[0, ::4] = -0.0
    expected = delta @ weight
    got = fused_critic._times(delta, weight)
    assert got.dtype == expected.dtype and np.array_equal(got.view(np.int32), expected.view(np.int32))
    wide, hidden = (
        generator.standard_normal((rows, 5)).astype(np.float32),
        generator.standard_normal((5, columns)).astype(np.float32),
    )
    assert np.array_equal(fused_critic._times(wide, hidden), wide @ hidden)  # any other layer: the matmul itself


@pytest.mark.parametrize(("gamma", "gae_lambda"), [(0.99, 0.95), (0.9, 1.0), (1.0, 0.0), (0.999, 0.8)])
@pytest.mark.parametrize(("n_steps", "n_envs"), [(1, 1), (7, 3), (512, 2), (64, 8)])
def test_returns_and_advantage_are_sb3s(gamma: float, gae_lambda: float, n_steps: int, n_envs: int) -> None:
    """The vectorised GAE gives RolloutBuffer.compute_returns_and_advantage's arrays bit for bit."""
    from gymnasium import spaces
    from stable_baselines3.common.buffers import RolloutBuffer

    from sb3_trpo_plus.sampling import returns_and_advantage

    generator = np.random.default_rng(n_steps * 10 + n_envs)
    buffers = []
    for _ in range(2):
        buffer = RolloutBuffer(n_steps, spaces.Box(-1, 1, (2,)), spaces.Discrete(2), "cpu", gae_lambda, gamma, n_envs)
        buffers.append(buffer)
    for name in ("rewards", "values"):
        data = (generator.standard_normal((n_steps, n_envs)) * 10.0 ** generator.integers(-3, 3)).astype(np.float32)
        for buffer in buffers:
            getattr(buffer, name)[...] = data
    starts = (generator.random((n_steps, n_envs)) < 0.2).astype(np.float32)
    dones = generator.random(n_envs) < 0.3
    last_values = th.from_numpy(generator.standard_normal(n_envs).astype(np.float32))
    for buffer in buffers:
        buffer.episode_starts[...] = starts
        buffer.full = True
    buffers[0].compute_returns_and_advantage(last_values=last_values, dones=dones)
    returns_and_advantage(buffers[1], last_values=last_values, dones=dones)
    for name in ("advantages", "returns"):
        expected, got = getattr(buffers[0], name), getattr(buffers[1], name)
        assert got.dtype == expected.dtype and np.array_equal(got.view(np.int32), expected.view(np.int32)), name


def _allocating_gradient(fused: FusedMlpCritic, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The minibatch gradient and errors as plain expressions, each allocating its result."""
    weights = [p.detach().numpy() for p in fused.params]
    activations = {th.nn.Tanh: np.tanh, th.nn.ReLU: lambda h: np.maximum(h, 0.0)}
    slopes = {th.nn.Tanh: lambda out: 1.0 - out * out, th.nn.ReLU: lambda out: (out > 0).astype(np.float32)}
    outputs = [x]
    for index, name in enumerate(fused.activations):
        outputs.append(activations[name](outputs[-1] @ weights[2 * index].T + weights[2 * index + 1]))
    error = (outputs[-1] @ weights[-2].T + weights[-1])[:, 0] - y
    delta = (2.0 / len(y)) * error[:, None]
    grads: list[np.ndarray] = [np.empty(0)] * len(weights)
    for index in range(len(fused.linears) - 1, -1, -1):
        grads[2 * index], grads[2 * index + 1] = delta.T @ outputs[index], delta.sum(axis=0)
        if index > 0:
            delta = (delta @ weights[2 * index]) * slopes[fused.activations[index - 1]](outputs[index])
    return grads, error


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.int32), b.view(np.int32))


@pytest.mark.parametrize(("widths", "activation"), [([64, 64], th.nn.Tanh), ([5], th.nn.ReLU), ([32, 7, 16], th.nn.Tanh)])
def test_the_critics_workspace_gives_the_allocating_expressions_bits(widths: list[int], activation: Any) -> None:
    """
    The fused fit writes every minibatch's activations, errors and gradient into arrays allocated
    once per fit (a shorter last minibatch in their leading rows): the same bits as the
    expressions that allocate each result, minibatch after minibatch, and the same losses.
    """
    policy_kwargs = {"net_arch": {"pi": [8], "vf": widths}, "activation_fn": activation}
    model = TRPOPlus("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=policy_kwargs, **SMALL)
    fused = FusedMlpCritic.from_policy(model.policy)
    assert fused is not None
    generator = np.random.default_rng(len(widths))
    n_samples, batch_size = 100, 48  # minibatches of 48, 48 and 4 rows
    x_all = generator.standard_normal((n_samples, 3)).astype(np.float32)
    y_all = (5.0 * generator.standard_normal(n_samples)).astype(np.float32)
    work = fused_critic._Workspace(widths, 3, batch_size, n_samples)
    weights = [p.detach().numpy() for p in fused.params]
    grads = [np.full(w.shape, np.nan, dtype=np.float32) for w in weights]
    for start in (0, 48, 96, 0):  # the short one, then a full one over the rows it left
        x, y = x_all[start : start + batch_size], y_all[start : start + batch_size]
        fused._gradient(weights, grads, x, y, work, work.errors[start : start + batch_size])
        expected_grads, expected_error = _allocating_gradient(fused, x, y)
        assert _same_bits(work.errors[start : start + len(y)], expected_error)
        for got, expected in zip(grads, expected_grads, strict=True):
            assert _same_bits(got, expected)
    squares = work.errors * work.errors
    expected_losses = [float(np.mean(squares[start : start + batch_size])) for start in (0, 48, 96)]
    assert fused_critic._minibatch_losses(work.errors, batch_size) == expected_losses
    assert fused_critic._minibatch_losses(work.errors, 100) == [float(np.mean(squares))]
    assert fused_critic._minibatch_losses(work.errors, 25) == [float(np.mean(squares[i : i + 25])) for i in range(0, 100, 25)]


def test_a_fit_with_a_short_last_minibatch_trains_as_torch() -> None:
    """A batch size that does not divide the samples (and one above their number): the fused fit is torch's."""
    model = _trained()
    fused = FusedMlpCritic.from_policy(model.policy)
    assert fused is not None
    for batch_size in (50, 1000):
        twin = copy.deepcopy(model.policy)
        targets = ValueTargets.from_buffer(model.rollout_buffer)
        np.random.seed(3)
        losses = fused.fit(targets.observations, targets.returns, 2, batch_size)
        np.random.seed(3)
        twin_losses = fit_critic_torch(twin, targets, 2, batch_size, [])
        assert len(losses) == len(twin_losses) == 2 * -(-len(targets.returns) // batch_size)
        assert np.allclose(losses, twin_losses, rtol=1e-4, atol=1e-6)
        assert th.allclose(flat(model.policy.parameters()), flat(twin.parameters()), atol=2e-6, rtol=0)


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize(
    "sde_kwargs", [{}, {"full_std": False}, {"use_expln": True}], ids=["default", "not_full_std", "expln"]
)
def test_gsde_redraw_draws_what_reset_noise_draws(n_envs: int, sde_kwargs: dict[str, Any]) -> None:
    """Matrices, their shapes and torch's generator state after each redraw: those of SB3's reset_noise."""
    from sb3_trpo_plus.distributions import ExplorationRedraw
    from sb3_trpo_plus.sampling import reset_noise

    policy_kwargs = {"net_arch": [8], "log_std_init": -0.5, **sde_kwargs}
    model = TRPOPlus("MlpPolicy", "Pendulum-v1", seed=0, use_sde=True, policy_kwargs=policy_kwargs, **SMALL)
    twin = copy.deepcopy(model.policy)
    th.manual_seed(11)
    reset_noise(model.policy, n_envs)
    redraw = ExplorationRedraw.for_policy(model.policy)
    assert redraw is not None
    th.manual_seed(11)
    reset_noise(twin, n_envs)
    kept = []
    for _ in range(3):  # both from one generator state, one after the other
        start = th.get_rng_state()
        redraw(n_envs)
        after = th.get_rng_state()
        th.set_rng_state(start)
        reset_noise(twin, n_envs)
        assert th.equal(after, th.get_rng_state())
        ours, sb3 = model.policy.action_dist, twin.action_dist
        for name in ("exploration_mat", "exploration_matrices"):
            got, expected = getattr(ours, name), getattr(sb3, name)
            assert got.shape == expected.shape and got.dtype == expected.dtype and th.equal(got, expected), name
            assert not got.requires_grad and all(got is not earlier for earlier in kept)  # a new tensor at each draw
            kept.append(got)


def test_gsde_redraw_is_only_for_sb3s_own_draw() -> None:
    from sb3_trpo_plus.distributions import ExplorationRedraw

    model = TRPOPlus("MlpPolicy", "Pendulum-v1", seed=0, use_sde=True, **SMALL)
    assert ExplorationRedraw.for_policy(model.policy) is not None
    patched = copy.deepcopy(model.policy)
    patched.reset_noise = lambda n_envs=1: None  # type: ignore[method-assign]
    assert ExplorationRedraw.for_policy(patched) is None
    sampler = copy.deepcopy(model.policy)
    sampler.action_dist.sample_weights = lambda log_std, batch_size=1: None  # type: ignore[method-assign]
    assert ExplorationRedraw.for_policy(sampler) is None
    plain = TRPOPlus("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    assert ExplorationRedraw.for_policy(plain.policy) is None
