"""Engine and sessions: the only place that knows how to connect.

SQLite defaults chosen for several processes at once (the UI, job workers, the CLI):
WAL so readers never block the writer, a generous busy_timeout so a writer waits instead of
failing with "database is locked", foreign keys on, and write transactions that take the
write lock at BEGIN (BEGIN IMMEDIATE). Deferred write transactions can deadlock-upgrade
(two readers both trying to become the writer), and SQLite then fails one of them at once
without honouring busy_timeout; taking the lock up front makes the wait orderly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(url: str | None = None) -> Engine:
    """Return the process-wide engine for url (default: settings.database_url()), creating it once."""
    from wbc_core.settings import database_url  # settings has no DB or UI imports; safe lower layer

    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url)
            _engines[url] = engine
        return engine


def _create(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite would otherwise
        # issue its own deferred BEGIN lazily before the first write).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync at checkpoints only
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        mode = "IMMEDIATE" if conn.get_execution_options().get("wbc_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def dispose_all() -> None:
    """Drop every cached engine (tests switch databases; workers reconnect after fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def read_session(url: str | None = None) -> Iterator[Session]:
    """A session for reads; its transaction is deferred and never blocks writers under WAL."""
    session = sessionmaker(get_engine(url), expire_on_commit=False)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@contextmanager
def write_session(url: str | None = None) -> Iterator[Session]:
    """A session whose transaction takes the write lock at its start and commits on success."""
    engine = get_engine(url).execution_options(wbc_write=True)
    session = sessionmaker(engine, expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
