"""
Cost of one Fisher-vector product of the trust-region step, by method, on a Pong-sized CnnPolicy
and, for comparison, a small CnnPolicy and MLP policies (issue 12).

    python benchmarks/cnn_fvp.py                                   # CnnPolicy, 1024 random Pong-shaped states
    python benchmarks/cnn_fvp.py --policy cnn cnn_small mlp64 mlp256 --out benchmarks/results
    python benchmarks/cnn_fvp.py --methods double_backward linearize_cl --products 5

Policies (TRPOPlus's, built on an env with the row's spaces only; weights moved slightly away from
the initialisation, whose near-uniform head hides errors; random states):

- ``cnn``: uint8 (4, 84, 84) observations (Pong with rl_zoo3's Atari set-up and frame stack 4),
  6 actions, NatureCNN, 1024 states (8 envs x 128 steps, the throughput row Pong-cnn);
- ``cnn_small``: the image cell of tests/test_parity_spaces.py, (1, 36, 36), 16 features, 512 states;
- ``mlp64`` / ``mlp256``: 17-dimensional observations, 6-dimensional Gaussian, 64x64 / 256x256, 2048 states.

Methods. Each builds its product at theta_old from the states onwards (``setup``: the forward
pass the trust-region step shares with the surrogate is included, for every method), then its
products are timed one by one:

- ``double_backward``: F = J^T M J / N with J v by differentiating a vector-Jacobian product with
  respect to its cotangent (trust_region.analytic_fisher_vector_product): two backward passes;
- ``jvp``: the same F with J v by ``torch.func.jvp`` over ``torch.func.functional_call`` (the
  primal recomputed with every product), then one backward pass through the outputs' graph;
- ``linearize``: J v by ``torch.func.linearize``, traced once, primal folded into constants
  (trust_region.linearized_fisher_vector_product; the folding runs at the first product);
- ``package``: what ``fisher="analytic"`` does on a convolutional policy: ``linearize`` on the
  states in channels_last (fisher.step_distribution, forward_mode_fisher_product); forced
  on the MLPs, where the package itself keeps ``double_backward``;
- ``kl_hessian``: double backprop through the mean KL (sb3-contrib's product), for reference;
- suffix ``_cl``: the method on the states in the channels_last memory format (images only).

Reported per method: set-up, first product, median wall and CPU (process) time per product over
``--products`` products after the first, a trust-region step's CPU time estimated as set-up +
first + 16 more products (x0, 15 conjugate-gradient iterations and the step length are 17), and
the relative (2-norm) and largest absolute difference of its first product to the first
method's, on the same vector. One torch thread, one BLAS thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import BLAS_THREADS  # noqa: I001, F401  (first: sets the BLAS thread count before NumPy loads)

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.distributions import detached, distribution_metric, distribution_parameters
from sb3_trpo_plus.fisher import distribution_parameters_function, forward_mode_fisher_product
from sb3_trpo_plus.observations import channels_last
from sb3_trpo_plus.surrogate import mean_kl
from sb3_trpo_plus.trust_region import (
    MatVec,
    analytic_fisher_vector_product,
    flat_grad,
    kl_hessian_vector_product,
    linearized_fisher_vector_product,
)

POLICIES: dict[str, dict[str, Any]] = {
    "cnn": {"obs": spaces.Box(0, 255, (4, 84, 84), np.uint8), "act": spaces.Discrete(6), "policy": "CnnPolicy", "n": 1024},
    # the image cell of tests/test_parity_spaces.py: one 36 x 36 channel, 16 features, 2 envs x 256 steps
    "cnn_small": {
        "obs": spaces.Box(0, 255, (1, 36, 36), np.uint8),
        "act": spaces.Discrete(3),
        "policy": "CnnPolicy",
        "n": 512,
        "kwargs": {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [16]},
    },
    "mlp64": {"obs": spaces.Box(-5, 5, (17,)), "act": spaces.Box(-1, 1, (6,)), "policy": "MlpPolicy", "n": 2048, "arch": 64},
    "mlp256": {
        "obs": spaces.Box(-5, 5, (17,)),
        "act": spaces.Box(-1, 1, (6,)),
        "policy": "MlpPolicy",
        "n": 2048,
        "arch": 256,
    },
}
METHODS = ["double_backward", "jvp", "linearize", "package", "kl_hessian"]
STEP_PRODUCTS = 17  # x0, 15 conjugate-gradient iterations (cg_max_steps), the step length


class SpacesEnv(gym.Env):
    """An env with the row's spaces only (never stepped: the states are random)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self.observation_space.sample(), 0.0, False, False, {}


