"""The one rule for tests whose tool is missing on this machine: skip with the reason on a laptop, fail under CI.

Stdlib only, so tests/pg_support.py and tests/ray_support.py (which the benches import too) can share it.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """Whether this is a CI run (CI=true), where a missing tool fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def skip_unless_ci(reason: str, ci_message: str | None = None) -> None:
    """Skip the calling test (or module) saying why; under CI fail with ci_message instead (CI runs every test)."""
    if in_ci():
        pytest.fail(ci_message or f"CI runs every test, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
