"""The suite's own helpers: a missing optional tool skips on a laptop and fails under CI."""

from __future__ import annotations

import pytest
from support import require_module


def test_a_missing_module_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_module_xyz is not installed"):
        require_module("no_such_module_xyz", "a test needs it")


def test_a_missing_module_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI runs every test"):
        require_module("no_such_module_xyz", "a test needs it")


def test_a_present_module_is_returned():
    assert require_module("json", "stdlib").dumps([1]) == "[1]"
