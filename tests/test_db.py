"""Database layer on SQLite and PostgreSQL: settings, migrations, constraints, append-only decisions, concurrency."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, StatementError

from db import datasets, decisions, runs, validate
from db.engine import get_engine, read_session, write_session
from db.models import Dataset

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def _dataset(n_real: int = 2) -> int:
    rows = [dict(origin="real", class_name="a", split="train", sha256=f"r{i}", path=f"p{i}", width=8, height=8)
            for i in range(n_real)]
    return datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, rows)


def _candidates(dataset_id: int, n: int) -> list[int]:
    return datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}",
                                                 path=f"q{i}", width=8, height=8) for i in range(n)])


@pytest.mark.databases("sqlite")
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


@pytest.mark.databases("sqlite")
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


def _decision_row(decision_id: int) -> tuple:
    with read_session() as s:
        return tuple(s.execute(text("SELECT image_id, reviewer, verdict FROM decisions WHERE id = :i"),
                               {"i": decision_id}).one())


def test_an_existing_decision_cannot_be_replaced(wbc_home, db_backend):
    """SQLite's INSERT OR REPLACE deleted the old row without firing the DELETE guard; an upsert on PostgreSQL."""
    dataset_id = _dataset()
    image_id = _candidates(dataset_id, 1)[0]
    [decision_id] = decisions.record_decisions([image_id], "ann", "accept")
    replace = {
        "sqlite": "INSERT OR REPLACE INTO decisions (id, image_id, reviewer, verdict, adjudication, created_at) "
                  "VALUES (:id, :image, 'ann', 'reject', false, CURRENT_TIMESTAMP)",
        "postgresql": "INSERT INTO decisions (id, image_id, reviewer, verdict, adjudication, created_at) "
                      "VALUES (:id, :image, 'ann', 'reject', false, now()) "
                      "ON CONFLICT (id) DO UPDATE SET verdict = EXCLUDED.verdict",
    }[db_backend]
    with get_engine().begin() as conn, pytest.raises(IntegrityError, match="append-only"):
        conn.execute(text(replace), {"id": decision_id, "image": image_id})
    assert _decision_row(decision_id) == (image_id, "ann", "accept")
    assert [d["verdict"] for d in decisions.current_decisions(dataset_id)] == ["accept"]
    decisions.record_decisions([image_id], "ann", "reject")  # new decisions are still appended
    assert [d["verdict"] for d in decisions.current_decisions(dataset_id)] == ["reject"]


def test_decisions_cannot_be_wiped_wholesale(wbc_home, db_backend):
    """TRUNCATE fires no row trigger on PostgreSQL (nor does it through CASCADE); SQLite's equivalent is DELETE."""
    dataset_id = _dataset()
    decisions.record_decisions(_candidates(dataset_id, 3), "ann", "accept")
    statements = {"sqlite": ["DELETE FROM decisions"],
                  "postgresql": ["TRUNCATE decisions", "TRUNCATE images CASCADE", "TRUNCATE datasets CASCADE"]}
    for statement in statements[db_backend]:
        with get_engine().begin() as conn, pytest.raises(IntegrityError, match="append-only"):
            conn.execute(text(statement))
    assert len(decisions.current_decisions(dataset_id)) == 3


def test_decided_images_cannot_be_deleted_even_without_foreign_keys(wbc_home, db_backend):
    """With SQLite's foreign keys off (as during migrations), DELETE FROM images left orphan decisions."""
    dataset_id = _dataset()
    decided, undecided = _candidates(dataset_id, 2)
    decisions.record_decisions([decided], "ann", "accept")
    with get_engine().connect() as conn:
        if db_backend == "sqlite":
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # only outside a transaction
        try:
            for statement in ("DELETE FROM images WHERE id = :i", "UPDATE images SET id = id + 1000 WHERE id = :i"):
                with conn.begin(), pytest.raises(IntegrityError, match="kept forever"):
                    conn.execute(text(statement), {"i": decided})
            with conn.begin():  # an image nobody decided on may still go
                assert conn.execute(text("DELETE FROM images WHERE id = :i"), {"i": undecided}).rowcount == 1
        finally:
            if db_backend == "sqlite":
                conn.rollback()
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
    with read_session() as s:
        orphans = s.execute(text("SELECT count(*) FROM decisions d LEFT JOIN images i ON i.id = d.image_id "
                                 "WHERE i.id IS NULL")).scalar()
    assert orphans == 0
    assert [d["image_id"] for d in decisions.current_decisions(dataset_id)] == [decided]


