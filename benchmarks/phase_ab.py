"""
Per-phase A/B of TRPOPlus versions: which change bought what, on a noisy shared machine.

    python benchmarks/phase_ab.py --rows CartPole-v1 Hopper-v5 --baselines da4afc0 539e07b --rounds 15

``benchmarks/throughput.py`` compares whole iterations against sb3-contrib; its paired ratios
move by up to 1.7x between repetitions on a shared machine, too much to see a change of 5-20%.
This script times the same row with several versions of TRPOPlus (the current one and the
``--baselines`` git commits, loaded as in ``throughput.py --baselines``) and the env floor,
alternated round by round in one process, each round a fresh model running one warm-up and one
measured iteration, and reports per version the **minimum** over rounds of each phase
(collection, policy phase, critic phase, iteration) and of the env floor: the figure least moved
by other processes' load. Collection's own time is its minimum minus the floor's minimum.
The medians are reported beside them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import BLAS_THREADS  # noqa: F401, I001  (first: sets the BLAS thread count before NumPy loads)

import argparse

import numpy as np
import pandas as pd
import torch as th

import throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=["CartPole-v1", "Hopper-v5"], choices=list(throughput.ROWS))
    parser.add_argument("--baselines", nargs="*", default=[], metavar="COMMIT")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--torch-threads", default="1")
    parser.add_argument("--blas-threads", default="1", help="as in throughput.py (read before NumPy loads)")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args()
    throughput.set_torch_threads(args.torch_threads)
    versions = [throughput.baseline_runner(commit) for commit in args.baselines] + ["trpo_plus"]
    records = []
    for row_name in args.rows:
        row = throughput.ROWS[row_name]
        for round_ in range(args.rounds):
            order = throughput.rotated(versions, round_)
            floor = throughput.time_floor(row, round_, 1, 1)
            records.append({"row": row_name, "version": "env_floor", "round": round_, **floor})
            for version in order:
                timing = throughput.time_model(throughput.build_model(version, row, round_), 1, 1)
                records.append({"row": row_name, "version": version, "round": round_, **timing})
            print(f"{row_name} round {round_ + 1}/{args.rounds}", flush=True)
    raw = pd.DataFrame(records)
    lines = [
        "# Per-phase A/B of TRPOPlus versions",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"torch threads: {th.get_num_threads()}; {args.rounds} rounds, each a fresh model per version (1 warm-up + 1",
        "measured iteration), versions alternated. ms per iteration: minimum over rounds (median in brackets).",
        "",
        "| row | version | iteration | collect | collect - floor | policy phase | critic phase |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row_name in args.rows:
        part = raw[raw.row == row_name]
        floor_min = 1000 * part[part.version == "env_floor"].wall.min()
        lines.append(f"| {row_name} | env floor | {floor_min:.1f} | | | | |")
        for version in versions:
            mine = part[part.version == version]

            def cell(column: str, mine: pd.DataFrame = mine) -> str:
                values = 1000 * mine[column]
                return f"{values.min():.1f} ({np.median(values):.1f})"

            own = 1000 * mine.collect.min() - floor_min
            lines.append(
                f"| {row_name} | {version} | {cell('wall')} | {cell('collect')} | {own:.1f} "
                f"| {cell('policy_phase')} | {cell('critic_phase')} |"
            )
    text = "\n".join(lines)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
