"""Branch observations, one per branch, and the batch they stack into (an array, or a dict of arrays)."""

from __future__ import annotations

from typing import Any

import numpy as np


def row_of(batch: Any, index: int) -> Any:
    """Row ``index`` of a batch (array or dict of arrays)."""
    if isinstance(batch, dict):
        return {key: value[index] for key, value in batch.items()}
    return batch[index]


def rows_of(batch: Any, size: int) -> list[Any]:
    """Split a batch (array or dict of arrays) into its ``size`` rows."""
    return [row_of(batch, index) for index in range(size)]


def stack_rows(observations: list[Any]) -> Any:
    """Stack rows (arrays, or dicts of arrays) into a batch."""
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)
