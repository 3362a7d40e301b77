"""Helpers shared by test modules (import them with `from support import ...`).

They live here, not in conftest.py, because tests/ and tests/e2e/ both have a conftest module and
`from conftest import` would pick whichever pytest happened to import first.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from ci_support import skip_unless_ci  # noqa: F401 - tests import it from here too
from PIL import Image


def draw_cell(rng: np.random.Generator, size: int, colour: tuple[int, int, int]) -> Image.Image:
    """A tiny cell-like picture: a coloured disc with noise on a pale background."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    radius = rng.uniform(size * 0.2, size * 0.3)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    img = np.full((size, size, 3), 230, dtype=np.float64)
    img[inside] = colour
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


TINY_CLASSES = {"lymphocyte": (120, 60, 160), "neutrophil": (200, 120, 170), "platelet": (90, 40, 110)}


def write_cell_folder(root: Path, classes: dict[str, tuple[int, int, int]] | None = None, per_class: int = 12,
                      size: int = 32, seed: int = 0, suffix: str = ".jpg") -> Path:
    """An ImageFolder of drawn cells under root: one subfolder per class (TINY_CLASSES by default); returns root."""
    rng = np.random.default_rng(seed)
    for name, colour in (classes or TINY_CLASSES).items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            path = root / name / f"{name}_{i:02d}{suffix}"
            draw_cell(rng, size, colour).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    return root


def copy_home(source: Path, target: Path) -> Path:
    """Copy a prepared WBC_HOME; the SQLite database goes through the backup API.

    A plain file copy can catch a worker process still closing its connection (the -wal file
    vanishing mid-copy); the backup API reads one consistent snapshot instead.
    """
    import shutil
    import sqlite3

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("wbc.db", "wbc.db-wal", "wbc.db-shm"))
    if (source / "wbc.db").exists():
        src = sqlite3.connect(source / "wbc.db", timeout=30)
        dst = sqlite3.connect(target / "wbc.db")
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
    return target


@contextmanager
def active_home(home: Path, monkeypatch: pytest.MonkeyPatch, db_url: str | None = None) -> Iterator[Path]:
    """Build a process context on home (schema applied) and make it current for the block.

    The environment is set as well, but only for subprocesses that a test starts itself (`python -m wbc_core`);
    this process reads nothing from it. Workers launched by jobs get the context's settings directly.
    """
    from wbc_core import context

    monkeypatch.setenv("WBC_HOME", str(home))
    if db_url:
        monkeypatch.setenv("WBC_DB_URL", db_url)
    else:
        monkeypatch.delenv("WBC_DB_URL", raising=False)
    ctx = context.build("test", home=home, db_url=db_url)
    with context.using(ctx):
        try:
            yield home
        finally:
            ctx.close()


def reopen_context() -> None:
    """Replace the current test context by a fresh one on the same home and database: a "new process"
    (empty in-memory caches, new connections, schema checked again)."""
    from wbc_core import context

    old = context.current()
    old.close()
    context.activate(context.build("test", home=old.home, db_url=old.settings.db_url))


@contextmanager
def module_home(home: Path) -> Iterator[Path]:
    """active_home for module-scoped builders, which cannot use the function-scoped monkeypatch fixture."""
    with pytest.MonkeyPatch.context() as patch, active_home(home, patch):
        yield home


T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout_s: float = 20.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy (returned), or fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


@contextmanager
def use_settings(**changes) -> Iterator[None]:
    """Make a copy of the current context with some settings changed current for the block (same database)."""
    from wbc_core import context

    with context.using(context.with_settings(context.current(), **changes)):
        yield


@contextmanager
def context_on(home: Path, db_url: str | None = None) -> Iterator[Path]:
    """A context on another home (e.g. one a CLI subprocess wrote), current for the block, closed after."""
    from wbc_core import context

    ctx = context.build("test", home=home, db_url=db_url)
    try:
        with context.using(ctx):
            yield home
    finally:
        ctx.close()


def account(role: str = "admin", name: str | None = None):  # noqa: ANN201 - a wbc_core.auth.User
    """The account `name` (default: the role's own name) in the current home's database, created with that role
    and no password if it does not exist yet: the acting user that domain calls take."""
    from db import users as users_db

    name = name or role
    found = users_db.get_user(name)
    return found if found is not None else users_db.insert_user(name, "", role, None, "local")


def drawn_candidates(rng: np.random.Generator, class_name: str, kind: str, colour: tuple[int, int, int], n: int,
                     size: int) -> list[dict]:
    """n candidate rows of one class drawn in one colour, their files written under the active home's images/."""
    from wbc_core.context import current

    rows = []
    for i in range(n):
        rel = f"images/{class_name}_{kind}_{i}.png"
        (current().home / rel).parent.mkdir(parents=True, exist_ok=True)
        draw_cell(rng, size, colour).save(current().home / rel)
        rows.append(dict(origin="synthetic", class_name=class_name, split=None, sha256=f"{class_name}{kind}{i}",
                         path=rel, width=size, height=size))
    return rows


def require_module(name: str, why: str) -> Any:  # noqa: ANN401 - the module
    """Import an optional test dependency; missing, the test (or module) skips here and fails under CI."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        skip_unless_ci(f"{name} is not installed ({why}; pip install -r requirements-dev.txt)")


@contextmanager
def small_disk(where: Path, megabytes: int) -> Iterator[Path]:
    """A real tmpfs of that size (needs root); skips where the machine allows no mount (fails under CI)."""
    import os
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        skip_unless_ci("no tmpfs mount here (needs root); the injected-ENOSPC twin of this test still runs")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


PROJECT = Path(__file__).resolve().parent.parent


def fresh_python(code: str, cwd: Path = PROJECT, timeout: float = 300) -> str:
    """Run code in a new interpreter of this venv (what a fresh process imports) and return its stripped stdout;
    a failing snippet fails the test with its stderr."""
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# The suite runs on pytest-xdist workers, one per core up to 4, whole files each (pyproject's addopts, --dist loadfile
# --no-loadscope-reorder).
# These files take minutes, the rest seconds: they start first, so the run does not end with two of them side by
# side while the other worker idles (longest first; in collection order the tail ran two of them together).
# They live here, not in conftest.py: `import conftest` in a test may find tests/e2e/conftest.py instead.
TESTS = Path(__file__).resolve().parent
LONGEST_FIRST = ("test_product_loop.py", "test_realdata.py", "test_feedback_bench.py", "e2e/test_journey.py",
                 "test_cli_e2e.py", "test_bench_gan.py")


def start_longest_first(items: list) -> None:
    """Sort collected items (anything with a `.path`) so the LONGEST_FIRST files lead, in that order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def order(item) -> int:  # noqa: ANN001 - a pytest.Item or a stand-in
        return rank.get(item.path.resolve().relative_to(TESTS).as_posix(), len(rank))

    items.sort(key=order)  # stable: every other file keeps its place and its tests their order
