"""
Vine under noisy dynamics: the gradient variance per environment step of single path, vine with
common random numbers and vine without them, across noise levels of the noisy environment family
(:mod:`sb3_trpo_plus.noisy_envs`; the noise comes from the environment's own ``np_random``, so the
K branches of a state share it exactly when common random numbers are on).

At each noise level, single path trains for a while, its policy and critic are frozen, and each
scheme draws ``--repeats`` batches from them (:func:`gradient_variance.variance_by_scheme`). The
figure is the relative variance tr Cov(g) / |E g|^2 times the environment steps of a batch: the
variance per environment step, lower is better. The ratio vine / single path below 1 means vine's
gradient is the less noisy per step; CRN's share is the gap between the two vine curves.

    python benchmarks/vine_noise.py variance [--envs NoisyCartPole-v1 ...] [--repeats 20]
    python benchmarks/vine_noise.py levers [--envs ...]   # vine's levers at each env's default noise
    python benchmarks/vine_noise.py variance --vine-kwargs '{"horizon": 1}' --name horizon_1

Results: ``benchmarks/results/vine_noise/variance.json``, ``variance.md`` and ``variance.png``
(with ``--name``: ``variance_<name>.*``, both vine schemes with the given ``vine_kwargs``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gradient_variance import variance_by_scheme

import sb3_trpo_plus.noisy_envs  # noqa: F401  (registers the noisy ids)
from sb3_trpo_plus.settings import FORMER_VINE_DEFAULTS

OUT = Path(__file__).resolve().parent / "results" / "vine_noise"

#: env -> (shared TRPOPlus arguments, pre-training steps, noise levels)
SETTINGS: dict[str, tuple[dict[str, Any], int, list[float]]] = {
    "NoisyCartPole-v1": ({"n_steps": 512, "gae_lambda": 0.98}, 10_000, [0.0, 0.25, 0.5, 1.0]),
    "NoisyAcrobot-v1": ({"n_steps": 1024}, 20_000, [0.0, 0.5, 1.0]),
    "NoisyPendulum-v1": ({"n_steps": 1024, "gamma": 0.9}, 20_000, [0.0, 0.1, 0.3]),
}
#: vine as the committed variance.md measured it: the defaults of the time (FORMER_VINE_DEFAULTS)
SCHEMES: dict[str, dict[str, Any]] = {
    "single_path": {},
    "vine_crn": {"sampling": "vine", "vine_kwargs": FORMER_VINE_DEFAULTS},
    "vine_no_crn": {"sampling": "vine", "vine_kwargs": {**FORMER_VINE_DEFAULTS, "common_random_numbers": False}},
}


#: vine's levers (issue 26, item 4), each measured against single path and the defaults at the env's default noise
LEVERS: dict[str, dict[str, Any]] = {
    "single_path": {},
    "vine": {"sampling": "vine", "vine_kwargs": FORMER_VINE_DEFAULTS},
    "vine_horizon_3": {"sampling": "vine", "vine_kwargs": {**FORMER_VINE_DEFAULTS, "horizon": 3}},
    "vine_horizon_1": {"sampling": "vine", "vine_kwargs": {**FORMER_VINE_DEFAULTS, "horizon": 1}},
    "vine_share_0.5": {"sampling": "vine", "vine_kwargs": {**FORMER_VINE_DEFAULTS, "branch_share": 0.5}},
    "vine_horizon_1_share_0.5": {
        "sampling": "vine",
        "vine_kwargs": {**FORMER_VINE_DEFAULTS, "horizon": 1, "branch_share": 0.5},
    },
}


def run_levers(envs: list[str], repeats: int, seed: int) -> list[dict[str, Any]]:
    """Every (env, lever) measurement at the env's default noise level, appended to ``levers.json``."""
    from sb3_trpo_plus.noisy_envs import NOISY_ENVS

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "levers.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    done = {row["env"] for row in rows if row["repeats"] == repeats and row["seed"] == seed}
    for env_id in envs:
        if env_id in done:
            continue
        settings, pretrain, _ = SETTINGS[env_id]
        noise = NOISY_ENVS[env_id][2]
        results, cosine = variance_by_scheme(env_id, settings, LEVERS, pretrain, repeats, seed, {"noise": noise})
        for scheme, figures in results.items():
            rows.append(
                {"env": env_id, "noise": noise, "scheme": scheme, "repeats": repeats, "seed": seed, **figures}
                | {"cosine_with_single_path": cosine[scheme]}
            )
        path.write_text(json.dumps(rows, indent=1))
        print(f"{env_id}: " + ", ".join(f"{k} {v['relative_variance_x_steps']:.0f}" for k, v in results.items()), flush=True)
    return rows