def test_relabel_checks_the_class_against_the_dataset(wbc_home):
    """The class check read DISTINCT JSON class lists, which PostgreSQL cannot compare: every relabel failed there."""
    dataset_id = _dataset()
    ids = _candidates(dataset_id, 2)
    assert len(decisions.record_decisions(ids, "ann", "relabel", new_class="b")) == 2
    with pytest.raises(decisions.ReviewError, match="unknown class 'zz'; classes: a, b"):
        decisions.record_decisions(ids, "ann", "relabel", new_class="zz")
    assert {d["new_class"] for d in decisions.current_decisions(dataset_id)} == {"b"}


_IMAGE = dict(origin="synthetic", split=None, sha256="s", path="q", width=8, height=8)


@pytest.mark.parametrize(("write", "message"), [
    (lambda d, r, c: datasets.create_dataset("n" * 201, "real", "src", ["a"], {}, "h", {}, []),
     "the dataset name 'nnn.*' is 201 characters long; at most 200 are allowed"),
    (lambda d, r, c: datasets.create_dataset("x", "real", "src", ["a", "c" * 101], {}, "h", {}, []),
     "the class name 'ccc.*' is 101 characters long; at most 100 are allowed"),
    (lambda d, r, c: datasets.create_dataset("x\x00y", "real", "src", ["a"], {}, "h", {}, []),
     "contains a NUL character"),
    (lambda d, r, c: datasets.create_dataset("x", "real", "src", ["a"], {"val": math.nan}, "h", {}, []),
     "the split settings holds a value that is not a finite number at val"),
    (lambda d, r, c: datasets.add_images(d, [dict(_IMAGE, class_name="c" * 101)]), "at most 100 are allowed"),
    (lambda d, r, c: datasets.add_images(d, [dict(_IMAGE, class_name="a", judge_prob=math.inf)]), "judge prob is inf"),
    (lambda d, r, c: decisions.record_decisions(c, "r" * 101, "accept"),
     "the reviewer name 'rrr.*' is 101 characters long; at most 100 are allowed"),
    (lambda d, r, c: decisions.record_decisions(c, "ann", "reject", reason="y" * 101), "at most 100"),
    (lambda d, r, c: decisions.set_review_settings(d, {"quotas": {"a": math.inf}}), "not a finite number at quotas.a"),
    (lambda d, r, c: runs.create_run("selftest", d, {"synthetic_cap": math.nan}, seed=0),
     "the run settings holds a value that is not a finite number at synthetic_cap"),
    (lambda d, r, c: runs.add_metrics(r, 3, {"loss": math.nan}),
     "metric 'loss' at step 3 is nan"),
], ids=["dataset-name", "class-name", "nul", "json-nan", "image-class", "score-inf", "reviewer", "reason",
        "settings-inf", "config-nan", "metric-nan"])
def test_too_long_or_non_finite_values_get_the_same_plain_answer(wbc_home, write, message):
    """PostgreSQL raised DataError tracebacks for these while SQLite stored them silently: both refuse alike now."""
    dataset_id = _dataset()
    run_id = runs.create_run("selftest", dataset_id, {}, seed=0)
    candidate_ids = _candidates(dataset_id, 1)
    tables = ("datasets", "images", "decisions", "runs", "metrics")
    with read_session() as s:
        before = [s.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables]
    with pytest.raises(validate.InvalidValue, match=message):
        write(dataset_id, run_id, candidate_ids)
    with read_session() as s:
        after = [s.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables]
    assert after == before
    assert decisions.get_review_settings(dataset_id) == {}


