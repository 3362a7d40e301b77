"""Engine and sessions: the only place that knows how to connect.

A `Database` owns one engine. The process context (`wbc_core.context`) builds it from its URL and binds it
here once per process; every query module then opens sessions on the bound database. The database layer
never reads the environment and imports nothing from `wbc_core`.

SQLite defaults chosen for several processes at once (the UI, job workers, the CLI):
WAL so readers never block the writer, a generous busy_timeout so a writer waits instead of
failing with "database is locked", foreign keys on, and write transactions that take the
write lock at BEGIN (BEGIN IMMEDIATE). Deferred write transactions can deadlock-upgrade
(two readers both trying to become the writer), and SQLite then fails one of them at once
without honouring busy_timeout; taking the lock up front makes the wait orderly.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, Integer, any_, bindparam, create_engine, event, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 30_000


class NotBound(RuntimeError):
    """No database is bound in this process (build a wbc_core context first)."""


class Database:
    """One database: its URL, engine and session factories."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create(url)
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(self.engine.execution_options(wbc_write=True), expire_on_commit=False)
        self.schema_ready = False  # set by db.migrate.ensure_schema once this database is at head

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads; its transaction is deferred and never blocks writers under WAL."""
        session = self._reads()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session whose transaction takes the write lock at its start and commits on success."""
        session = self._writes()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        """Close every pooled connection (before a fork, or when a test is done with this database)."""
        self.engine.dispose()


def _json(value: object) -> str:
    # NaN and infinity are not JSON: PostgreSQL refuses them (DataError) while SQLite would store the invalid
    # token `NaN`. Refusing them here makes both databases answer alike; the query modules validate first
    # (db.validate) so that the user sees which value was wrong.
    return json.dumps(value, allow_nan=False)


def _create(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, json_serializer=_json)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                           json_serializer=_json)

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


def serialise(session: Session, name: str) -> None:
    """Make this write transaction wait for every other one that serialises on the same name, until it ends.

    SQLite write transactions already take the one write lock at BEGIN (BEGIN IMMEDIATE), so there this does
    nothing. PostgreSQL runs write transactions side by side under READ COMMITTED; a check-then-write (the last
    enabled admin, the first user) then needs a transaction-scoped advisory lock, after which every later
    statement of the transaction sees what the previous holder committed.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


# The one slot the process context fills. Not a cache keyed by anything: exactly one database per process
# at a time, replaced only when a (test) context is activated.
_bound: Database | None = None
_bind_lock = threading.Lock()


def bind(database: Database | None) -> None:
    """Make database the one every query in this process uses (None unbinds)."""
    global _bound
    with _bind_lock:
        _bound = database


def bound() -> Database:
    """The bound database; NotBound with a plain message when none is."""
    database = _bound
    if database is None:
        raise NotBound("no database is bound in this process: build the process context first "
                       "(wbc_core.context.current())")
    return database


def get_engine() -> Engine:
    """The bound database's engine."""
    return bound().engine


@contextmanager
def read_session() -> Iterator[Session]:
    """A read session on the bound database."""
    with bound().read_session() as session:
        yield session


@contextmanager
def write_session() -> Iterator[Session]:
    """A write session (lock taken at BEGIN on SQLite) on the bound database."""
    with bound().write_session() as session:
        yield session


def id_in(s: Session, ids: list[int], column):  # noqa: ANN001, ANN201 - a column and its SQL condition
    """column IN ids, bound as one parameter: an array on PostgreSQL (= ANY), a JSON text on SQLite (json_each).

    A plain IN renders one placeholder per id, and turning 2,500 of them into the driver's query took ~15 ms of
    the client's CPU per call at 1M candidates, more than the lookups themselves."""
    if s.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("member_ids", ids, type_=ARRAY(Integer)))
    listed = func.json_each(bindparam("member_ids", json.dumps(ids))).table_valued("value")
    return column.in_(select(listed.c.value))
