"""
Memory of one TRPOPlus iteration (issue 22): does anything keep an autograd graph, and the
activations it holds, alive on the policy?

    python benchmarks/iteration_memory.py --label "this commit" --output benchmarks/results/iteration_memory.md

For each case the model is built (seed 0) and runs ``--iterations`` iterations by hand
(``collect_rollouts`` then ``train``, as ``learn`` does). Each ``train`` call runs under torch's
profiler with ``profile_memory=True``; from its allocation records (every allocation and free of
tensor memory, with its time) the script reports:

- ``peak``: the largest amount of tensor memory allocated during ``train`` and live at once (the
  profiler does not record the frees of blocks allocated before it started);
- ``retained``: what of it ``train`` left allocated when it returned (tensors kept on the policy or
  the model: the next iteration's starting point);
- ``graph on policy``: tensors attached to an autograd graph reachable from the policy, counted
  after construction and after each ``train`` (what breaks ``copy.deepcopy`` of the policy).

tracemalloc is not used: it does not see PyTorch's tensor memory. Run it on two commits (put the
package of the other on ``PYTHONPATH``) to compare; the output file is appended to.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch as th
from torch.profiler import ProfilerActivity, profile

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.settings import FORMER_VINE_DEFAULTS

CASES: dict[str, dict[str, Any]] = {
    "Pendulum-v1 single path": {"env": "Pendulum-v1"},
    "Pendulum-v1 single path, fast_paths=False": {"env": "Pendulum-v1", "fast_paths": False},
    "Pendulum-v1 single path, gSDE": {"env": "Pendulum-v1", "use_sde": True},
    "Pendulum-v1 vine": {"env": "Pendulum-v1", "sampling": "vine", "vine_kwargs": FORMER_VINE_DEFAULTS},
    "CartPole-v1 single path": {"env": "CartPole-v1"},
}


def graph_tensors(root: object) -> list[th.Tensor]:
    """Tensors attached to an autograd graph reachable from ``root`` through attributes and containers."""
    found: list[th.Tensor] = []
    seen: set[int] = set()
    pending: list[object] = [root]
    while pending:
        value = pending.pop()
        if id(value) in seen or isinstance(value, (str, bytes, int, float, type)):
            continue
        seen.add(id(value))
        if isinstance(value, th.Tensor):
            if value.grad_fn is not None:
                found.append(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, (list, tuple, set)):
            pending.extend(value)
        elif isinstance(value, th.nn.Module) or (hasattr(value, "__dict__") and not callable(value)):
            pending.extend(vars(value).values())
    return found


def allocation_profile(records: list[tuple[int, int]]) -> tuple[int, int]:
    """(peak, net) bytes of a list of (time, signed bytes) allocation records, from zero at the start."""
    live = peak = 0
    for _, nbytes in sorted(records):
        live += nbytes
        peak = max(peak, live)
    return peak, live


def profiled_train(model: TRPOPlus) -> tuple[int, int]:
    """Peak and retained tensor bytes of one ``model.train()`` call."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model.train()
    results = prof.profiler.kineto_results if prof.profiler is not None else None
    assert results is not None
    records = [(event.start_ns(), event.nbytes()) for event in results.events() if event.name() == "[memory]"]
    return allocation_profile(records)


def run_case(settings: dict[str, Any], n_steps: int, iterations: int) -> list[dict[str, Any]]:
    """One row per iteration: peak and retained bytes of ``train``, graph tensors on the policy."""
    settings = dict(settings)
    env = settings.pop("env")
    model = TRPOPlus("MlpPolicy", env, n_steps=n_steps, seed=0, **settings)
    _, callback = model._setup_learn(10**9, None)
    rows = [{"iteration": "built", "graph": len(graph_tensors(model.policy))}]
    for iteration in range(1, iterations + 1):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]
        before = len(graph_tensors(model.policy))
        peak, retained = profiled_train(model)
        rows.append(
            {
                "iteration": iteration,
                "graph_before": before,
                "peak": peak,
                "retained": retained,
                "graph": len(graph_tensors(model.policy)),
            }
        )
    return rows


def table(label: str, results: dict[str, list[dict[str, Any]]], n_steps: int) -> str:
    lines = [
        f"### {label}",
        "",
        f"n_steps={n_steps}, one environment, default networks (64x64), torch with one thread.",
        "",
        "| case | iteration | graph tensors on the policy before train | peak during train (MiB) "
        "| retained after train (KiB) | graph tensors after train |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case, rows in results.items():
        lines.append(f"| {case} | built | | | | {rows[0]['graph']} |")
        for row in rows[1:]:
            lines.append(
                f"| {case} | {row['iteration']} | {row['graph_before']} | {row['peak'] / 2**20:.2f} "
                f"| {row['retained'] / 2**10:.1f} | {row['graph']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="this commit", help="heading of the table (which code was measured)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--n-steps", type=int, default=2048)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None, help="markdown file the table is appended to")
    args = parser.parse_args()
    th.set_num_threads(1)
    results = {case: run_case(CASES[case], args.n_steps, args.iterations) for case in args.cases}
    text = table(args.label, results, args.n_steps)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
