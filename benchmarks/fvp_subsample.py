"""
Which share of the batch should the Fisher-vector products use? The measurement behind the
default of ``TRPOPlus(fvp_subsample=...)``.

    python benchmarks/fvp_subsample.py                       # direction quality and timing
    python benchmarks/fvp_subsample.py --skip-directions --learning-dir benchmarks/results/fvp_learning

Direction quality. TRPOPlus (zoo settings, ``fvp_subsample=1.0``) trains briefly on each env;
at ``--checkpoints`` policies along the run it collects a fresh batch and, on that one batch
and its one surrogate gradient g, computes the trust-region step with Fisher-vector products
on a random share f of the batch, for f in ``--fractions``, ``--draws`` random subsamples each
(the subsample is drawn as the step's ``fisher.fisher_product`` draws it). Conjugate gradient starts
from zero with the model's ``cg_max_steps`` and damping, so the only thing that changes with f
is the Fisher matrix. Against the full-batch (f = 1) step it reports:

- ``cos``: cosine similarity of the step direction s_f with s_1;
- ``len_ratio``: length of the maximal step beta_f s_f (beta_f = sqrt(2 delta / s_f^T F_f s_f),
  F_f the subsampled Fisher, as the algorithm computes it) over that of the full step;
- ``kl_quad``: the KL of the maximal step predicted with the *full-batch* Fisher,
  1/2 (beta_f s_f)^T F_1 (beta_f s_f) with F_1 undamped, over delta (just below 1 for f = 1,
  where beta uses the damped F_1 + cI; > 1 means the subsample under-estimates the curvature
  along the step, and the line search has to shrink it);
- what TRPOPlus's backtracking line search (``trust_region.backtracking_line_search``, the
  model's target_kl, shrinking factor and iteration count) then does with that step: accepted
  or not, the accepted fraction, the measured mean KL and the surrogate gain, and the gain
  over the full-batch step's gain (``gain_ratio``);
- time: ``direction_ms`` (Fisher product set-up + CG + maximal step) and ``policy_step_ms``
  (the whole ``TRPOPlus._policy_step`` on the batch, line search included, parameters restored
  afterwards), fractions alternated in a rotating order, medians.

Learning. Run ``benchmarks/learning.py`` with ``--configs trpo_plus:fvp_subsample=0.1
trpo_plus:fvp_subsample=1.0`` (the command is in benchmarks/README.md) and pass its output directory
with ``--learning-dir``: its final evaluations are tabulated here too.

Output: ``<out>/fvp_subsample_raw.csv`` and ``<out>/fvp_subsample.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import BLAS_THREADS  # noqa: I001  (first: sets the BLAS thread count before NumPy loads)

import argparse
import shlex
import math
import time
from typing import Any

import pandas as pd
import torch as th

from zoo_settings import algo_kwargs, make_env, settings

from sb3_trpo_plus import TRPOPlus
from sb3_trpo_plus.distributions import detached
from sb3_trpo_plus.fisher import fisher_product
from sb3_trpo_plus.surrogate import mean_kl
from sb3_trpo_plus.trust_region import (
    backtracking_line_search,
    conjugate_gradient,
    flat_grad,
    max_step_length,
    write_parameters,
)

PRETRAIN = {"Hopper-v5": 60_000, "Pendulum-v1": 40_000, "CartPole-v1": 20_000}


def collect_batch(model: TRPOPlus) -> Any:
    """A fresh rollout with the current policy, as ``learn`` collects it, and its surrogate."""
    # as learn() starts: keeps the env's current episodes (resets it only before the first learn)
    _, callback = model._setup_learn(model.n_steps * model.n_envs, None, reset_num_timesteps=False)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)  # type: ignore[arg-type]
    return model._surrogate(model._policy_batch())


def _fisher_product(model: TRPOPlus, obs: Any, distribution: Any) -> Any:
    """The step's Fisher-vector products at the model's current settings (``fvp_subsample`` included)."""
    settings = model._settings().step
    return fisher_product(model.policy, model._actor_params, obs, distribution, detached(distribution), settings)


def step_for(model: TRPOPlus, obs: Any, gradient: th.Tensor, fraction: float) -> dict[str, Any]:
    """
    The maximal trust-region step with Fisher products on a ``fraction`` subsample, at the
    current parameters (theta_old). SB3 policies reuse one distribution object between calls,
    so the distribution is rebuilt here (one forward pass on the batch, as ``_policy_step`` does).
    """
    model.fvp_subsample = fraction
    start = time.perf_counter()
    distribution = model.policy.get_distribution(obs)
    product = _fisher_product(model, obs, distribution)
    cg = conjugate_gradient(product, gradient, max_iter=model.cg_max_steps)
    beta = max_step_length(cg.solution, product(cg.solution), model.target_kl)
    elapsed = time.perf_counter() - start
    return {"direction": cg.solution.detach(), "step": (beta * cg.solution).detach(), "direction_ms": 1000 * elapsed}


def line_search(
    model: TRPOPlus, obs: Any, objective: Any, old: Any, theta_old: th.Tensor, step: th.Tensor
) -> dict[str, float]:
    params = model._actor_params
    with th.no_grad():
        baseline = float(objective(model.policy.get_distribution(obs)))

    def evaluate(fraction: float) -> tuple[float, float]:
        with th.no_grad():
            write_parameters(theta_old + fraction * step, params)
            new = model.policy.get_distribution(obs)
            return float(objective(new)), float(mean_kl(new, old))  # KL(pi_theta || pi_old), as TRPOPlus measures it

    result = backtracking_line_search(
        evaluate, baseline, model.target_kl, model.line_search_shrinking_factor, model.line_search_max_iter
    )
    with th.no_grad():
        write_parameters(theta_old, params)
    return {
        "accepted": float(result.success),
        "step_fraction": result.step_fraction,
        "kl": result.kl,
        "gain": result.objective - baseline if result.success else 0.0,
    }


def time_policy_step(model: TRPOPlus, surrogate: Any, theta_old: th.Tensor, fraction: float) -> float:
    model.fvp_subsample = fraction
    start = time.perf_counter()
    model._policy_step(surrogate)
    elapsed = time.perf_counter() - start
    with th.no_grad():
        write_parameters(theta_old, model._actor_params)
    return 1000 * elapsed


def measure_checkpoint(model: TRPOPlus, fractions: list[float], draws: int, seed: int) -> list[dict[str, Any]]:
    surrogate = collect_batch(model)
    obs = surrogate.observations
    params = model._actor_params
    theta_old = th.nn.utils.parameters_to_vector(params).detach().clone()
    distribution = model.policy.get_distribution(obs)
    old = detached(distribution)
    gradient = flat_grad(surrogate.objective(distribution), params).detach()

    full = step_for(model, obs, gradient, 1.0)
    full_search = line_search(model, obs, surrogate.objective, old, theta_old, full["step"])

    def fisher_quadratic(v: th.Tensor) -> float:  # v^T F_1 v, undamped, at theta_old
        # built anew each time: a line search writes the parameters in place, which invalidates
        # the graph an earlier product kept
        model.fvp_subsample = 1.0
        product = _fisher_product(model, obs, model.policy.get_distribution(obs))
        return float(v @ (product(v) - model.cg_damping * v))

    rows = []
    for draw in range(draws):
        order = fractions[draw % len(fractions) :] + fractions[: draw % len(fractions)]
        for fraction in order:
            if fraction == 1.0 and draw > 0:
                result, search = full, full_search  # deterministic: one draw is enough for f = 1
                direction_ms = step_for(model, obs, gradient, 1.0)["direction_ms"]
            else:
                th.manual_seed(seed * 100_003 + draw * 101 + int(fraction * 1000))
                result = step_for(model, obs, gradient, fraction)
                search = line_search(model, obs, surrogate.objective, old, theta_old, result["step"])
                direction_ms = result["direction_ms"]
            s, s1 = result["direction"], full["direction"]
            rows.append(
                {
                    "fraction": fraction,
                    "draw": draw,
                    "cos": float(s @ s1 / (s.norm() * s1.norm())),
                    "len_ratio": float(result["step"].norm() / full["step"].norm()),
                    "kl_quad": 0.5 * fisher_quadratic(result["step"]) / model.target_kl,
                    **search,
                    "gain_ratio": search["gain"] / full_search["gain"] if full_search["gain"] > 0 else math.nan,
                    "direction_ms": direction_ms,
                    "policy_step_ms": time_policy_step(model, surrogate, theta_old, fraction),
                    "batch": len(obs),
                }
            )
    model.fvp_subsample = 1.0
    return rows


def measure_env(env_id: str, fractions: list[float], draws: int, checkpoints: int, seed: int) -> list[dict[str, Any]]:
    model = TRPOPlus(
        settings(env_id)["policy"], make_env(env_id, seed), seed=seed, device="cpu", fvp_subsample=1.0, **algo_kwargs(env_id)
    )
    rows = []
    chunk = PRETRAIN[env_id] // max(1, checkpoints - 1)
    for checkpoint in range(checkpoints):
        if checkpoint > 0:
            model.learn(chunk, reset_num_timesteps=False)
        for row in measure_checkpoint(model, fractions, draws, seed + checkpoint):
            rows.append({"env": env_id, "checkpoint": checkpoint, "timesteps": model.num_timesteps, **row})
        print(f"{env_id} checkpoint {checkpoint} at {model.num_timesteps} steps measured", flush=True)
    model.env.close()
    return rows


def summary_table(raw: pd.DataFrame) -> str:
    lines = [
        "| env | f | batch share (states) | cos(s_f, s_1) median [min] | step length / full | predicted KL / delta "
        "| line search accepted | gain / full gain (median) | direction ms | policy step ms | policy step / f=1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for env_id, part in raw.groupby("env", sort=False):
        base_ms = part[part.fraction == 1.0].policy_step_ms.median()
        for fraction, rows in part.groupby("fraction"):
            states = math.ceil(fraction * rows.batch.iloc[0])
            lines.append(
                f"| {env_id} | {fraction:g} | {states} | {rows.cos.median():.3f} [{rows.cos.min():.3f}] "
                f"| {rows.len_ratio.median():.2f} | {rows.kl_quad.median():.2f} (max {rows.kl_quad.max():.2f}) "
                f"| {rows.accepted.mean():.0%} | {rows.gain_ratio.median():.2f} | {rows.direction_ms.median():.1f} "
                f"| {rows.policy_step_ms.median():.1f} | {rows.policy_step_ms.median() / base_ms:.2f} |"
            )
    return "\n".join(lines)


def criterion(raw: pd.DataFrame, min_cos: float, min_gain: float) -> str:
    """
    The smallest fraction that, on every env, keeps the median cosine with the full-batch
    direction >= ``min_cos``, the median surrogate gain after the line search >= ``min_gain``
    of the full-batch step's, and the line-search acceptance rate no lower than f = 1's.
    """
    passing = []
    for fraction in sorted(raw.fraction.unique()):
        ok = True
        for _, part in raw.groupby("env"):
            rows, full = part[part.fraction == fraction], part[part.fraction == 1.0]
            ok &= bool(rows.cos.median() >= min_cos and rows.gain_ratio.median() >= min_gain)
            ok &= bool(rows.accepted.mean() >= full.accepted.mean())
        if ok:
            passing.append(fraction)
    speed = {
        f: float(
            raw[raw.fraction == f].groupby("env").policy_step_ms.median().div(
                raw[raw.fraction == 1.0].groupby("env").policy_step_ms.median()
            ).median()
        )
        for f in passing
    }
    if not passing:
        return f"No fraction meets the criterion (median cos >= {min_cos}, median gain ratio >= {min_gain}, acceptance)."
    best = passing[0]
    return (
        f"Criterion: the smallest f with, on every env, median cos(s_f, s_1) >= {min_cos}, median gain after the line "
        f"search >= {min_gain:.0%} of the full-batch step's, and line-search acceptance no lower than f = 1. "
        f"Fractions meeting it: {', '.join(f'{f:g}' for f in passing)}; smallest: **{best:g}** "
        f"(policy step time {speed[best]:.2f}x that of f = 1, median over envs)."
    )


def learning_table(directory: Path) -> str:
    finals = pd.read_csv(directory / "final_eval.csv")
    lines = [
        "| env | config | steps | seeds | final return mean +- std over seeds | per seed | train s (median) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for (env_id, config), part in finals.groupby(["env", "config"], sort=False):
        lines.append(
            f"| {env_id} | {config} | {int(part.timesteps.median()):,} | {len(part)} "
            f"| {part.eval_mean.mean():.1f} +- {part.eval_mean.std(ddof=0):.1f} "
            f"| {', '.join(f'{v:.0f}' for v in part.eval_mean)} | {part.train_seconds.median():.0f} |"
        )
    md = directory / "learning.md"
    commands = [line.strip() for line in md.read_text().splitlines() if line.startswith("    python")] if md.exists() else []
    return "\n".join(["Made by:", "", *[f"    {c}" for c in commands], "", *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(PRETRAIN), choices=sorted(PRETRAIN))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.5, 1.0])
    parser.add_argument("--draws", type=int, default=5, help="random subsamples per fraction and checkpoint")
    parser.add_argument("--checkpoints", type=int, default=3, help="policies measured along the pre-training run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-dir", nargs="*", default=[], help="output directories of learning.py runs to tabulate")
    parser.add_argument("--min-cos", type=float, default=0.95, help="criterion: median cosine with the full step")
    parser.add_argument("--min-gain", type=float, default=0.9, help="criterion: median gain ratio after line search")
    parser.add_argument("--notes", default=None, help="a markdown file appended to the report (the written conclusion)")
    parser.add_argument("--skip-directions", action="store_true", help="only rebuild the report from the raw CSV")
    parser.add_argument("--blas-threads", default="1", help="BLAS threads (read before NumPy loads)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    th.set_num_threads(1)
    fractions = sorted(set(args.fractions) | {1.0})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw_path = out / "fvp_subsample_raw.csv"
    command_path = out / "fvp_subsample_raw.cmd"
    command = "python " + shlex.join(sys.argv)
    if args.skip_directions:
        raw = pd.read_csv(raw_path)
        made_by = command_path.read_text().strip() if command_path.exists() else "an earlier run of this script"
    else:
        made_by = command
        command_path.write_text(command + "\n")
        rows = []
        for env_id in args.envs:
            rows += measure_env(env_id, fractions, args.draws, args.checkpoints, args.seed)
        raw = pd.DataFrame(rows)
        raw.to_csv(raw_path, index=False)
    text = [
        "# fvp_subsample: how much of the batch the Fisher-vector products need",
        "",
        f"Command: `{command}` (torch 1 thread, BLAS threads {BLAS_THREADS}); "
        f"step-direction measurements made by `{made_by}`.",
        "",
        "## Step direction against the full-batch Fisher",
        "",
        f"Checkpoints per env: {sorted(raw.checkpoint.unique().tolist())} at timesteps "
        + "; ".join(f"{e}: {sorted(p.timesteps.unique().tolist())}" for e, p in raw.groupby("env", sort=False))
        + f". Draws per fraction and checkpoint: {int(raw.draw.max()) + 1}. Medians over checkpoints and draws.",
        "",
        summary_table(raw),
        "",
        criterion(raw, args.min_cos, args.min_gain),
        "",
    ]
    directories = [Path(d) for d in args.learning_dir if (Path(d) / "final_eval.csv").exists()]
    if directories:
        text += ["## Short learning runs", ""]
        for directory in directories:
            text += [f"From `{directory}`:", "", learning_table(directory), ""]
    if args.notes:
        text += [Path(args.notes).read_text()]
    (out / "fvp_subsample.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