def build(name: str, seed: int) -> tuple[ActorCriticPolicy, list[nn.Parameter], th.Tensor]:
    """TRPOPlus's policy for ``name``, its actor parameters and a batch of random states."""
    spec = POLICIES[name]
    kwargs: dict[str, Any] = {"policy_kwargs": spec.get("kwargs", {})}
    if "arch" in spec:
        kwargs["policy_kwargs"] = {"net_arch": [spec["arch"], spec["arch"]]}
    model = TRPOPlus(spec["policy"], SpacesEnv(spec["obs"], spec["act"]), n_steps=128, seed=seed, **kwargs)
    policy = model.policy
    gen = th.Generator().manual_seed(seed)
    with th.no_grad():
        for param in policy.parameters():  # away from the orthogonal initialisation's near-uniform head
            param.add_(0.05 * param.abs().mean() * th.randn(param.shape, generator=gen))
    n = spec["n"]
    if spec["policy"] == "CnnPolicy":
        raw = th.randint(0, 256, (n, *spec["obs"].shape), generator=gen, dtype=th.uint8)
    else:
        raw = 2.0 * th.randn(n, *spec["obs"].shape, generator=gen)
    return policy, model._actor_params, raw


def jvp_product(
    policy: ActorCriticPolicy,
    params: Sequence[nn.Parameter],
    obs: th.Tensor,
    outputs: Sequence[th.Tensor],
    metric: Callable[[Sequence[th.Tensor]], list[th.Tensor]],
    damping: float,
) -> MatVec:
    """F v = J^T M J v / N with J v by ``torch.func.jvp`` (primal recomputed every time), J^T w on ``outputs``' graph."""
    outputs_of = distribution_parameters_function(policy, params, obs)
    n = len(outputs[0])
    sizes = [p.numel() for p in params]
    primals = tuple(p.detach() for p in params)

    def product(vector: th.Tensor) -> th.Tensor:
        tangents = tuple(piece.view_as(p) for piece, p in zip(vector.split(sizes), params, strict=True))
        _, jv = th.func.jvp(lambda *values: outputs_of(values), primals, tangents)
        weighted = [m / n for m in metric(list(jv))]
        return flat_grad(list(outputs), params, grad_outputs=weighted, retain_graph=True) + damping * vector

    return product


def make_product(method: str, policy: ActorCriticPolicy, params: list[nn.Parameter], obs: th.Tensor, damping: float) -> MatVec:
    """The product of ``method`` at the policy's current parameters, from the distribution on ``obs`` onwards."""
    if method == "package":  # the trust-region step's layout (fisher.step_distribution)
        obs = channels_last(obs)  # type: ignore[assignment]
    distribution = policy.get_distribution(obs)
    old = detached(distribution)
    if method == "kl_hessian":
        return kl_hessian_vector_product(mean_kl(distribution, old), params, damping)
    outputs = distribution_parameters(distribution)
    metric, n = distribution_metric(old), len(outputs[0])
    if method == "double_backward":
        return analytic_fisher_vector_product(outputs, metric, params, damping, n)
    if method == "jvp":
        return jvp_product(policy, params, obs, outputs, metric, damping)
    if method == "linearize":
        outputs_of = distribution_parameters_function(policy, params, obs)
        return linearized_fisher_vector_product(outputs, outputs_of, metric, params, damping, n)
    if method == "package":
        product = forward_mode_fisher_product(policy, params, obs, outputs, metric, damping)
        assert product is not None, "forward mode refused this policy"
        return product
    raise ValueError(f"unknown method {method!r}")