def report_levers(rows: list[dict[str, Any]]) -> None:
    """``levers.md``: variance per step of each lever, relative to single path, and its mean's cosine with single path's."""
    lines = [
        "# Vine's levers under noisy dynamics: gradient variance per environment step",
        "",
        "Each env at its default noise level; relative variance tr Cov(g) / |E g|^2 times the environment steps of a",
        "batch (lower is better), at a fixed policy and critic; in brackets the ratio to single path's; cos: the",
        "cosine of the scheme's mean gradient with single path's (1: the same direction on average). Made by",
        "`python benchmarks/vine_noise.py levers`.",
        "",
        "| env | noise | " + " | ".join(LEVERS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in LEVERS) + " |",
    ]
    for env_id in [env for env in SETTINGS if any(row["env"] == env for row in rows)]:
        table = {row["scheme"]: row for row in rows if row["env"] == env_id}
        single = table["single_path"]["relative_variance_x_steps"]
        cells = [
            f"{table[s]['relative_variance_x_steps']:,.0f} ({table[s]['relative_variance_x_steps'] / single:.2f}; "
            f"cos {table[s]['cosine_with_single_path']:.2f}; {table[s]['env_steps_per_batch']:,.0f} steps)"
            for s in LEVERS
            if s in table
        ]
        lines.append(f"| {env_id} | {table['single_path']['noise']:g} | " + " | ".join(cells) + " |")
    (OUT / "levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def vine_schemes(vine_kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:data:`SCHEMES` with ``vine_kwargs`` merged into both vine schemes."""
    return {
        name: scheme if name == "single_path" else {**scheme, "vine_kwargs": {**scheme.get("vine_kwargs", {}), **vine_kwargs}}
        for name, scheme in SCHEMES.items()
    }


def run_variance(
    envs: list[str], repeats: int, seed: int, vine_kwargs: dict[str, Any] | None = None, name: str = ""
) -> list[dict[str, Any]]:
    """Every (env, noise level, scheme) measurement, appended to ``variance[_name].json`` as it comes."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"variance{'_' + name if name else ''}.json"
    schemes = vine_schemes(vine_kwargs or {})
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    done = {(row["env"], row["noise"]) for row in rows if row["repeats"] == repeats and row["seed"] == seed}
    for env_id in envs:
        settings, pretrain, levels = SETTINGS[env_id]
        for noise in levels:
            if (env_id, noise) in done:
                continue
            results, cosine = variance_by_scheme(env_id, settings, schemes, pretrain, repeats, seed, {"noise": noise})
            for scheme, figures in results.items():
                rows.append(
                    {"env": env_id, "noise": noise, "scheme": scheme, "repeats": repeats, "seed": seed, **figures}
                    | {"cosine_with_single_path": cosine[scheme]}
                )
            path.write_text(json.dumps(rows, indent=1))
            per_step = {scheme: figures["relative_variance_x_steps"] for scheme, figures in results.items()}
            print(f"{env_id} noise {noise}: " + ", ".join(f"{k} {v:.0f}" for k, v in per_step.items()), flush=True)
    return rows


def report(rows: list[dict[str, Any]], vine_kwargs: dict[str, Any] | None = None, name: str = "") -> None:
    """``variance[_name].md`` (the ratio table) and ``variance[_name].png`` (the ratio against the noise level)."""
    stem = f"variance{'_' + name if name else ''}"
    described = f"with vine_kwargs {json.dumps(vine_schemes(vine_kwargs or {})['vine_crn']['vine_kwargs'])}"
    command = "python benchmarks/vine_noise.py variance" + (
        f" --vine-kwargs '{json.dumps(vine_kwargs)}' --name {name}" if name else ""
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = {(row["env"], row["noise"], row["scheme"]): row for row in rows}
    envs = sorted({row["env"] for row in rows}, key=list(SETTINGS).index)
    lines = [
        "# Gradient variance per environment step under noisy dynamics",
        "",
        "Relative variance tr Cov(g) / |E g|^2 times the environment steps of a batch (lower is better), at a "
        f"fixed policy and critic; vine {described}, with and without common random numbers (CRN). "
        f"Made by `{command}`.",
        "",
        "cos: the cosine of the scheme's mean gradient with single path's (1: the same direction on average).",
        "",
        "| env | noise | single path | vine, CRN | vine, no CRN | vine CRN / single path | vine no CRN / single path "
        "| cos CRN | cos no CRN |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    figure, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for axis, env_id in zip(axes[0], envs, strict=True):
        levels = sorted({row["noise"] for row in rows if row["env"] == env_id})
        ratios: dict[str, list[float]] = {"vine_crn": [], "vine_no_crn": []}
        for noise in levels:
            single = table[(env_id, noise, "single_path")]["relative_variance_x_steps"]
            values = {s: table[(env_id, noise, s)]["relative_variance_x_steps"] for s in SCHEMES}
            for scheme in ratios:
                ratios[scheme].append(values[scheme] / single)
            lines.append(
                f"| {env_id} | {noise:g} | {values['single_path']:,.0f} | {values['vine_crn']:,.0f} | "
                f"{values['vine_no_crn']:,.0f} | {ratios['vine_crn'][-1]:.2f} | {ratios['vine_no_crn'][-1]:.2f} | "
                f"{table[(env_id, noise, 'vine_crn')]['cosine_with_single_path']:.2f} | "
                f"{table[(env_id, noise, 'vine_no_crn')]['cosine_with_single_path']:.2f} |"
            )
        axis.plot(levels, ratios["vine_crn"], "o-", label="vine, CRN")
        axis.plot(levels, ratios["vine_no_crn"], "s--", label="vine, no CRN")
        axis.axhline(1.0, color="grey", lw=0.8)
        axis.set_title(env_id)
        axis.set_xlabel("noise level")
        axis.set_ylabel("variance per step / single path's")
        axis.legend()
    figure.tight_layout()
    figure.savefig(OUT / f"{stem}.png", dpi=110)
    (OUT / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["variance", "report", "levers"])
    parser.add_argument("--envs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vine-kwargs", default="{}", help="JSON merged into both vine schemes' vine_kwargs (variance)")
    parser.add_argument("--name", default="", help="results go to variance_<name>.* (needed with --vine-kwargs)")
    args = parser.parse_args()
    vine_kwargs = json.loads(args.vine_kwargs)
    if vine_kwargs and not args.name:
        parser.error("--vine-kwargs needs --name (the results would mix with the defaults' variance.json)")
    th.set_num_threads(1)
    if args.command == "levers":
        report_levers(run_levers(args.envs, args.repeats, args.seed))
        return
    if args.command == "variance":
        rows = run_variance(args.envs, args.repeats, args.seed, vine_kwargs, args.name)
    else:
        rows = json.loads((OUT / f"variance{'_' + args.name if args.name else ''}.json").read_text())
    report(rows, vine_kwargs, args.name)


if __name__ == "__main__":
    main()
