"""Layering rules: wbc_core and db never import streamlit; pages never import torch or SQLAlchemy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_domain_and_db_never_import_streamlit():
    offenders = [str(p.relative_to(ROOT)) for folder in ("wbc_core", "db") for p in (ROOT / folder).rglob("*.py")
                 if "streamlit" in _imports(p)]
    assert offenders == []


def test_importing_every_domain_module_does_not_load_streamlit():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for folder in ("wbc_core", "db") for p in (ROOT / folder).rglob("*.py")
        if "migrations" not in p.parts and p.name != "__main__.py" and p.stem != "worker"
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_pages_never_import_torch_or_sqlalchemy():
    pages = [ROOT / "app.py", *(ROOT / "pages").glob("*.py")]
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"torch", "torchvision", "sqlalchemy"})
                 for p in pages}
    assert {k: v for k, v in offenders.items() if v} == {}