def test_json_columns_refuse_nan_below_the_query_modules(wbc_home):
    """A write that skips db.validate still cannot store NaN (the engine's JSON serializer refuses it)."""
    refused = (StatementError, ValueError)  # SQLAlchemy wraps the serializer's ValueError on SQLite, psycopg does not
    with pytest.raises(refused, match="Out of range float values are not JSON compliant"), write_session() as s:
        s.add(Dataset(name="x", kind="real", source="", class_names=["a"], split_config={"v": math.inf},
                      split_hash="", import_report={}))
    assert datasets.list_datasets() == []


def test_a_failed_result_still_closes_the_run(wbc_home):
    run_id = runs.create_run("selftest", None, {}, seed=0)
    runs.mark_started(run_id, pid=1, hostname="h")
    with pytest.raises(validate.InvalidValue, match="not a finite number at test.macro_f1"):
        runs.finish_run(run_id, "succeeded", result={"test": {"macro_f1": math.nan}})
    info = runs.get_run(run_id)
    assert info.status == "failed" and "not a finite number at test.macro_f1" in info.error


_BUILD = """
import os, sys, time
from wbc_core import context
while not os.path.exists(sys.argv[2]):  # every process waits here, imports done, so all three start at once
    time.sleep(0.005)
context.build("cli", home=sys.argv[1], db_url=sys.argv[3] or None).close()
"""


def test_three_processes_migrate_a_fresh_database_at_once(empty_db_url, tmp_path):
    """Three processes starting at once on an empty database: 2 of 3 crashed while migrating on PostgreSQL."""
    from alembic.runtime.migration import MigrationContext

    from db.engine import Database
    from db.migrate import head_revision

    home, go = tmp_path / "home", tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if k not in ("WBC_HOME", "WBC_DB_URL")}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(home), str(go), empty_db_url or ""], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    go.touch()
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n----\n".join(outputs)
    database = Database(empty_db_url or f"sqlite:///{home / 'wbc.db'}")
    try:
        with database.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    finally:
        database.dispose()


def test_the_newest_migration_goes_down_and_up_again(empty_db_url, tmp_path):
    from alembic import command

    from db.engine import Database
    from db.migrate import alembic_config, current_revision, ensure_schema, head_revision

    database = Database(empty_db_url or f"sqlite:///{tmp_path / 'wbc.db'}")
    try:
        ensure_schema(database)
        with database.engine.begin() as conn:
            cfg = alembic_config(database.url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
            command.upgrade(cfg, "head")
        assert current_revision(database) == head_revision()
    finally:
        database.dispose()


def test_blind_items_get_their_cells_class_when_made_and_from_migration_0012(wbc_home):
    """A blind item carries its real cell's class (the blind queue reads a class's items from an index):
    add_blind_items copies it, and migration 0012 fills it for items made before it (down and up again here)."""
    from alembic import command

    from db.migrate import alembic_config

    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, [
        dict(origin="real", class_name=c, split="val", sha256=f"r{c}{i}", path=f"r{c}{i}", width=8, height=8)
        for c in "ab" for i in range(3)])
    real = [r.id for r in datasets.real_images(dataset_id)]
    assert decisions.add_blind_items(dataset_id, "cem", [(i, 0.5) for i in real]) == len(real)

    def classes() -> dict[int, str | None]:
        with read_session() as s:
            return dict(s.execute(text("SELECT image_id, class_name FROM blind_items")).all())

    truth = {r.id: r.class_name for r in datasets.real_images(dataset_id)}
    assert classes() == truth
    engine = get_engine()
    with engine.begin() as conn:
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011_acceptance_walk_indexes")
        command.upgrade(cfg, "head")
    assert classes() == truth
