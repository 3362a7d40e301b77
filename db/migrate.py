"""Apply Alembic migrations automatically; every entry point (UI, CLI, worker) calls ensure_schema()."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from db.engine import get_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_done: set[str] = set()
_lock = threading.Lock()


def alembic_config(url: str) -> Config:
    """Alembic config pointing at our migrations folder, for programmatic use."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def ensure_schema(url: str | None = None) -> None:
    """Upgrade the database to the newest migration once per process (idempotent, safe across processes)."""
    engine = get_engine(url)
    key = str(engine.url)
    with _lock:
        if key in _done:
            return
        cfg = alembic_config(key)
        head = ScriptDirectory.from_config(cfg).get_current_head()
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current != head:
            # The write option makes SQLite take the lock at BEGIN, so two processes starting
            # at once serialise here and the second one finds the schema already at head.
            with engine.execution_options(wbc_write=True).begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        _done.add(key)


def forget_schema_cache() -> None:
    """Tests that recreate a database call this so ensure_schema checks again."""
    with _lock:
        _done.clear()
