"""Shared fixtures: a fresh WBC_HOME (database, images, runs) per test, and tiny image folders.

The database of `wbc_home` is SQLite unless a test (or its module) is marked `databases`: it then runs once per
backend, on SQLite and on a fresh database of a throw-away PostgreSQL cluster (tests/pg_support.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Set before torch starts its OpenMP pool: idle threads then sleep instead of spinning, which keeps
# in-process training in tests fast while worker processes train beside it on the same two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from pg_support import BACKENDS, PgCluster, start_cluster
from ray_support import RayCluster
from ray_support import start_cluster as start_ray_cluster
from support import active_home, start_longest_first, write_cell_folder


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "databases(*backends): run the test once per database backend that uses "
                                       "the db_backend fixture (through wbc_home or db_url); default: sqlite and "
                                       "postgresql")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    start_longest_first(items)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One parametrised fixture for every database test: the marker (on a test or as a module's pytestmark) names
    # the backends; tests without it, or that use no database, run once as before.
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None and "db_backend" in metafunc.fixturenames:
        metafunc.parametrize("db_backend", marker.args or BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's throw-away PostgreSQL cluster (skips, or fails under CI=true, where there is none)."""
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """The session's throw-away local Ray head node (skips, or fails under CI=true, where Ray is not installed)."""
    cluster = start_ray_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture()
def db_backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test: "sqlite" unless parametrised by the `databases` marker."""
    return getattr(request, "param", "sqlite")


@pytest.fixture()
def db_url(request: pytest.FixtureRequest, db_backend: str) -> Iterator[str | None]:
    """None for SQLite (the home's own file), else the URL of a new PostgreSQL database, dropped after.

    The PostgreSQL database is already migrated to head (a copy of one migrated at the session's start), like the
    SQLite file that wbc_home's context migrates; `pg_cluster.fresh_database()` gives an empty one."""
    yield from _database_url(request, db_backend, migrated=True)


@pytest.fixture()
def empty_db_url(request: pytest.FixtureRequest, db_backend: str) -> Iterator[str | None]:
    """Like db_url, but with no schema at all (a new home's SQLite file is None here too): for migration tests."""
    yield from _database_url(request, db_backend, migrated=False)


def _database_url(request: pytest.FixtureRequest, db_backend: str, migrated: bool) -> Iterator[str | None]:
    """None for SQLite; else a fresh PostgreSQL database (migrated to head or empty), dropped after the test."""
    if db_backend == "sqlite":
        yield None
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    with cluster.fresh_database(migrated=migrated) as url:
        yield url


@pytest.fixture()
def wbc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str | None) -> Path:
    """An empty WBC_HOME with the schema applied on the test's database; engines are reset around the test."""
    with active_home(tmp_path / "wbc_home", monkeypatch, db_url=db_url) as home:
        yield home


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    """A folder of 3 classes x 12 JPEG cells at 32 px, one subfolder per class."""
    return write_cell_folder(tmp_path / "tiny_cells")



@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Run a test single-threaded (tiny nets gain nothing from two threads), restoring torch's setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
