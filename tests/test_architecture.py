"""Layering rules, each checked on the real tree and shown to fail on a small tree that breaks it.

The rules (the README's "Architecture rules" section states them for people):
1. `wbc_core` and `db` never import streamlit.
2. `db` imports nothing from `wbc_core`.
3. The compute packages (`wbc_core/gan`, `classifier`, `quality`, `data` and `store`) do not import `db`.
4. Pages call the domain, not `db`, and never import torch or SQLAlchemy.
5. Importing any page module's imports does not load torch (the page server must not pay for it).
6. Only `wbc_core/context.py` reads WBC_* settings from the environment (no module state keyed by them).

Imports inside `if TYPE_CHECKING:` blocks are annotations only and do not count.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from support import fresh_python

ROOT = Path(__file__).resolve().parent.parent
COMPUTE_PACKAGES = ("wbc_core/gan", "wbc_core/classifier", "wbc_core/quality", "wbc_core/data", "wbc_core/store.py")


# -- the checkers (they take a root, so the tests below can run them on a tree that breaks a rule) -------------

def _python_files(root: Path, *parts: str) -> list[Path]:
    files: list[Path] = []
    for part in parts:
        path = root / part
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*.py")) if "migrations" not in p.parts)
    return files


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imported_modules(path: Path) -> set[str]:
    """Every module path a file imports, at any depth (function-local imports too), except type-only ones."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offenders(root: Path, parts: tuple[str, ...], banned: tuple[str, ...]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in _python_files(root, *parts):
        bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in banned)
        if bad:
            found[str(path.relative_to(root))] = bad
    return found


def streamlit_in_domain(root: Path) -> dict[str, list[str]]:
    return _offenders(root, ("wbc_core", "db"), ("streamlit",))


def wbc_core_in_db(root: Path) -> dict[str, list[str]]:
    return _offenders(root, ("db",), ("wbc_core",))


def db_in_compute(root: Path) -> dict[str, list[str]]:
    return _offenders(root, COMPUTE_PACKAGES, ("db",))


def forbidden_in_pages(root: Path) -> dict[str, list[str]]:
    return _offenders(root, ("app.py", "pages"), ("db", "torch", "torchvision", "sqlalchemy"))


def environment_readers(root: Path) -> list[str]:
    """Files other than wbc_core/context.py that read os.environ / os.getenv for a WBC_* setting."""
    found = []
    for path in _python_files(root, "wbc_core", "db", "pages", "app.py"):
        if path.relative_to(root).as_posix() == "wbc_core/context.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("WBC_"):
                parent_text = path.read_text()
                if "environ" in parent_text or "getenv" in parent_text:
                    found.append(str(path.relative_to(root)))
                    break
    return found


def modules_loaded_by(root: Path, page: Path, probe: tuple[str, ...]) -> list[str]:
    """Import (in a fresh interpreter) every project module a page imports at its top; which probes got loaded."""
    modules = sorted(m for m in imported_modules(page) if m.split(".")[0] in ("wbc_core", "db", "pages"))
    code = textwrap.dedent(f"""
        import importlib, importlib.util, sys
        for name in {modules!r}:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:  # "from package import function": the package is imported already
                importlib.import_module(name.rsplit(".", 1)[0])
        print(",".join(p for p in {list(probe)!r} if p in sys.modules))
    """)
    return [p for p in fresh_python(code, cwd=root).split(",") if p]


# -- the real tree ---------------------------------------------------------------------------------------------

def test_domain_and_db_never_import_streamlit():
    assert streamlit_in_domain(ROOT) == {}


def test_db_imports_nothing_from_wbc_core():
    assert wbc_core_in_db(ROOT) == {}


def test_compute_packages_do_not_import_db():
    assert db_in_compute(ROOT) == {}


def test_pages_call_the_domain_not_db_torch_or_sqlalchemy():
    assert forbidden_in_pages(ROOT) == {}


def test_only_the_context_reads_wbc_settings_from_the_environment():
    assert environment_readers(ROOT) == []


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "pages").glob("*.py") if p.name != "__init__.py"))
def test_importing_a_page_does_not_load_torch(page):
    assert modules_loaded_by(ROOT, ROOT / "pages" / page, ("torch",)) == []


def test_importing_every_domain_module_does_not_load_streamlit():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for folder in ("wbc_core", "db") for p in (ROOT / folder).rglob("*.py")
        if "migrations" not in p.parts and p.name != "__main__.py" and p.stem != "worker"
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('streamlit' in sys.modules)")
    assert fresh_python(code) == "False"


def test_importing_the_compute_packages_does_not_load_the_database_layer():
    code = ("import sys\nimport wbc_core.gan, wbc_core.classifier, wbc_core.quality.judge, wbc_core.data, "
            "wbc_core.store\nprint(sorted(m for m in sys.modules if m == 'db' or m.startswith('db.')))")
    assert fresh_python(code) == "[]"


# -- each rule can fail ----------------------------------------------------------------------------------------

@pytest.fixture()
def bad_tree(tmp_path: Path) -> Path:
    """A tiny project that breaks every rule once (and keeps one type-only import that must not count)."""
    files = {
        "wbc_core/__init__.py": "",
        "wbc_core/ui_leak.py": "import streamlit as st\n",
        "wbc_core/store.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from db.datasets import Row\n",
        "wbc_core/gan/__init__.py": "",
        "wbc_core/gan/train.py": "def f():\n    from db import runs\n",
        "wbc_core/settings_leak.py": "import os\nHOME = os.environ.get('WBC_HOME')\n",
        "db/__init__.py": "",
        "db/upward.py": "from wbc_core.context import current\n",
        "pages/__init__.py": "",
        "pages/heavy.py": "import torch\nfrom db import runs\nfrom wbc_core import heavy_domain\n",
        "wbc_core/heavy_domain.py": "import json  # stands in for torch in the probe below\n",
        "app.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_every_rule_fails_on_a_tree_that_breaks_it(bad_tree: Path):
    assert streamlit_in_domain(bad_tree) == {"wbc_core/ui_leak.py": ["streamlit"]}
    assert wbc_core_in_db(bad_tree) == {"db/upward.py": ["wbc_core.context", "wbc_core.context.current"]}
    # The function-local import counts; the TYPE_CHECKING one in store.py does not.
    assert db_in_compute(bad_tree) == {"wbc_core/gan/train.py": ["db", "db.runs"]}
    assert forbidden_in_pages(bad_tree) == {"pages/heavy.py": ["db", "db.runs", "torch"]}
    assert environment_readers(bad_tree) == ["wbc_core/settings_leak.py"]
    assert modules_loaded_by(bad_tree, bad_tree / "pages" / "heavy.py", ("json",)) == ["json"]
