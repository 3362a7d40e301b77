"""Database layer: SQLite settings, migrations, constraints, append-only decisions, concurrency."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from db import datasets, decisions, runs
from db.engine import get_engine, read_session, write_session


def _dataset(n_real: int = 2) -> int:
    rows = [dict(origin="real", class_name="a", split="train", sha256=f"r{i}", path=f"p{i}", width=8, height=8)
            for i in range(n_real)]
    return datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, rows)


def _candidates(dataset_id: int, n: int) -> list[int]:
    return datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}",
                                                 path=f"q{i}", width=8, height=8) for i in range(n)])


def test_sqlite_pragmas(wbc_home):
    with get_engine().connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_migrations_reach_head(wbc_home):
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(str(get_engine().url))).get_current_head()
    with read_session() as s:
        assert s.execute(text("SELECT version_num FROM alembic_version")).scalar() == head


def test_write_session_takes_the_lock_at_begin(wbc_home):
    """A write transaction holds the write lock before its first statement, so others queue behind it."""
    db_file = wbc_home / "wbc.db"
    with write_session() as s:
        s.execute(text("SELECT 1"))  # no write yet
        other = sqlite3.connect(db_file, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()


def test_read_session_does_not_block_writers(wbc_home):
    with read_session() as s:
        s.execute(text("SELECT count(*) FROM datasets")).scalar()
        _dataset()  # a write while a read transaction is open (WAL)


def test_synthetic_images_cannot_have_a_split(wbc_home):
    dataset_id = _dataset()
    for split in ("val", "test", "train"):
        with pytest.raises(IntegrityError):
            datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=split, sha256="x",
                                                  path="x", width=8, height=8)])


def test_real_images_need_a_split(wbc_home):
    dataset_id = _dataset()
    with pytest.raises(IntegrityError):
        datasets.add_images(dataset_id, [dict(origin="real", class_name="a", split=None, sha256="x", path="x",
                                              width=8, height=8)])


def test_decisions_are_append_only(wbc_home):
    dataset_id = _dataset()
    ids = _candidates(dataset_id, 2)
    decisions.record_decisions(ids, "ann", "accept")
    with get_engine().begin() as conn, pytest.raises(IntegrityError, match="append-only"):
        conn.execute(text("UPDATE decisions SET verdict = 'reject'"))
    with get_engine().begin() as conn, pytest.raises(IntegrityError, match="append-only"):
        conn.execute(text("DELETE FROM decisions"))
    assert len(decisions.current_decisions(dataset_id)) == 2


def test_dataset_with_decisions_cannot_be_deleted(wbc_home):
    dataset_id = _dataset()
    decisions.record_decisions(_candidates(dataset_id, 1), "ann", "reject")
    with pytest.raises(ValueError, match="cannot be deleted"):
        datasets.delete_dataset(dataset_id)


def test_duplicate_dataset_name_is_refused(wbc_home):
    _dataset()
    with pytest.raises(datasets.DatasetExists):
        _dataset()


def test_decisions_on_real_or_unknown_images_are_refused(wbc_home):
    dataset_id = _dataset()
    real_id = datasets.real_images(dataset_id)[0].id
    with pytest.raises(decisions.ReviewError, match="real cells"):
        decisions.record_decisions([real_id], "ann", "accept")
    with pytest.raises(decisions.ReviewError, match="no candidate"):
        decisions.record_decisions([99999], "ann", "accept")
    with pytest.raises(decisions.ReviewError, match="relabel"):
        decisions.record_decisions(_candidates(dataset_id, 1), "ann", "relabel")


def test_concurrent_reviewers_and_a_metrics_writer_lose_nothing(wbc_home):
    """8 reviewer threads and a training job writing metrics against one file-backed database."""
    dataset_id = _dataset()
    ids = _candidates(dataset_id, 40)
    run_id = runs.create_run("selftest", dataset_id, {}, seed=0)
    errors: list[BaseException] = []

    def reviewer(k: int) -> None:
        try:
            for image_id in ids:
                decisions.record_decisions([image_id], f"rev{k}", "accept" if (image_id + k) % 2 else "reject")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def trainer() -> None:
        try:
            for step in range(100):
                runs.add_metrics(run_id, step, {"loss": 1.0 / (step + 1)})
                runs.heartbeat(run_id, step / 100, f"step {step}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(k,)) for k in range(8)] + [threading.Thread(target=trainer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(decisions.current_decisions(dataset_id)) == 8 * 40
    assert len(runs.metrics([run_id])) == 100
