"""Run the tabular theory harness: ``python -m benchmarks.tabular [--mdps N] [--seed S] ...`` from the repository root."""

from __future__ import annotations

import argparse

import torch as th

from benchmarks.tabular.harness import HarnessConfig, format_report, run


def main() -> None:
    parser = argparse.ArgumentParser(description="Theorem 1, the CPI bound and the step rules on exact random finite MDPs")
    parser.add_argument("--mdps", type=int, default=40, help="random MDPs per discount factor")
    parser.add_argument("--states", type=int, default=8)
    parser.add_argument("--actions", type=int, default=4)
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    parser.add_argument("--iterations", type=int, default=10, help="steps of each rule per MDP")
    parser.add_argument("--delta", type=float, default=0.01, help="mean-KL radius of the constraint")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    th.set_num_threads(1)
    config = HarnessConfig(args.mdps, args.states, args.actions, tuple(args.gammas), args.iterations, args.delta, args.seed)
    print(format_report(run(config)))


if __name__ == "__main__":
    main()