def measure(name: str, methods: list[str], products: int, seed: int, damping: float) -> list[dict[str, Any]]:
    """One row per method: setup, first and per-product times, and the difference to the first method's product."""
    policy, params, raw = build(name, seed)
    n_params = sum(p.numel() for p in params)
    vectors = [th.randn(n_params, generator=th.Generator().manual_seed(seed + 1 + i)) for i in range(products + 1)]
    reference: th.Tensor | None = None
    rows = []
    for method in methods:
        obs, _ = policy.obs_to_tensor(raw.numpy())
        assert isinstance(obs, th.Tensor)
        if method.endswith("_cl"):
            if obs.dim() != 4:
                continue  # no image: nothing to lay out
            obs = obs.contiguous(memory_format=th.channels_last)
        start = time.perf_counter(), time.process_time()
        product = make_product(method.removesuffix("_cl"), policy, params, obs, damping)
        setup_wall, setup_cpu = time.perf_counter() - start[0], time.process_time() - start[1]
        walls, cpus = [], []
        for vector in vectors:
            start = time.perf_counter(), time.process_time()
            result = product(vector)
            walls.append(time.perf_counter() - start[0])
            cpus.append(time.process_time() - start[1])
            if len(walls) == 1:
                first = result
        first_wall, first_cpu = walls.pop(0), cpus.pop(0)
        if reference is None:
            reference = first
        diff = first - reference
        row = {
            "policy": name,
            "method": method,
            "n_params": n_params,
            "setup_ms": 1e3 * setup_wall,
            "setup_cpu_ms": 1e3 * setup_cpu,
            "first_ms": 1e3 * first_wall,
            "ms_per_product": 1e3 * statistics.median(walls),
            "cpu_ms_per_product": 1e3 * statistics.median(cpus),
            "rel_err": float(th.linalg.norm(diff) / th.linalg.norm(reference)),
            "max_abs_diff": float(diff.abs().max()),
        }
        row["step_cpu_s"] = setup_cpu + first_cpu + (STEP_PRODUCTS - 1) * statistics.median(cpus) if cpus else math.nan
        rows.append(row)
        print(
            f"{name:9s} {method:18s} setup {row['setup_ms']:7.0f} ms (cpu {row['setup_cpu_ms']:7.0f})"
            f"  first {row['first_ms']:7.0f} ms  per product {row['ms_per_product']:7.1f} ms"
            f" (cpu {row['cpu_ms_per_product']:7.1f})  17-product step cpu {row['step_cpu_s']:6.2f} s"
            f"  rel err {row['rel_err']:.1e}  max |diff| {row['max_abs_diff']:.1e}"
            f" (max |Fv| {float(reference.abs().max()):.1e})",
            flush=True,
        )
        del product
    return rows


def write(rows: list[dict[str, Any]], out: Path, command: str) -> None:
    """``cnn_fvp.csv`` (every row) and ``cnn_fvp.md`` (the table) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "cnn_fvp.csv", index=False)
    lines = [
        "# Fisher-vector products by method (benchmarks/cnn_fvp.py)",
        "",
        f"    {command}",
        "",
        "| policy | method | set-up ms | first ms | ms / product (CPU) | step CPU s (17) | rel. diff | max abs diff |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['policy']} | {row['method']} | {row['setup_ms']:.0f} | {row['first_ms']:.0f}"
            f" | {row['ms_per_product']:.1f} ({row['cpu_ms_per_product']:.1f}) | {row['step_cpu_s']:.2f}"
            f" | {row['rel_err']:.1e} | {row['max_abs_diff']:.1e} |"
        )
    (out / "cnn_fvp.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", nargs="+", default=["cnn"], choices=list(POLICIES))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=METHODS,
        help="the first is the reference of the differences; any method takes the suffix _cl (channels_last states)",
    )
    parser.add_argument("--products", type=int, default=3, help="timed products per method, after the first")
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blas-threads", default="1", help="BLAS threads for NumPy (read by _threads on import)")
    parser.add_argument("--out", type=Path, default=None, help="write cnn_fvp.csv and cnn_fvp.md there")
    args = parser.parse_args()
    th.set_num_threads(1)
    rows = [row for name in args.policy for row in measure(name, args.methods, args.products, args.seed, args.damping)]
    if args.out is not None:
        write(rows, args.out, "python benchmarks/cnn_fvp.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
