"""Apply Alembic migrations automatically; every entry point (UI, CLI, worker) calls ensure_schema()."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from db.engine import Database, bound

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit number: the key of the PostgreSQL advisory lock that serialises migrations.
_MIGRATION_LOCK_KEY = 0x77BC_C0DE
_lock = threading.Lock()


def alembic_config(url: str) -> Config:
    """Alembic config pointing at our migrations folder, for programmatic use."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest migration's revision id."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(database: Database | None = None) -> str | None:
    """The revision the database is at (None: empty database)."""
    database = database or bound()
    with database.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_schema(database: Database | None = None) -> None:
    """Upgrade the database to the newest migration once per process (idempotent, safe across processes)."""
    database = database or bound()
    with _lock:
        if database.schema_ready:
            return
        head = head_revision()
        if current_revision(database) != head:
            # Several processes may start at once on a fresh database. On SQLite the write option takes the
            # lock at BEGIN; on PostgreSQL a transaction-scoped advisory lock does the same. Either way the
            # second process waits, then finds the schema at head inside the lock and does nothing.
            with database.engine.connect() as outer:
                if database.is_sqlite:
                    # Batch migrations recreate tables on SQLite (copy, drop, rename). With foreign keys on,
                    # dropping `runs` would cascade-delete every metric and job row, so they are switched off
                    # for the migration (a no-op inside a transaction, hence before BEGIN) and checked after.
                    outer.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
                try:
                    with outer.execution_options(wbc_write=True).begin():
                        if outer.dialect.name == "postgresql":
                            outer.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                        if MigrationContext.configure(outer).get_current_revision() != head:
                            cfg = alembic_config(database.url)
                            cfg.attributes["connection"] = outer
                            command.upgrade(cfg, "head")
                finally:
                    if database.is_sqlite:
                        raw = outer.connection.dbapi_connection
                        broken = raw.execute("PRAGMA foreign_key_check").fetchall()
                        raw.execute("PRAGMA foreign_keys=ON")
                        if broken:
                            raise RuntimeError(f"migration left {len(broken)} rows with broken foreign keys")
        database.schema_ready = True
