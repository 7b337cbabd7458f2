"""
The fused critic fit's Adam update: NumPy's dozen passes over the flat parameters against torch's
fused CPU Adam kernel (issue 12), paired in one process, alternating, so that a shared machine's
drift hits both alike.

    python benchmarks/critic_adam.py                     # zoo MuJoCo critic (64x64) and the wide row's (256x256)
    python benchmarks/critic_adam.py --reps 15 --out benchmarks/results

Each case builds TRPOPlus on Hopper-v5 with the row's network, runs one iteration to fill the
buffer, then times ``FusedMlpCritic.fit`` (the zoo's ``n_critic_updates`` epochs of 128-sample
minibatches) with the NumPy update and with the kernel, alternately, ``--reps`` times each. Both
start from the same parameters and optimizer state and draw the same minibatches; the script
checks that their results agree (max abs difference of the parameters).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import BLAS_THREADS  # noqa: I001  (first: sets the BLAS thread count before NumPy loads)

import argparse
import contextlib
import copy
import time
from unittest import mock

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.fast import FusedMlpCritic
from sb3_trpo_plus.fast import critic as fused_critic

CASES = {
    "zoo MuJoCo critic 64x64, 2 envs x 1024 steps": (64, 2, 1024),
    "wide row critic 256x256, 8 envs x 2048 steps": (256, 8, 2048),
}


def _fit_seconds(
    policy: object, obs: np.ndarray, returns: np.ndarray, epochs: int, numpy_update: bool
) -> tuple[float, th.Tensor]:
    """Seconds of one fused fit of a copy of ``policy``'s critic, and the fitted parameters."""
    twin = copy.deepcopy(policy)
    fused = FusedMlpCritic.from_policy(twin)  # type: ignore[arg-type]
    assert fused is not None
    np.random.seed(0)
    numpy_only = mock.patch.object(fused_critic, "fused_adam_kernel", lambda decoupled: None)
    with numpy_only if numpy_update else contextlib.nullcontext():
        start = time.perf_counter()
        fused.fit(obs, returns, epochs, 128)
        seconds = time.perf_counter() - start
    return seconds, th.cat([p.detach().flatten() for p in fused.params])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=20, help="n_critic_updates (the zoo's MuJoCo value)")
    parser.add_argument("--out", default=None, help="folder for critic_adam.md (default: print only)")
    args = parser.parse_args()
    th.set_num_threads(1)
    lines = [
        "# Critic fit: NumPy Adam update against torch's fused CPU Adam kernel",
        "",
        f"Command: `python {' '.join(sys.argv)}`; one torch thread, BLAS threads: {BLAS_THREADS}; "
        f"{args.reps} paired repetitions, alternating.",
        "",
        "| case | minibatch steps | NumPy update ms/fit | fused kernel ms/fit | speed-up (median of paired ratios, min-max) "
        "| max abs parameter difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (width, n_envs, n_steps) in CASES.items():
        env = make_vec_env("Hopper-v5", n_envs=n_envs, seed=0)
        model = TRPOPlus("MlpPolicy", env, seed=0, n_steps=n_steps, batch_size=128, n_critic_updates=1,
                         policy_kwargs={"net_arch": [width, width]})
        model.learn(n_envs * n_steps)
        obs = model.rollout_buffer.observations.reshape(n_envs * n_steps, -1)
        returns = model.rollout_buffer.returns.reshape(-1)
        numpy_times, kernel_times, ratios, diff = [], [], [], 0.0
        for rep in range(args.reps):
            order = [True, False] if rep % 2 == 0 else [False, True]
            results = {flag: _fit_seconds(model.policy, obs, returns, args.epochs, flag) for flag in order}
            numpy_times.append(results[True][0])
            kernel_times.append(results[False][0])
            ratios.append(results[True][0] / results[False][0])
            diff = max(diff, float((results[True][1] - results[False][1]).abs().max()))
        steps = args.epochs * len(returns) // 128
        lines.append(
            f"| {name} | {steps:,} | {1000 * np.median(numpy_times):,.0f} | {1000 * np.median(kernel_times):,.0f} "
            f"| {np.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {diff:.1e} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "critic_adam.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
