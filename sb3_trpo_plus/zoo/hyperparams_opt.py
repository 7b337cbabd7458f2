"""
Optuna search space of ``trpo_plus`` for rl_zoo3's ``-optimize``.

rl_zoo3 stores the *raw* suggestions of a trial (powers of two, ``one_minus_gamma``, network
names) in the study and converts them to constructor arguments with a converter, so that
``--trial-id`` can rebuild a trial's hyperparameters from the storage:
:func:`sample_trpo_plus_params` suggests, :func:`convert_trpo_plus_params` converts.

Bounds are chosen so that every trial runs at a sane speed: rollouts of at least 256 steps per
environment, critic minibatches of at least 64 samples (never more than one rollout), at most
30 conjugate-gradient iterations and 25 critic epochs.
"""

from __future__ import annotations

from typing import Any

import optuna
from torch import nn

NET_ARCHS: dict[str, dict[str, list[int]]] = {
    "small": {"pi": [64, 64], "vf": [64, 64]},
    "medium": {"pi": [256, 256], "vf": [256, 256]},
}
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
FISHER_MODES = ("analytic", "kl_hessian")
FVP_SUBSAMPLES = (0.1, 0.25, 0.5, 1.0)
LINE_SEARCH_SHRINKING_FACTORS = (0.5, 0.7, 0.8, 0.9)
VINE_HORIZONS = (10, 25, 50, 100)
VINE_BRANCH_SHARES = (0.1, 0.2, 0.3, 0.5)
VINE_QS = ("policy", "mixture")
# Vine mode only works on environments whose state can be saved and restored, so it is searched
# only on request (``trpo-plus-zoo train -optimize --search-vine``), for the trials that carry
# this user attribute (set by the experiment manager).
SEARCH_VINE_ATTR = "search_vine"


def convert_trpo_plus_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Turn the raw parameters of a trial (as stored by Optuna) into ``TRPOPlus`` arguments.

    :param sampled_params: the trial's parameters, as suggested by :func:`sample_trpo_plus_params`
    :return: keyword arguments for ``TRPOPlus`` (``policy_kwargs`` holds the network)
    """
    params = dict(sampled_params)
    hyperparams: dict[str, Any] = {}
    n_steps = 2 ** params.pop("n_steps_pow")
    hyperparams["n_steps"] = n_steps
    # The critic's minibatch never exceeds one rollout (a power of two no larger than n_steps
    # divides n_steps * n_envs, so no minibatch is truncated).
    hyperparams["batch_size"] = min(2 ** params.pop("batch_size_pow"), n_steps)
    hyperparams["gamma"] = 1.0 - params.pop("one_minus_gamma")
    hyperparams["gae_lambda"] = 1.0 - params.pop("one_minus_gae_lambda")
    if params.pop("sampling", "single_path") == "vine":
        hyperparams["sampling"] = "vine"
        hyperparams["vine_kwargs"] = {
            # the rollout set is sized from the share ("auto"): branches never crowd out the trunk
            "branch_share": params.pop("vine_branch_share"),
            "n_actions": params.pop("vine_n_actions"),
            "horizon": params.pop("vine_horizon"),
            "state_selection": params.pop("vine_state_selection"),
        }
        if hyperparams["vine_kwargs"]["state_selection"] == "geometric":  # refused with the combined estimator
            hyperparams["vine_kwargs"]["estimator"] = "vine"
        hyperparams["q"] = params.pop("q")
    hyperparams["policy_kwargs"] = {
        "net_arch": NET_ARCHS[params.pop("net_arch")],
        "activation_fn": ACTIVATIONS[params.pop("activation_fn")],
    }
    # Everything else (learning_rate, target_kl, cg_*, n_critic_updates, fisher, ...) is
    # already a constructor argument.
    hyperparams.update(params)
    return hyperparams


def sample_trpo_plus_params(
    trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict[str, Any]
) -> dict[str, Any]:
    """
    Sample ``TRPOPlus`` hyperparameters (rl_zoo3's sampler signature).

    :param trial: the Optuna trial; its user attribute ``search_vine`` (:data:`SEARCH_VINE_ATTR`) adds
        vine sampling to the search space
    :param n_actions: size of the action space (unused: TRPO has no action noise)
    :param n_envs: number of parallel environments of the trial
    :param additional_args: rl_zoo3's extra arguments (unused)
    :return: keyword arguments for ``TRPOPlus``
    """
    sampled = {
        # 256 to 2048 steps per environment and rollout
        "n_steps_pow": trial.suggest_int("n_steps_pow", 8, 11),
        # critic minibatches of 64 to 1024 samples
        "batch_size_pow": trial.suggest_int("batch_size_pow", 6, 10),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 1e-4, 0.1, log=True),
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 1e-3, 0.2, log=True),
        # learning rate of the critic (the policy step is set by target_kl)
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "n_critic_updates": trial.suggest_int("n_critic_updates", 5, 25),
        "target_kl": trial.suggest_float("target_kl", 1e-3, 0.1, log=True),
        "cg_max_steps": trial.suggest_int("cg_max_steps", 5, 30),
        "cg_damping": trial.suggest_float("cg_damping", 1e-3, 0.3, log=True),
        "line_search_shrinking_factor": trial.suggest_categorical(
            "line_search_shrinking_factor", list(LINE_SEARCH_SHRINKING_FACTORS)
        ),
        "fisher": trial.suggest_categorical("fisher", list(FISHER_MODES)),
        "fvp_subsample": trial.suggest_categorical("fvp_subsample", list(FVP_SUBSAMPLES)),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        "activation_fn": trial.suggest_categorical("activation_fn", list(ACTIVATIONS)),
    }
    search_vine = bool(getattr(trial, "user_attrs", {}).get(SEARCH_VINE_ATTR, False))
    if search_vine and trial.suggest_categorical("sampling", ["single_path", "vine"]) == "vine":
        sampled.update(
            {
                "sampling": "vine",
                # the share of each iteration's env steps the branches take (it sizes the rollout
                # set), and 2 to 8 branches per state where they are drawn from q
                "vine_branch_share": trial.suggest_categorical("vine_branch_share", list(VINE_BRANCH_SHARES)),
                "vine_n_actions": trial.suggest_int("vine_n_actions", 2, 8),
                "vine_horizon": trial.suggest_categorical("vine_horizon", list(VINE_HORIZONS)),
                "vine_state_selection": trial.suggest_categorical("vine_state_selection", ["uniform", "geometric"]),
                "q": trial.suggest_categorical("q", list(VINE_QS)),
            }
        )
    hyperparams = convert_trpo_plus_params(sampled)
    # Shown next to the raw values in rl_zoo3's report and in the study's dashboard.
    for key in ("n_steps", "batch_size", "gamma", "gae_lambda"):
        trial.set_user_attr(key, hyperparams[key])
    return hyperparams
