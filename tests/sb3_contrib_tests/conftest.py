"""
Runs only the TRPO cases of sb3-contrib's test files (see README.md): every test whose id names
TRPO (``TRPO`` is ``TRPOPlus`` here, so parametrised ids read ``TRPOPlus``; test names read
``trpo``). The other algorithms' cases are sb3-contrib's business, not this package's.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = __file__.rsplit("/", 1)[0]
    kept, dropped = [], []
    for item in items:
        vendored = str(item.path).startswith(here)
        (dropped if vendored and "trpo" not in item.nodeid.lower() else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
