"""
Tuning that one lucky seed cannot fool: every ``-optimize`` trial trains K seeds and reports their
aggregate (rl_zoo3 issue #204; rl_zoo3's ``hyperparameters_optimization`` carries a TODO for it).

``trpo-plus-zoo train -optimize --trial-seeds K [--trial-aggregate mean|median]`` replaces rl_zoo3's
trial (one unseeded run, evaluated every ``n_timesteps / n_evaluations`` steps) by K runs of the same
sampled hyperparameters, seeded ``K * trial.number + k`` (k = 0..K-1, so two trials never share a seed
and a trial's seeds do not depend on the worker that runs it), trained *in lockstep*: each run learns
up to the next evaluation point, is evaluated (``--eval-episodes`` episodes on its own evaluation env,
VecNormalize statistics synced, deterministic as in rl_zoo3), and once all K are evaluated their
aggregate is reported to the trial (``trial.report(aggregate, evaluation index)``), so the pruner
sees the running aggregate, never a single seed. The trial's value is the aggregate at the last
evaluation. Per trial, user attributes record ``trial_seeds``, ``trial_aggregate`` (mean or median),
``seed_rewards`` (one list per evaluation: the K per-seed mean rewards), ``seed_timesteps`` (the
runs' timesteps at each evaluation) and ``aggregate_rewards`` (the reported values).

Evaluation points are rollout boundaries: a run learns until it has at least ``(i + 1) / n_evaluations``
of the budget (``model.learn`` in pieces, ``reset_num_timesteps=False``; learning-rate schedules
still see the progress of the whole budget). Works for every algorithm of rl_zoo3 and every storage,
since only the objective changes.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER
from rl_zoo3.utils import ALGOS, get_callback_list
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import sync_envs_normalization

if TYPE_CHECKING:
    from rl_zoo3.exp_manager import ExperimentManager

AGGREGATES = ("mean", "median")


@dataclass(frozen=True)
class TrialSeeds:
    """
    How a tuning trial is evaluated on several seeds.

    :param n_seeds: K, the number of seeds (runs) per trial
    :param aggregate: "mean" or "median" of the K per-seed evaluation rewards
    """

    n_seeds: int
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise ValueError(f"--trial-seeds must be >= 1, got {self.n_seeds}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"--trial-aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")

    def seeds(self, trial_number: int) -> list[int]:
        """:return: the seeds of trial ``trial_number`` (disjoint between trials)"""
        return [self.n_seeds * trial_number + k for k in range(self.n_seeds)]

    def combine(self, values: list[float]) -> float:
        """:return: the aggregate of the per-seed values"""
        return float(statistics.fmean(values) if self.aggregate == "mean" else statistics.median(values))


def _pin_progress(model: Any, n_timesteps: int) -> None:
    """Schedules see the progress of the whole budget, although ``learn`` is called in pieces."""
    update = type(model)._update_current_progress_remaining

    def update_over_whole_budget(num_timesteps: int, _total_timesteps: int) -> None:
        update(model, num_timesteps, n_timesteps)

    model._update_current_progress_remaining = update_over_whole_budget


def multi_seed_objective(manager: ExperimentManager, trial: optuna.Trial, settings: TrialSeeds) -> float:
    """
    One tuning trial on ``settings.n_seeds`` seeds (see the module docstring).

    :param manager: rl_zoo3's experiment manager (its tuning settings: budget, evaluations, envs)
    :param trial: the Optuna trial
    :param settings: number of seeds and aggregate
    :return: the aggregate of the per-seed rewards at the last evaluation
    :raises optuna.TrialPruned: when the pruner stops the trial on the running aggregate, or a run
        fails with NaNs (as rl_zoo3 does)
    """
    kwargs = manager._hyperparams.copy()
    n_envs = 1 if manager.algo == "ars" else manager.n_envs
    additional_args = {
        "using_her_replay_buffer": kwargs.get("replay_buffer_class") == HerReplayBuffer,
        "her_kwargs": kwargs.get("replay_buffer_kwargs", {}),
    }
    sampled = HYPERPARAMS_SAMPLER[manager.algo](trial, manager.n_actions, n_envs, additional_args)
    kwargs.update(sampled)
    seeds = settings.seeds(trial.number)
    trial.set_user_attr("trial_seeds", seeds)
    trial.set_user_attr("trial_aggregate", settings.aggregate)
    verbose = manager.verbose if manager.verbose >= 2 else 0

    runs: list[tuple[Any, Any, Any]] = []
    seed_rewards: list[list[float]] = []
    seed_timesteps: list[list[int]] = []
    aggregates: list[float] = []
    opened: list[Any] = []  # every env created, closed at the end whatever happens
    try:
        for seed in seeds:
            env = manager.create_envs(n_envs, no_log=True)
            opened.append(env)
            eval_env = manager.create_envs(n_envs=manager.n_eval_envs, eval_env=True)
            opened.append(eval_env)
            # the model seeds its training env (and the global generators); the evaluation env is
            # seeded here (the manager itself is shared by rl_zoo3's --n-jobs threads: left alone)
            eval_env.seed(seed)
            model = ALGOS[manager.algo](
                env=env, tensorboard_log=None, seed=seed, verbose=verbose, device=manager.device, **kwargs
            )
            _pin_progress(model, manager.n_timesteps)
            runs.append((model, eval_env, get_callback_list({"callback": manager.specified_callbacks})))
        for index in range(manager.n_evaluations):
            target = (index + 1) * manager.n_timesteps // manager.n_evaluations
            rewards, timesteps = [], []
            for model, eval_env, callbacks in runs:
                if model.num_timesteps < target:
                    model.learn(target - model.num_timesteps, callback=callbacks, reset_num_timesteps=index == 0)
                sync_envs_normalization(model.get_env(), eval_env)
                mean_reward, _ = evaluate_policy(
                    model, eval_env, n_eval_episodes=manager.n_eval_episodes, deterministic=manager.deterministic_eval
                )
                rewards.append(float(mean_reward))  # type: ignore[arg-type]
                timesteps.append(int(model.num_timesteps))
            seed_rewards.append(rewards)
            seed_timesteps.append(timesteps)
            aggregates.append(settings.combine(rewards))
            trial.set_user_attr("seed_rewards", seed_rewards)
            trial.set_user_attr("seed_timesteps", seed_timesteps)
            trial.set_user_attr("aggregate_rewards", aggregates)
            trial.report(aggregates[-1], index)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at evaluation {index} on the {settings.aggregate} {aggregates[-1]:.3f}")
    except (AssertionError, ValueError) as error:
        # as rl_zoo3: hyperparameters that produce NaNs are pruned
        print(f"{error}\n============\nSampled hyperparams: {sampled}")
        raise optuna.TrialPruned() from error
    finally:
        for vec_env in opened:
            vec_env.close()
        _save_evaluations(manager, trial, seeds, seed_rewards, seed_timesteps)
    return aggregates[-1]


def _save_evaluations(
    manager: ExperimentManager,
    trial: optuna.Trial,
    seeds: list[int],
    seed_rewards: list[list[float]],
    seed_timesteps: list[list[int]],
) -> None:
    """With ``--optimization-log-path``: ``trial_<n>/evaluations_seeds.npz`` (per evaluation x seed)."""
    if manager.optimization_log_path is None or not seed_rewards:
        return
    path = os.path.join(manager.optimization_log_path, f"trial_{trial.number}")
    os.makedirs(path, exist_ok=True)
    np.savez(
        os.path.join(path, "evaluations_seeds.npz"),
        seeds=np.array(seeds),
        timesteps=np.array(seed_timesteps),
        results=np.array(seed_rewards),
    )
