"""The logger keys every iteration writes (docs/trust-region.md, "Diagnostics"); several test modules check them."""

DESIGN_KEYS = (
    "train/kl",
    "train/surrogate_gain",
    "train/expected_gain",
    "train/line_search_steps",
    "train/line_search_success",
    "train/cg_residual",
    "train/value_loss",
    "train/explained_variance",
    "train/is_ess",
    "train/kl_max",
    "train/tv_max",
    "train/bound_epsilon",
    "train/bound_penalty_c",
    "train/bound_lower",
)
