"""
The cost of vine's run-time fidelity probe (``vine_kwargs['fidelity_probe']``) as a share of an
iteration, on CartPole-v1 and Hopper-v5.

    python benchmarks/branch_probe_cost.py                     # both envs, 2048 trunk steps, 5 iterations
    python benchmarks/branch_probe_cost.py --envs Hopper-v5 --iters 3

Each env trains ``--warmup`` + ``--iters`` iterations of TRPOPlus with ``sampling="vine"``, the
default vine settings and ``fidelity_probe=1`` (a probe at every iteration). Timed: the whole
iteration (``collect_rollouts`` and ``train``), and the probe's own work, arming the trunk
environment (its snapshot, :meth:`FidelityProbe.before_step`) and the check (restore a copy, one
step, the comparison, :meth:`FidelityProbe.check`). The share at the default rate (every 10th
iteration) is the probe's time per probe divided by 10 iterations. At other steps the probe costs
nothing: the trunk's ``BranchableEnv.step`` tests one attribute (the same with the probe off).
Writes ``benchmarks/results/branch_probe_cost.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.settings import FORMER_VINE_DEFAULTS, VineSettings
from sb3_trpo_plus.vine.probe import FidelityProbe


def _timed(owner: Any, name: str, totals: dict[str, float]) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall time to ``totals[name]``."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def measure(env_id: str, n_steps: int, warmup: int, iters: int, seed: int) -> dict[str, float]:
    """Mean iteration time and probe time per probe (seconds), probing every iteration."""
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    vine_kwargs = {**FORMER_VINE_DEFAULTS, "fidelity_probe": 1}  # the vine settings of the committed figures
    model = TRPOPlus("MlpPolicy", env, n_steps=n_steps, sampling="vine", seed=seed, vine_kwargs=vine_kwargs)
    model.learn(n_steps * warmup)
    assert model._vine is not None
    probe: FidelityProbe = model._vine.probe
    totals: dict[str, float] = {}
    _timed(probe, "before_step", totals)
    _timed(probe, "check", totals)
    count_before = probe.count
    start = time.perf_counter()
    model.learn(n_steps * iters, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    probes = probe.count - count_before
    env.close()
    return {
        "iteration": elapsed / iters,
        "probe": (totals.get("before_step", 0.0) + totals.get("check", 0.0)) / max(1, probes),
        "arm_and_offer_calls": totals.get("before_step", 0.0) / max(1, probes),
        "probes": float(probes),
        "max_diff": probe.max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Hopper-v5"])
    parser.add_argument("--n-steps", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "branch_probe_cost.md"))
    args = parser.parse_args()
    th.set_num_threads(1)
    every = VineSettings().fidelity_probe
    rows = []
    for env_id in args.envs:
        result = measure(env_id, args.n_steps, args.warmup, args.iters, args.seed)
        share_every = result["probe"] / result["iteration"]
        rows.append(
            f"| {env_id} | {result['iteration']:.3f} | {1e3 * result['probe']:.2f} | {100 * share_every:.3f}% | "
            f"{100 * share_every / every:.4f}% | {int(result['probes'])} | {result['max_diff']:g} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Cost of vine's fidelity probe",
            "",
            f"`python benchmarks/branch_probe_cost.py --n-steps {args.n_steps} --warmup {args.warmup} --iters {args.iters}`: "
            "TRPOPlus, `sampling=\"vine\"`, default vine settings, one environment, 1 torch thread, "
            "on a 2-core machine shared with other jobs (wall clock, so shares are approximate).",
            "",
            "| env | iteration (s) | probe (ms per probe) | share, every iteration | "
            f"share, default rate (every {every}th) | probes timed | largest difference |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            "The probe's time is arming the trunk environment (one snapshot) plus the check (one restore of "
            "its own copy, one environment step, the comparison; the copy is built at the first probe, "
            "in the warm-up iteration). Environments branched by replay (Box2D, `register_replay_env`) also "
            "replay the episode so far in the check and keep a copy of each trunk observation while the "
            "probe is on.",
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
