"""
Every settings object of :class:`~sb3_trpo_plus.TRPOPlus`, under one rule: a typed, frozen
dataclass, validated when it is built, built once from the plain constructor arguments.

Users pass plain arguments (``sampling``, ``q``, ``q_kwargs``, ``vine_kwargs``, ``target_kl``...)
and those are what is saved with a model; :meth:`Settings.from_arguments` turns them into
:class:`SamplingSettings` (q and :class:`VineSettings`), :class:`SurrogateSettings` and
:class:`StepSettings` at construction, and again only when those arguments change (a loaded
model, an attribute the user set). The choices among fixed names are :class:`enum.StrEnum`
members (they compare equal to the plain strings users pass).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

from sb3_trpo_plus.branch_pool import branch_pool_class, branch_pool_names
from sb3_trpo_plus.distributions import enumerate_actions
from sb3_trpo_plus.q import Q_REGISTRY, CallableQ, PolicyQ, Q, is_number

#: The largest finite action space ``all_actions="auto"`` branches in full (CartPole 2,
#: Acrobot 3, LunarLander 4, MultiBinary(4) 16); larger spaces get K actions from q.
AUTO_ALL_ACTIONS_MAX = 16

#: ``horizon="auto"``: one step when every action of a small finite space is branched (the exact sum
#: over actions of r + gamma V(s'), the least noisy per step on the noisy family,
#: benchmarks/results/vine_noise/), otherwise this many steps (sampled actions: one step was biased there)
AUTO_HORIZON_ALL_ACTIONS = 1
AUTO_HORIZON_SAMPLED = 10

#: ``branch_share="auto"``: the share of an iteration's steps the branches may take, this much when every
#: action of a small finite space is branched (NoisyAcrobot and Acrobot-v1 learn faster with it), this much
#: when the actions are sampled (on NoisyHopper a fixed 5% share was level with single path where 20% with
#: the adaptive share lost; benchmarks/results/vine_noise/learning/)
AUTO_SHARE_ALL_ACTIONS = 0.2
AUTO_SHARE_SAMPLED = 0.05

#: The vine defaults before ``budget="auto"``, ``horizon="auto"``, ``combined_weight="auto"`` and
#: ``branch_share="auto"``: 10-step branches on top of ``n_steps``, the combined estimator weighed by
#: inverse variances, a fixed branch share of 20%. Results measured with them (the committed runs of
#: benchmarks/results/vine/, paper_ablation/, learning/) are reproduced with these.
FORMER_VINE_DEFAULTS: dict[str, Any] = {
    "horizon": 10,
    "budget": "added",
    "combined_weight": "inverse_variance",
    "adapt_share": False,
    "branch_share": 0.2,
}

#: The paper's procedure (section 5.2), for reproducing its results: the trust region, the
#: Fisher matrix and the objective on the rollout set alone, the vine estimator alone, the critic
#: fitted on trunk returns only, and the sizes given explicitly (the paper's N, K, H).
PAPER_VINE_KWARGS: dict[str, Any] = {
    "trust_region_states": "rollout_set",
    "estimator": "vine",
    "critic_targets": "trunk",
    "refit_critic_first": False,
}


def _is_count(value: Any, low: int) -> bool:
    """Whether ``value`` is an integer (not a bool) >= ``low``."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and bool(value >= low)


