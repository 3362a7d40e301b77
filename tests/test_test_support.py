"""The suite's own helpers: a missing optional tool skips on a laptop and fails under CI."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import LONGEST_FIRST, require_module, start_longest_first


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


def test_the_files_started_first_exist_and_lead_the_collection():
    # A renamed file would silently drop out of the longest-first order (and the suite's wall time would grow).
    tests = Path(__file__).resolve().parent
    assert all((tests / name).is_file() for name in LONGEST_FIRST)
    items = [tests / name for name in ("test_realdata.py", "test_architecture.py", "test_product_loop.py")]
    fake = [SimpleNamespace(path=p) for p in items]
    start_longest_first(fake)
    assert [f.path.name for f in fake] == ["test_product_loop.py", "test_realdata.py", "test_architecture.py"]


def test_no_test_imports_a_conftest():
    # Which conftest `import conftest` finds depends on the files a worker ran before (tests/ or tests/e2e/), and
    # `tests.conftest` is a second copy of the module: shared helpers live in support.py.
    tests = Path(__file__).resolve().parent
    offenders = [p.relative_to(tests).as_posix() for p in sorted(tests.rglob("*.py"))
                 if re.search(r"^\s*(from|import)\s+(tests\.)?conftest\b", p.read_text(), re.MULTILINE)]
    assert offenders == []
