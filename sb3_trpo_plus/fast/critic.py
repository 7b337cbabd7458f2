"""
The fused value regression of the standard MLP critic trained with Adam: the whole regression runs
on flat float32 arrays (forward, hand-derived backward of the MLP, Adam on one contiguous
vector), then parameters and the optimizer's state are written back. This removes the
per-minibatch framework overhead that dominates small networks. Same semantics as
:func:`sb3_trpo_plus.critic.fit_critic_torch` (same minibatches drawn from NumPy's global
generator, same mean-squared loss, same Adam update).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from torch import nn

from sb3_trpo_plus.fast.blas import single_blas_thread
from sb3_trpo_plus.fast.plain import plain_modules


def _tanh_slope(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """tanh' expressed through the activation's output, 1 - y * y, written into ``out``."""
    np.multiply(y, y, out=out)
    return np.subtract(1.0, out, out=out)


def _relu_slope(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """ReLU' expressed through the activation's output, 1.0 where y > 0 and 0.0 elsewhere, written into ``out``."""
    return np.greater(y, 0, out=out)


_Activation = Callable[[np.ndarray], np.ndarray]
_Slope = Callable[[np.ndarray, np.ndarray], np.ndarray]
_DERIVATIVES: dict[type[nn.Module], tuple[_Activation, _Slope]] = {
    # activation in place, and its derivative expressed through the activation's output (into an array)
    nn.Tanh: (lambda x: np.tanh(x, out=x), _tanh_slope),
    nn.ReLU: (lambda x: np.maximum(x, 0.0, out=x), _relu_slope),
}


# Adam's options: those the fused fit computes as torch does, and the values it accepts for the others
_ADAM_OPTIONS = {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay", "initial_lr"}
_ADAM_FIXED = {"foreach": (None, False), "capturable": (False,), "differentiable": (False,), "fused": (None, False)}


def _replicated_adam(optimizer: th.optim.Optimizer) -> bool:
    """
    Whether the fused fit computes exactly what ``optimizer.step()`` would: every option of its
    parameter group is one it replicates (or keeps a default whose arithmetic it shares), the
    numbers are plain numbers (not tensors), and no hook or instance patch intercepts the step.
    """
    from torch.optim import optimizer as optimizer_globals

    group = optimizer.param_groups[0]
    for key, value in group.items():
        if key == "params":
            continue
        if key in _ADAM_FIXED:
            if not any(value is allowed for allowed in _ADAM_FIXED[key]):
                return False
        elif key not in _ADAM_OPTIONS:
            return False  # an option of a later torch: not replicated, so not fused
    numbers = [group["lr"], *group["betas"], group["eps"], group["weight_decay"]]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
        return False
    hooks = (
        optimizer._optimizer_step_pre_hooks,
        optimizer._optimizer_step_post_hooks,
        getattr(optimizer_globals, "_global_optimizer_pre_hooks", {}),
        getattr(optimizer_globals, "_global_optimizer_post_hooks", {}),
    )
    return not any(hooks) and "step" not in vars(optimizer) and "zero_grad" not in vars(optimizer)


def fused_adam_kernel(decoupled: bool) -> Callable[..., None] | None:
    """
    torch's fused Adam (``decoupled=False``) or AdamW kernel for CPU tensors, the update
    ``Adam(fused=True)`` applies: one pass over the parameters instead of a dozen NumPy passes.
    ``None`` where this torch has no such CPU kernel (before 2.4): the fit then updates in NumPy.
    """
    name = "_fused_adamw_" if decoupled else "_fused_adam_"
    if name not in _FUSED_KERNELS:
        kernel = getattr(th, name, None)
        try:
            if kernel is not None:
                arrays = [[th.zeros(1)] for _ in range(4)]  # parameters, gradients, first and second moments
                options = {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "eps": 1e-8}
                kernel(*arrays, [], [th.ones(())], amsgrad=False, maximize=False, **options)
        except (RuntimeError, NotImplementedError):
            kernel = None
        _FUSED_KERNELS[name] = kernel
    return _FUSED_KERNELS[name]


_FUSED_KERNELS: dict[str, Callable[..., None] | None] = {}


class _FlatAdam:
    """
    Adam (or AdamW, with the group's ``decoupled_weight_decay``) on contiguous float32 arrays,
    updated in place with the options of ``group`` (a torch parameter group): through torch's fused CPU kernel where
    :func:`fused_adam_kernel` finds one (on tensor views of the arrays), otherwise in NumPy with
    the same arithmetic. ``max_exp_avg_sq`` is given exactly when ``amsgrad`` is on.
    """

    def __init__(
        self,
        flat: np.ndarray,
        grad: np.ndarray,
        exp_avg: np.ndarray,
        exp_avg_sq: np.ndarray,
        max_exp_avg_sq: np.ndarray | None,
        group: dict[str, Any],
    ) -> None:
        self.arrays = (flat, grad, exp_avg, exp_avg_sq)
        self.max_exp_avg_sq = max_exp_avg_sq
        self.lr, (self.beta1, self.beta2) = float(group["lr"]), group["betas"]
        self.eps, self.weight_decay = float(group["eps"]), float(group["weight_decay"])
        self.amsgrad, self.maximize = max_exp_avg_sq is not None, bool(group.get("maximize"))
        self.decoupled = bool(group.get("decoupled_weight_decay"))
        self.kernel = fused_adam_kernel(self.decoupled)
        if self.kernel is not None:
            self.tensors = [[th.from_numpy(a)] for a in self.arrays]
            self.maxima = [th.from_numpy(max_exp_avg_sq)] if max_exp_avg_sq is not None else []
            self.step_tensor = th.zeros((), dtype=th.float32)
            self.step_array = self.step_tensor.numpy()  # its memory: set without a torch call (5 us)
            self.kernel_options = {
                "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "weight_decay": self.weight_decay,
                "eps": self.eps, "amsgrad": self.amsgrad, "maximize": self.maximize,
            }  # fmt: skip
        else:
            self.scratch, self.denom = np.empty_like(flat), np.empty_like(flat)

    def update(self, step: float) -> None:
        """One Adam update from the gradient array, ``step`` being the (already incremented) step count."""
        if self.kernel is not None:
            self.step_array[...] = step  # the float32 of step, as fill_ would write
            self.kernel(*self.tensors, self.maxima, [self.step_tensor], **self.kernel_options)
            return
        flat, grad, exp_avg, exp_avg_sq = self.arrays
        scratch, denom, lr, beta1, beta2 = self.scratch, self.denom, self.lr, self.beta1, self.beta2
        if self.maximize:
            np.negative(grad, out=grad)
        if self.weight_decay != 0:
            if self.decoupled:  # AdamW's decay of the parameters themselves
                flat *= np.float32(1.0 - lr * self.weight_decay)
            else:  # L2: the decay enters the gradient
                grad += np.float32(self.weight_decay) * flat
        # torch's Adam, in place: m += (1 - b1)(g - m); v = b2 v + (1 - b2) g^2;
        # theta -= lr / (1 - b1^t) * m / (sqrt(v') / sqrt(1 - b2^t) + eps), v' = v, or with
        # amsgrad the running maximum of v
        np.subtract(grad, exp_avg, out=scratch)
        scratch *= np.float32(1.0 - beta1)
        exp_avg += scratch
        exp_avg_sq *= np.float32(beta2)
        np.multiply(grad, grad, out=scratch)
        scratch *= np.float32(1.0 - beta2)
        exp_avg_sq += scratch
        if self.max_exp_avg_sq is not None:
            np.maximum(self.max_exp_avg_sq, exp_avg_sq, out=self.max_exp_avg_sq)
            np.sqrt(self.max_exp_avg_sq, out=denom)
        else:
            np.sqrt(exp_avg_sq, out=denom)
        denom /= np.float32((1.0 - beta2**step) ** 0.5)
        denom += np.float32(self.eps)
        np.divide(exp_avg, denom, out=scratch)
        scratch *= np.float32(lr / (1.0 - beta1**step))
        flat -= scratch


def _times(delta: np.ndarray, weight: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """
    ``delta @ weight`` (into ``out`` when given). Through the value head (one column of
    ``delta``, one row of ``weight``) it is an outer product, which a BLAS multiplies several
    times slower than NumPy's broadcasting; each entry is then one product, rounded once either
    way, and ``+ 0.0`` gives an exact zero the sign the BLAS's zero-started sum gives it (+0).
    """
    if delta.shape[1] == 1:
        product = np.multiply(delta, weight, out=out)
        product += 0.0
        return product
    return np.matmul(delta, weight, out=out)


class _Workspace:
    """
    The arrays one fit writes into, allocated once instead of at every minibatch (a fresh array
    of a minibatch's activations costs about as much as the product that fills it): per hidden
    layer its activations, the error back-propagated to it and the activation's derivative; the
    value head's outputs and error; the epoch's gathered minibatches and regression errors. A
    shorter last minibatch uses the leading rows.
    """

    def __init__(self, widths: list[int], n_inputs: int, batch_size: int, n_samples: int) -> None:
        rows = min(batch_size, n_samples)
        self.hidden = [np.empty((rows, width), dtype=np.float32) for width in widths]
        self.deltas = [np.empty((rows, width), dtype=np.float32) for width in widths]
        self.slopes = [np.empty((rows, width), dtype=np.float32) for width in widths]
        self.values = np.empty((rows, 1), dtype=np.float32)
        self.head_delta = np.empty((rows, 1), dtype=np.float32)
        self.x_epoch = np.empty((n_samples, n_inputs), dtype=np.float32)
        self.y_epoch = np.empty(n_samples, dtype=np.float32)
        self.errors = np.empty(n_samples, dtype=np.float32)


def _minibatch_losses(errors: np.ndarray, batch_size: int) -> list[float]:
    """
    The mean squared error of each minibatch of an epoch from the epoch's errors, in one pass:
    NumPy's mean of each row of the full minibatches is the mean of that minibatch alone (the
    same pairwise float32 sum and division), and a shorter last one is taken alone.
    """
    squares = errors * errors
    n_full = len(squares) // batch_size
    losses = np.mean(squares[: n_full * batch_size].reshape(n_full, batch_size), axis=1).tolist() if n_full else []
    if n_full * batch_size < len(squares):
        losses.append(float(np.mean(squares[n_full * batch_size :])))
    return losses


class FusedMlpCritic:
    """
    The value regression of a standard MLP critic (flattened Box observations, Linear layers
    with Tanh or ReLU activations, a linear value head) with ``torch.optim.Adam`` or ``AdamW``
    (every option of theirs that changes the arithmetic is replicated; any other option, a
    tensor-valued number, an optimizer hook or a module hook sends the fit to torch), run on flat
    float32 arrays. Build it with :meth:`from_policy`, which returns ``None`` when the policy or
    its optimizer is of another form; then call :meth:`fit`.
    """

    def __init__(self, policy: ActorCriticPolicy, linears: list[nn.Linear], activations: list[type[nn.Module]]) -> None:
        self.policy = policy
        self.linears = linears
        self.activations = activations
        self.params: list[nn.Parameter] = [p for layer in linears for p in (layer.weight, layer.bias)]  # type: ignore[misc]

    @classmethod
    def from_policy(cls, policy: ActorCriticPolicy) -> FusedMlpCritic | None:
        """The fused critic of ``policy``, or None when it does not have the supported form."""
        optimizer = policy.optimizer
        if (
            any(
                getattr(type(policy), name) is not getattr(ActorCriticPolicy, name)
                for name in ("predict_values", "extract_features")
            )
            or type(optimizer) not in (th.optim.Adam, th.optim.AdamW)
            or len(optimizer.param_groups) != 1
            or not _replicated_adam(optimizer)
            or not plain_modules([*policy.modules()], backward=True)
            or not isinstance(policy.observation_space, spaces.Box)
            or is_image_space(policy.observation_space)
            or type(policy.vf_features_extractor) is not FlattenExtractor
            or type(policy.mlp_extractor) is not MlpExtractor
            or hasattr(policy.mlp_extractor, "shared_net")
            or type(policy.value_net) is not nn.Linear
        ):
            return None
        linears: list[nn.Linear] = []
        activations: list[type[nn.Module]] = []
        for module in policy.mlp_extractor.value_net:
            if type(module) is nn.Linear and len(linears) == len(activations):
                linears.append(module)
            elif type(module) in _DERIVATIVES and len(linears) == len(activations) + 1:
                activations.append(type(module))
            else:
                return None
        if len(linears) != len(activations):
            return None
        linears.append(policy.value_net)
        if any(layer.bias is None for layer in linears):
            return None
        fused = cls(policy, linears, activations)
        if any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None) for p in fused.params):
            return None
        grouped = {id(p) for p in optimizer.param_groups[0]["params"]}
        if not all(id(p) in grouped for p in fused.params):
            return None
        steps = {float(optimizer.state[p]["step"]) if p in optimizer.state else 0.0 for p in fused.params}
        return fused if len(steps) == 1 else None

    def fit(self, observations: np.ndarray, returns: np.ndarray, n_epochs: int, batch_size: int) -> list[float]:
        """
        ``n_epochs`` passes of shuffled minibatches (one ``np.random.permutation`` per pass, as
        ``RolloutBuffer.get`` draws them) of Adam on the mean-squared error.

        :param observations: flattened batch of observations, shape (N, ...)
        :param returns: regression targets, shape (N,)
        :return: the loss of every minibatch
        """
        with single_blas_thread():
            return self._fit(observations, returns, n_epochs, batch_size)

    def _fit(self, observations: np.ndarray, returns: np.ndarray, n_epochs: int, batch_size: int) -> list[float]:
        group = self.policy.optimizer.param_groups[0]
        amsgrad = bool(group.get("amsgrad"))
        state = self.policy.optimizer.state
        shapes = [tuple(p.shape) for p in self.params]
        sizes = [p.numel() for p in self.params]
        flat = np.concatenate([p.detach().cpu().numpy().ravel() for p in self.params]).astype(np.float32)
        exp_avg = np.concatenate([self._state(p, "exp_avg") for p in self.params])
        exp_avg_sq = np.concatenate([self._state(p, "exp_avg_sq") for p in self.params])
        max_exp_avg_sq = np.concatenate([self._state(p, "max_exp_avg_sq") for p in self.params]) if amsgrad else None
        step = float(state[self.params[0]]["step"]) if self.params[0] in state else 0.0
        views = [v.reshape(s) for v, s in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes, strict=True)]
        grad = np.zeros_like(flat)
        grad_views = [v.reshape(s) for v, s in zip(np.split(grad, np.cumsum(sizes)[:-1]), shapes, strict=True)]
        x_all = np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)
        y_all = np.asarray(returns, dtype=np.float32).reshape(-1)
        n_samples = len(y_all)
        losses = []
        adam = _FlatAdam(flat, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, group)
        widths = [layer.out_features for layer in self.linears[:-1]]
        work = _Workspace(widths, x_all.shape[1], batch_size, n_samples)
        for _ in range(n_epochs):
            indices = np.random.permutation(n_samples)
            # one gather per pass; minibatches are then contiguous slices
            x_epoch = np.take(x_all, indices, axis=0, out=work.x_epoch)
            y_epoch = np.take(y_all, indices, out=work.y_epoch)
            for start in range(0, n_samples, batch_size):
                end = start + batch_size
                self._gradient(views, grad_views, x_epoch[start:end], y_epoch[start:end], work, work.errors[start:end])
                step += 1.0  # the step count is incremented before the update, as Adam does
                adam.update(step)
            losses.extend(_minibatch_losses(work.errors, batch_size))
        self._write_back(flat, exp_avg, exp_avg_sq, max_exp_avg_sq, step, sizes)
        return losses

    def _state(self, param: nn.Parameter, key: str) -> np.ndarray:
        state = self.policy.optimizer.state.get(param)
        if not state:
            return np.zeros(param.numel(), dtype=np.float32)
        value = state.get(key)
        if value is None:
            return np.zeros(param.numel(), dtype=np.float32)
        return value.detach().cpu().numpy().ravel().astype(np.float32)

    def _gradient(
        self,
        weights: list[np.ndarray],
        grads: list[np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        work: _Workspace,
        error: np.ndarray,
    ) -> None:
        """
        The gradient of the minibatch's mean squared error, written into ``grads``, and its
        errors (value - target), written into ``error``. Every array is written in place
        (``work``): a product written into an existing array, or added to it, is the one the
        allocating expression computes.
        """
        rows = len(y)
        outputs = [x]
        for index, name in enumerate(self.activations):
            hidden = work.hidden[index][:rows]
            np.matmul(outputs[-1], weights[2 * index].T, out=hidden)
            hidden += weights[2 * index + 1]
            outputs.append(_DERIVATIVES[name][0](hidden))
        values = np.matmul(outputs[-1], weights[-2].T, out=work.values[:rows])
        values += weights[-1]
        np.subtract(values[:, 0], y, out=error)
        delta = np.multiply(2.0 / rows, error[:, None], out=work.head_delta[:rows])
        for index in range(len(self.linears) - 1, -1, -1):
            np.matmul(delta.T, outputs[index], out=grads[2 * index])
            np.add.reduce(delta, axis=0, out=grads[2 * index + 1])
            if index > 0:
                below = _times(delta, weights[2 * index], out=work.deltas[index - 1][:rows])
                below *= _DERIVATIVES[self.activations[index - 1]][1](outputs[index], work.slopes[index - 1][:rows])
                delta = below

    def _write_back(
        self,
        flat: np.ndarray,
        exp_avg: np.ndarray,
        exp_avg_sq: np.ndarray,
        max_exp_avg_sq: np.ndarray | None,
        step: float,
        sizes: list[int],
    ) -> None:
        bounds = np.cumsum([0, *sizes])
        state = self.policy.optimizer.state
        with th.no_grad():
            for index, param in enumerate(self.params):
                piece = slice(bounds[index], bounds[index + 1])
                param.copy_(th.from_numpy(flat[piece]).view_as(param))
                param_state = state[param]
                if not param_state:
                    param_state["step"] = th.tensor(0.0, dtype=th.float32)
                    param_state["exp_avg"] = th.zeros_like(param, memory_format=th.preserve_format)
                    param_state["exp_avg_sq"] = th.zeros_like(param, memory_format=th.preserve_format)
                if max_exp_avg_sq is not None:
                    param_state.setdefault("max_exp_avg_sq", th.zeros_like(param, memory_format=th.preserve_format))
                    param_state["max_exp_avg_sq"].copy_(th.from_numpy(max_exp_avg_sq[piece]).view_as(param))
                param_state["exp_avg"].copy_(th.from_numpy(exp_avg[piece]).view_as(param))
                param_state["exp_avg_sq"].copy_(th.from_numpy(exp_avg_sq[piece]).view_as(param))
                param_state["step"].fill_(step)