@dataclass(frozen=True)
class VineSettings:
    """
    Settings of the vine scheme (Schulman et al. 2015, section 5.2), one field per
    ``vine_kwargs`` key.

    :param n_states: N, the size of the rollout set: an integer >= 1, a fraction in (0, 1] of the
        trunk's states, or "auto": as many states as keep the branches within ``branch_share``
        of the iteration's environment steps (N = share / (1 - share) * T / (K * H), at least 2)
    :param n_actions: K, the number of actions (branches) per rollout-set state, >= 2 (when the
        actions are sampled from q)
    :param horizon: H, the maximum length of a branch, >= 1 (a branch cut at H is completed with
        gamma^H V(s_H)), or "auto": :data:`AUTO_HORIZON_ALL_ACTIONS` when every action is branched,
        :data:`AUTO_HORIZON_SAMPLED` when the actions are sampled
    :param all_actions: branch every action of a finite action space (exact-sum estimator) instead
        of K actions from q; "auto": every action when the space has at most
        :data:`AUTO_ALL_ACTIONS_MAX` of them and q is the default "policy"
    :param branch_share: with ``n_states="auto"``, the largest share of an iteration's
        environment steps that branches may take, in (0, 1), or "auto":
        :data:`AUTO_SHARE_ALL_ACTIONS` when every action is branched, :data:`AUTO_SHARE_SAMPLED` when
        the actions are sampled
    :param budget: what ``n_steps`` counts: "added" (the trunk: ``n_steps`` steps per environment,
        the branches' steps come on top), "shared" (the whole iteration: the trunk is shortened to
        ``floor(n_steps * (1 - branch_share))`` steps per environment so that trunk and branches
        together take at most ``n_steps * n_envs`` steps, and vine makes as many updates as single
        path for the same total steps; only with ``n_states="auto"``) or "auto": "shared" with
        ``n_states="auto"``, "added" when the rollout set's size is given
    :param adapt_share: with the budget shared and ``estimator="combined"``, let each iteration's
        branch share follow what a branch step bought in the previous one
        (:func:`~sb3_trpo_plus.surrogate.adaptive_branch_share`: ``branch_share`` where a branch
        step carries at least a trunk step's gradient information, down to a quarter of it in
        proportion where it carries less); False (the default): ``branch_share`` every iteration
        (measured: the moving share cost seeds on NoisyCartPole and lost to a fixed 5% share on
        NoisyHopper, benchmarks/results/vine_noise/learning/)
    :param common_random_numbers: the K branches of a state share the environment's and the
        policy's noise
    :param state_selection: "uniform" (N distinct trunk states) or "geometric" (N draws from
        the trunk's discounted state distribution; only with ``estimator="vine"``: the trunk
        samples the undiscounted distribution, so the combined estimator would mix two gradients)
    :param branch_vec_env: the branch pool: "dummy" (branches in-process), "subproc" (branches in
        worker processes) or any name registered with
        :func:`~sb3_trpo_plus.branch_pool.register_branch_pool`
    :param n_branch_workers: with "subproc" (a pool that takes workers), the number of worker
        processes the K branch environments are spread over (None: one per branch)
    :param make_branch_env: builds one branch environment (None: copies of trunk environment 0)
    :param trust_region_states: the states of the KL constraint, the Fisher matrix and the line
        search's KL: "trunk" (every trunk state, as single path) or "rollout_set" (the paper's)
    :param estimator: the policy-gradient estimate the step follows: "combined" (the trunk's
        single-path estimator and the rollout set's vine estimator, weighted by the inverse of
        their measured variances) or "vine" (the rollout set's alone, the paper's)
    :param combined_weight: with ``estimator="combined"``, how the vine part's weight w is chosen:
        "inverse_variance" (w = var_trunk / (var_trunk + B_vine), both estimates taken as unbiased)
        or "min_mse" (w = var_trunk / (var_trunk + B_vine + b^2), b^2 the vine part's squared bias
        against the trunk's estimate, measured on the batch: a vine gradient that disagrees with
        the trunk's by more than their noise explains is weighed down); "auto": "min_mse" with
        ``estimator="combined"`` (the value is not used by ``estimator="vine"``)
    :param critic_targets: what the value function is regressed on: "trunk_and_branches" (the
        trunk's returns and the branches' Monte Carlo returns of every state they visit) or
        "trunk" (the paper's)
    :param refit_critic_first: fit the critic before the policy step and complete the branches'
        Q-values with the refitted critic (False: the critic of the previous iteration)
    :param fidelity_probe: how often the run-time fidelity probe checks that a branch copy
        restored to a trunk state reproduces the trunk's next step: at the first iteration and then
        every that many iterations (an integer >= 0; 0: never)
    :param fidelity_probe_action: what a probe that finds a difference does: "raise" a
        :class:`~sb3_trpo_plus.env_state.BranchFidelityError`, or "warn" (a warning; training goes on)
    :raises ValueError: naming the ``vine_kwargs`` entry and what is allowed
    """

    n_states: int | float | str = "auto"
    n_actions: int = 4
    horizon: int | str = "auto"
    all_actions: bool | str = "auto"
    branch_share: float | str = "auto"
    budget: str = "auto"
    adapt_share: bool = False
    common_random_numbers: bool = True
    state_selection: str = "uniform"
    branch_vec_env: str = "dummy"
    n_branch_workers: int | None = None
    make_branch_env: Callable[[], gym.Env] | None = None
    trust_region_states: str = "trunk"
    estimator: str = "combined"
    combined_weight: str = "auto"
    critic_targets: str = "trunk_and_branches"
    refit_critic_first: bool = True
    fidelity_probe: int = 10
    fidelity_probe_action: str = "raise"

    def __post_init__(self) -> None:
        n_states = self.n_states
        if isinstance(n_states, bool) or not (
            (isinstance(n_states, (int, np.integer)) and n_states >= 1)
            or (isinstance(n_states, float) and 0.0 < n_states <= 1.0)
            or n_states == "auto"
        ):
            raise ValueError(
                f"vine_kwargs['n_states'] must be an integer >= 1, a fraction in (0, 1] or 'auto', got {n_states!r}"
            )
        if not (self.horizon == "auto" or _is_count(self.horizon, 1)):
            raise ValueError(f"vine_kwargs['horizon'] must be an integer >= 1 or 'auto', got {self.horizon!r}")
        if not _is_count(self.n_actions, 2):
            raise ValueError(f"vine_kwargs['n_actions'] must be an integer >= 2, got {self.n_actions!r}")
        if not (isinstance(self.all_actions, bool) or self.all_actions == "auto"):
            raise ValueError(f"vine_kwargs['all_actions'] must be True, False or 'auto', got {self.all_actions!r}")
        share = self.branch_share
        if share != "auto" and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share < 1.0):
            raise ValueError(f"vine_kwargs['branch_share'] must be a number in (0, 1) or 'auto', got {share!r}")
        for key in ("common_random_numbers", "refit_critic_first", "adapt_share"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"vine_kwargs['{key}'] must be True or False, got {getattr(self, key)!r}")
        for key, allowed in (
            ("state_selection", ("uniform", "geometric")),
            ("branch_vec_env", tuple(branch_pool_names())),
            ("trust_region_states", ("trunk", "rollout_set")),
            ("estimator", ("combined", "vine")),
            ("combined_weight", ("auto", "inverse_variance", "min_mse")),
            ("critic_targets", ("trunk_and_branches", "trunk")),
            ("fidelity_probe_action", ("raise", "warn")),
            ("budget", ("auto", "added", "shared")),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"vine_kwargs['{key}'] must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if not _is_count(self.fidelity_probe, 0):
            raise ValueError(
                "vine_kwargs['fidelity_probe'] must be an integer >= 0 (probe at the first iteration and then every that "
                f"many iterations; 0: never), got {self.fidelity_probe!r}"
            )
        if self.budget == "shared" and self.n_states != "auto":
            raise ValueError(
                "vine_kwargs['budget']='shared' sizes the trunk from branch_share, which needs n_states='auto', but "
                f"n_states={self.n_states!r} was given: drop one of the two"
            )
        if self.adapt_share is True and not (self.shares_budget and self.estimator == "combined"):
            raise ValueError(
                "vine_kwargs['adapt_share']=True moves steps between the trunk and the branches of a shared budget "
                "by the combined estimator's variances: it needs budget 'shared' (or 'auto') with n_states='auto' "
                f"and estimator='combined', got budget={self.budget!r}, n_states={self.n_states!r}, "
                f"estimator={self.estimator!r}"
            )
        if self.combined_weight == "min_mse" and self.estimator != "combined":
            raise ValueError(
                f"vine_kwargs['combined_weight']={self.combined_weight!r} weighs the combined estimator, but "
                f"vine_kwargs['estimator']={self.estimator!r}: use estimator='combined' or drop combined_weight"
            )
        if self.state_selection == "geometric" and self.estimator == "combined":
            # the rollout set would sample the discounted state distribution, the trunk the
            # undiscounted one: the two estimate different gradients and their mix is biased
            raise ValueError(
                "vine_kwargs['state_selection']='geometric' cannot go with vine_kwargs['estimator']='combined' "
                "(the default): the geometric rollout set samples the discounted state distribution, the trunk "
                "the undiscounted one, so the two estimate different gradients; use estimator='vine' with "
                "geometric selection, or state_selection='uniform'"
            )
        workers = self.n_branch_workers
        if workers is not None and not _is_count(workers, 1):
            raise ValueError(f"vine_kwargs['n_branch_workers'] must be None or an integer >= 1, got {workers!r}")
        if workers is not None and not branch_pool_class(self.branch_vec_env).takes_workers:
            with_workers = [name for name in branch_pool_names() if branch_pool_class(name).takes_workers]
            raise ValueError(
                f"vine_kwargs['n_branch_workers'] needs a vine_kwargs['branch_vec_env'] with worker processes "
                f"(one of {with_workers}), got {self.branch_vec_env!r}"
            )
        if self.make_branch_env is not None and not callable(self.make_branch_env):
            raise ValueError("vine_kwargs['make_branch_env'] must be None or a callable returning a gymnasium.Env")
        # combined_weight "auto" needs no action space: decided now (the checks above saw what was given);
        # horizon and branch_share "auto" are decided with the action space (see resolved)
        if self.combined_weight == "auto":
            combined = self.estimator == "combined"
            object.__setattr__(self, "combined_weight", "min_mse" if combined else "inverse_variance")

    @classmethod
    def from_kwargs(cls, vine_kwargs: dict[str, Any] | None) -> VineSettings:
        """
        The settings of a ``vine_kwargs`` dict (missing keys take their defaults).

        :raises ValueError: for an unknown key or a bad value, naming the ``vine_kwargs`` entry
        """
        allowed = sorted(field.name for field in dataclasses.fields(cls))
        unknown = set(vine_kwargs or {}) - set(allowed)
        if unknown:
            raise ValueError(f"vine_kwargs has unknown keys {sorted(unknown)}; allowed: {allowed}")
        n_states = (vine_kwargs or {}).get("n_states", "auto")
        if "branch_share" in (vine_kwargs or {}) and n_states != "auto":
            raise ValueError(
                f"vine_kwargs['branch_share'] only sizes the rollout set when n_states='auto', but n_states={n_states!r} "
                "was given: drop one of the two"
            )
        return cls(**(vine_kwargs or {}))

    def resolved(self, action_space: spaces.Space, q_is_policy: bool = True) -> VineSettings:
        """
        These settings with ``all_actions="auto"`` decided for ``action_space`` (every action of a
        finite space of at most :data:`AUTO_ALL_ACTIONS_MAX` actions, when q is pi_old), and then
        ``horizon`` and ``branch_share`` where they are "auto", after the checks that need the space.

        :raises ValueError: naming ``vine_kwargs['all_actions']``
        """
        if self.all_actions == "auto":
            try:
                count = len(enumerate_actions(action_space, AUTO_ALL_ACTIONS_MAX))
            except ValueError:
                count = 0
            resolved = dataclasses.replace(self, all_actions=q_is_policy and count > 0)
        else:
            self.branch_actions(action_space)
            resolved = self
        return dataclasses.replace(resolved, horizon=resolved.branch_horizon, branch_share=resolved.max_share)

    @property
    def branch_horizon(self) -> int:
        """
        H as a number: ``horizon``, or with ``horizon="auto"`` :data:`AUTO_HORIZON_ALL_ACTIONS` when
        every action is branched and :data:`AUTO_HORIZON_SAMPLED` otherwise.

        :raises ValueError: with ``horizon="auto"`` and ``all_actions="auto"`` not yet decided for an
            action space (see :meth:`resolved`)
        """
        return int(self._by_branch_actions("horizon", AUTO_HORIZON_ALL_ACTIONS, AUTO_HORIZON_SAMPLED))

    @property
    def max_share(self) -> float:
        """
        The branches' largest share as a number: ``branch_share``, or with ``branch_share="auto"``
        :data:`AUTO_SHARE_ALL_ACTIONS` when every action is branched and :data:`AUTO_SHARE_SAMPLED` otherwise.

        :raises ValueError: with ``branch_share="auto"`` and ``all_actions="auto"`` not yet decided for an
            action space (see :meth:`resolved`)
        """
        return float(self._by_branch_actions("branch_share", AUTO_SHARE_ALL_ACTIONS, AUTO_SHARE_SAMPLED))

    def _by_branch_actions(self, key: str, all_actions: float, sampled: float) -> Any:
        """The field ``key``, or where it is "auto" ``all_actions`` or ``sampled`` by how the branch actions are chosen."""
        value = getattr(self, key)
        if value != "auto":
            return value
        if self.all_actions == "auto":
            raise ValueError(f"vine_kwargs['{key}']='auto' depends on all_actions='auto': resolve for an action space first")
        return all_actions if self.all_actions else sampled

    @property
    def shares_budget(self) -> bool:
        """Whether ``n_steps`` counts trunk and branches (``budget="shared"``, or "auto" with ``n_states="auto"``)."""
        return self.budget == "shared" or (self.budget == "auto" and self.n_states == "auto")

    def check_action_space(self, action_space: spaces.Space) -> None:
        """
        The checks that need the environment's action space (``all_actions`` needs a small finite one).

        :raises ValueError: naming ``vine_kwargs['all_actions']``
        """
        self.resolved(action_space)

    def branch_actions(self, action_space: spaces.Space) -> th.Tensor | None:
        """
        With ``all_actions``, every action of the space (see
        :func:`~sb3_trpo_plus.distributions.enumerate_actions`: counted and checked before
        anything is allocated, in the format SB3's ``Distribution.log_prob`` takes); None otherwise.

        :raises ValueError: naming ``vine_kwargs['all_actions']``, when the space is not finite or
            has more than :data:`~sb3_trpo_plus.distributions.MAX_ENUMERATED_ACTIONS` actions
        """
        if self.all_actions == "auto":
            return self.resolved(action_space).branch_actions(action_space)
        if not self.all_actions:
            return None
        try:
            return enumerate_actions(action_space)
        except ValueError as error:
            raise ValueError(f"vine_kwargs['all_actions']=True: {error}") from None

    def trunk_steps(self, n_steps: int, share: float | None = None) -> int:
        """
        The trunk's steps per environment in an iteration of ``n_steps`` steps per environment:
        ``n_steps`` with ``budget="added"``; with ``budget="shared"`` (see :attr:`shares_budget`), ``n_steps`` less the
        branches' share, ``floor(n_steps * (1 - share))`` (at least 1).

        :param share: this iteration's branch share (default ``branch_share``; see ``adapt_share``)
        """
        if not self.shares_budget:
            return n_steps
        return max(1, math.floor(n_steps * (1.0 - (self.max_share if share is None else share))))

    def rollout_set_size(self, trunk_size: int, n_branches: int | None = None, share: float | None = None) -> int:
        """
        N, the size of the rollout set, for a trunk of ``trunk_size`` states and ``n_branches``
        branches per state (needed by ``n_states="auto"``; default K), the branches taking at most
        ``share`` of the steps (default ``branch_share``).
        """
        if self.n_states == "auto":
            per_state = (n_branches or self.n_actions) * self.branch_horizon
            share = self.max_share if share is None else share
            size = share / (1.0 - share) * trunk_size / per_state
            return min(trunk_size, max(2, math.floor(size)))
        if isinstance(self.n_states, float):
            return max(1, math.ceil(self.n_states * trunk_size))
        return min(int(self.n_states), trunk_size)

    def share_warning(self, trunk_size: int, n_branches: int) -> str | None:
        """
        With ``n_states="auto"``, a warning when the floor of 2 rollout-set states lets the branches
        take more than ``branch_share`` of an iteration's environment steps (every branch running
        its H steps), naming the numbers; None when the share holds (or N was given explicitly).

        :param trunk_size: T, the trunk's states per iteration (``n_steps * n_envs``)
        :param n_branches: branches per rollout-set state (K, or every action with ``all_actions``)
        """
        if self.n_states != "auto":
            return None
        n_states = self.rollout_set_size(trunk_size, n_branches)
        branch_steps = n_states * n_branches * self.branch_horizon
        share = branch_steps / (branch_steps + trunk_size)
        if share <= self.max_share + 1e-12:
            return None
        return (
            f"vine_kwargs: n_states='auto' takes at least 2 rollout-set states, so {n_states} states x {n_branches} "
            f"branches x horizon {self.branch_horizon} = {branch_steps} branch steps beside {trunk_size} trunk steps may take "
            f"{share:.0%} of each iteration's environment steps, more than branch_share={self.max_share}. "
            "Raise n_steps (or n_envs), lower horizon or n_actions, or give n_states explicitly."
        )

# ----------------------------------------------------------------------------- the fixed choices


class Sampling(StrEnum):
    """``sampling``: how the batch's (s, a) pairs and their advantages or Q-values are sampled."""

    SINGLE_PATH = "single_path"
    VINE = "vine"


class FisherMode(StrEnum):
    """``fisher``: how Fisher-vector products are computed."""

    ANALYTIC = "analytic"
    KL_HESSIAN = "kl_hessian"
    EMPIRICAL = "empirical"


class Estimator(StrEnum):
    """``vine_kwargs['estimator']``: the policy-gradient estimate a vine step follows."""

    COMBINED = "combined"
    VINE = "vine"


class CombinedWeight(StrEnum):
    """``vine_kwargs['combined_weight']``: how the combined estimator weighs its vine part."""

    INVERSE_VARIANCE = "inverse_variance"
    MIN_MSE = "min_mse"


class TrustRegionStates(StrEnum):
    """``vine_kwargs['trust_region_states']``: the states of a vine step's KL constraint and Fisher matrix."""

    TRUNK = "trunk"
    ROLLOUT_SET = "rollout_set"


# ----------------------------------------------------------------------------- q and the surrogate


def build_q(
    q: str | Callable[..., Any],
    q_kwargs: dict[str, Any] | None,
    sampling: str = Sampling.VINE,
    action_space: spaces.Space | None = None,
) -> Q:
    """
    The q of :class:`~sb3_trpo_plus.TRPOPlus`'s ``q`` and ``q_kwargs`` arguments, validated (the
    one builder; ``q_kwargs['max_weight']`` is checked here and belongs to
    :class:`SurrogateSettings`).

    :param q: a name of :data:`~sb3_trpo_plus.q.Q_REGISTRY` ("policy", "uniform", "scaled",
        "mixture") or a callable (protocol: :class:`~sb3_trpo_plus.q.SamplingDistribution`)
    :param q_kwargs: the q's settings (the fields of its class), and ``max_weight`` (> 1, any q)
    :param sampling: "single_path" (only q="policy" is allowed) or "vine"
    :param action_space: the environment's action space; None skips the checks that need it
    :raises ValueError: naming the argument and what is allowed
    """
    if not (callable(q) or (isinstance(q, str) and q in Q_REGISTRY)):
        raise ValueError(f"q must be one of {tuple(Q_REGISTRY)} or a callable, got {q!r}")
    if q != "policy" and sampling == Sampling.SINGLE_PATH:
        raise ValueError(
            f"q={q!r} needs sampling='vine': in single-path mode the states come from pi_old's own "
            "trajectories, so only q='policy' gives an unbiased surrogate"
        )
    kwargs = dict(q_kwargs or {})
    built = CallableQ.create(q, kwargs) if callable(q) else Q_REGISTRY[q].create(q, kwargs)
    SurrogateSettings(max_weight=kwargs.get("max_weight"))  # its check
    if action_space is not None:
        built.check_action_space(action_space)
    return built


@dataclass(frozen=True)
class SurrogateSettings:
    """
    Settings of the surrogate objective.

    :param normalize_advantage: standardise the (trunk's) advantages over the batch, as sb3-contrib does
    :param max_weight: truncation of every importance weight, min(w, c), > 1 (None: none);
        given as ``q_kwargs['max_weight']``
    """

    normalize_advantage: bool = True
    max_weight: float | None = None

    def __post_init__(self) -> None:
        if self.max_weight is not None and not (is_number(self.max_weight) and self.max_weight > 1):
            raise ValueError(f"q_kwargs['max_weight'] must be a number > 1, got {self.max_weight!r}")
        if self.max_weight is not None:
            object.__setattr__(self, "max_weight", float(self.max_weight))


# ----------------------------------------------------------------------------- sampling and the step


@dataclass(frozen=True)
class SamplingSettings:
    """
    The typed sampling arguments: the scheme, its q and, in vine mode, its :class:`VineSettings`.

    :param sampling: the scheme
    :param q: the validated q
    :param vine: the validated vine settings (None in single-path mode)
    """

    sampling: Sampling
    q: Q
    vine: VineSettings | None

    @classmethod
    def from_arguments(
        cls, sampling: str, q: Any, q_kwargs: dict[str, Any] | None, vine_kwargs: dict[str, Any] | None
    ) -> SamplingSettings:
        """
        :raises ValueError: naming the argument (``q``, ``q_kwargs['key']``, ``vine_kwargs['key']``)
        """
        built = build_q(q, q_kwargs, sampling)
        vine = VineSettings.from_kwargs(vine_kwargs) if sampling == Sampling.VINE else None
        return cls(Sampling(sampling), built, vine)

    def checked(self, action_space: spaces.Space) -> SamplingSettings:
        """These settings, after the checks that need the environment's action space (vine mode)."""
        if self.vine is None:
            return self
        vine = self.vine.resolved(action_space, q_is_policy=isinstance(self.q, PolicyQ))
        self.q.check_action_space(action_space)
        return dataclasses.replace(self, vine=vine)


@dataclass(frozen=True)
class StepSettings:
    """
    The policy step's settings (the constructor arguments of the same names, and the choice of
    step rule and constraint, resolved by :mod:`sb3_trpo_plus.step`'s registries).

    :param target_kl: the trust-region radius delta
    :param cg_max_steps: conjugate-gradient iterations
    :param cg_damping: c in (F + c I) v
    :param line_search_shrinking_factor: in (0, 1)
    :param line_search_max_iter: candidate steps of the line search
    :param fisher: how Fisher-vector products are computed
    :param fvp_subsample: share of the states of the Fisher-vector products, in (0, 1]
    :param step: the step rule, a name of ``sb3_trpo_plus.step.STEP_RULES``
    :param kl_constraint: the constraint, a name of ``sb3_trpo_plus.step.CONSTRAINTS``
    :param step_size: the fixed step length of ``step="natural_gradient"`` (None: not used)
    :param gamma: the discount factor (Theorem 1's penalty coefficient and bound)
    """

    target_kl: float
    cg_max_steps: int
    cg_damping: float
    line_search_shrinking_factor: float
    line_search_max_iter: int
    fisher: FisherMode
    fvp_subsample: float
    step: str = "trust_region"
    kl_constraint: str = "mean"
    step_size: float | None = None
    gamma: float = 0.99

    def __post_init__(self) -> None:
        if self.fisher not in tuple(FisherMode):
            raise ValueError(f"fisher must be one of {[mode.value for mode in FisherMode]}, got {self.fisher!r}")
        object.__setattr__(self, "fisher", FisherMode(self.fisher))
        size = self.step_size
        if size is not None and not (is_number(size) and math.isfinite(size) and size > 0):
            raise ValueError(f"step_size must be a finite number > 0 or None, got {size!r}")
        if self.step == "natural_gradient" and size is None:
            raise ValueError("step='natural_gradient' takes a fixed step theta += step_size * F^-1 g: give step_size (> 0)")
        if self.step != "natural_gradient" and size is not None:
            raise ValueError(
                f"step_size is only used by step='natural_gradient', got step_size={size!r} with step={self.step!r}"
            )
        if self.step == "theory_penalty" and not self.gamma < 1.0:
            raise ValueError(
                f"step='theory_penalty' needs gamma < 1: its penalty coefficient 4 eps gamma / (1 - gamma)^2 is infinite "
                f"at gamma={self.gamma!r}"
            )


@dataclass(frozen=True)
class Settings:
    """
    Every settings object of :class:`~sb3_trpo_plus.TRPOPlus`, built from its plain arguments.

    :param arguments: the plain arguments they were built from, in the order of :attr:`ARGUMENTS`
    :param sampling: sampling scheme, q and vine settings
    :param surrogate: the surrogate's settings
    :param step: the policy step's settings
    """

    #: the constructor arguments the settings are built from (attributes of the same names)
    ARGUMENTS: ClassVar[tuple[str, ...]] = (
        "sampling",
        "q",
        "q_kwargs",
        "vine_kwargs",
        "normalize_advantage",
        "target_kl",
        "cg_max_steps",
        "cg_damping",
        "line_search_shrinking_factor",
        "line_search_max_iter",
        "fisher",
        "fvp_subsample",
        "step",
        "kl_constraint",
        "step_size",
        "gamma",
    )
    arguments: tuple[Any, ...]
    sampling: SamplingSettings
    surrogate: SurrogateSettings
    step: StepSettings

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], action_space: spaces.Space | None = None) -> Settings:
        """
        The settings of the plain arguments (by name, at least those of :attr:`ARGUMENTS`),
        checked against ``action_space`` when it is known.

        :raises ValueError: naming the argument and what is allowed
        """
        values = cls.plain(arguments)
        named = dict(zip(cls.ARGUMENTS, values, strict=True))
        sampling = SamplingSettings.from_arguments(named["sampling"], named["q"], named["q_kwargs"], named["vine_kwargs"])
        surrogate = SurrogateSettings(bool(named["normalize_advantage"]), named["q_kwargs"].get("max_weight"))
        step_fields = [field.name for field in dataclasses.fields(StepSettings) if field.name in named]
        step = StepSettings(**{name: named[name] for name in step_fields})
        return cls(values, sampling, surrogate, step).checked(action_space)

    def checked(self, action_space: spaces.Space | None) -> Settings:
        """These settings after the checks that need the environment's action space (none when it is unknown)."""
        return self if action_space is None else dataclasses.replace(self, sampling=self.sampling.checked(action_space))

    #: the arguments that may be left out of ``arguments``, with their defaults (TRPOPlus always passes them)
    DEFAULTS: ClassVar[dict[str, Any]] = {"step": "trust_region", "kl_constraint": "mean", "step_size": None, "gamma": 0.99}

    @classmethod
    def plain(cls, arguments: Mapping[str, Any]) -> tuple[Any, ...]:
        """
        The values of :attr:`ARGUMENTS` in ``arguments`` (:attr:`DEFAULTS` for those left out),
        dicts for None ``q_kwargs`` and ``vine_kwargs``.
        """
        values = {**cls.DEFAULTS, **arguments}
        return tuple(dict(values[key] or {}) if key.endswith("_kwargs") else values[key] for key in cls.ARGUMENTS)

    def built_from(self, arguments: Mapping[str, Any]) -> bool:
        """Whether these are the settings of ``arguments`` (a loaded model, or an edited attribute, may differ)."""
        return self.arguments == self.plain(arguments)

    @property
    def q(self) -> Q:
        """The validated q."""
        return self.sampling.q

    @property
    def vine(self) -> VineSettings | None:
        """The vine settings (None in single-path mode)."""
        return self.sampling.vine


# ----------------------------------------------------------------------------- SB3's own arguments

#: the constructor arguments TRPOPlus hands unchanged to SB3's ``OnPolicyAlgorithm``
ON_POLICY_ARGUMENTS = (
    "learning_rate",
    "n_steps",
    "gamma",
    "gae_lambda",
    "use_sde",
    "sde_sample_freq",
    "rollout_buffer_class",
    "rollout_buffer_kwargs",
    "stats_window_size",
    "tensorboard_log",
    "policy_kwargs",
    "verbose",
    "device",
    "seed",
)


def on_policy_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """
    The keyword arguments of SB3's ``OnPolicyAlgorithm`` for TRPO: :data:`ON_POLICY_ARGUMENTS`
    from ``arguments`` (TRPOPlus's by name), no entropy bonus, no value loss in a policy loss
    (the value function is fitted separately), no gradient clipping, every action space SB3's
    unsquashed distributions cover, and the model set up by TRPOPlus itself.
    """
    return {
        **{name: arguments[name] for name in ON_POLICY_ARGUMENTS},
        "ent_coef": 0.0,
        "vf_coef": 0.0,
        "max_grad_norm": 0.0,
        "_init_setup_model": False,
        "supported_action_spaces": (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
    }
