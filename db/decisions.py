"""Queries on review decisions. Decisions are only ever inserted; the current verdict of a
reviewer on a candidate is their latest non-adjudication decision row ('undo' makes it pending
again), and an admin's current ruling on a candidate is the latest adjudication row on it.

Blinded realism test: blind_items lists real val cells shown unannounced in one reviewer's queue.
Such a reviewer may decide those cells; nobody else may, and consensus never sees them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, null, select, union_all

from db import validate
from db.engine import read_session, write_session
from db.models import BlindItem, Dataset, Decision, Image, utcnow
from db.vocabulary import VERDICTS


class ReviewError(ValueError):
    """A decision that cannot be recorded (unknown candidate, bad verdict or class)."""


def record_decisions(image_ids: Iterable[int], reviewer: str, verdict: str, new_class: str | None = None,
                     reason: str | None = None, *, adjudication: bool = False) -> list[int]:
    """Append one decision per candidate in a single transaction; return the decision ids."""
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise ReviewError("a reviewer name is required")
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if verdict == "relabel" and not new_class:
        raise ReviewError("a relabel decision needs the new class")
    validate.text(reviewer, "the reviewer name", validate.REVIEWER_MAX)
    validate.text(new_class, "the new class", validate.CLASS_NAME_MAX)
    validate.text(reason, "the reason", validate.REASON_MAX)
    if not ids:
        return []
    with write_session() as s:
        found = dict(s.execute(select(Image.id, Image.origin).where(Image.id.in_(ids))).all())
        missing = [i for i in ids if i not in found]
        if missing:
            raise ReviewError(f"no candidate with id {', '.join(map(str, missing[:10]))}")
        if verdict == "relabel":
            # DISTINCT over the datasets' ids, never over the JSON class lists (PostgreSQL's json has no equality).
            datasets_of = select(Image.dataset_id).where(Image.id.in_(ids)).distinct()
            for classes in s.scalars(select(Dataset.class_names).where(Dataset.id.in_(datasets_of))):
                if new_class not in classes:
                    raise ReviewError(f"unknown class {new_class!r}; classes: {', '.join(classes)}")
        real = [i for i in ids if found[i] != "synthetic"]
        if real and not adjudication:
            blind = set(s.scalars(select(BlindItem.image_id).where(BlindItem.reviewer == reviewer,
                                                                   BlindItem.image_id.in_(real))))
            real = [i for i in real if i not in blind]
        if real:
            raise ReviewError(f"images {real[:10]} are real cells, not candidates; only candidates are reviewed")
        now = utcnow()
        rows = [Decision(image_id=i, reviewer=reviewer, verdict=verdict, adjudication=adjudication,
                         new_class=new_class if verdict == "relabel" else None, reason=reason, created_at=now)
                for i in ids]
        s.add_all(rows)
        s.flush()
        return [row.id for row in rows]


def _latest_ids(reviewer: str | None = None, adjudication: bool = False):  # noqa: ANN202
    query = (select(func.max(Decision.id).label("decision_id"))
             .where(Decision.adjudication.is_(adjudication))
             .group_by(Decision.image_id, Decision.reviewer))
    if reviewer is not None:
        query = query.where(Decision.reviewer == reviewer)
    return query.subquery()


def current_decisions(dataset_id: int, reviewer: str | None = None, origin: str | None = "synthetic"
                      ) -> list[dict[str, Any]]:
    """Every reviewer's current (latest, not undone) verdict on the dataset's candidates.

    origin="synthetic" (default) keeps blind real cells out of everything built on this (consensus,
    agreement, curated set); origin="real" gives the blind-test verdicts; None gives both.
    """
    latest = _latest_ids(reviewer)
    query = (
        select(Decision.id, Decision.image_id, Decision.reviewer, Decision.verdict, Decision.new_class,
               Decision.reason, Decision.created_at, Image.class_name)
        .join(latest, Decision.id == latest.c.decision_id)
        .join(Image, Image.id == Decision.image_id)
        .where(Image.dataset_id == dataset_id, Decision.verdict != "undo")
    )
    if origin is not None:
        query = query.where(Image.origin == origin)
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query.order_by(Decision.id))]


def decision_rows_after(dataset_id: int, after_id: int) -> list[dict[str, Any]]:
    """Every decision row on the dataset's images (votes, undos, adjudications) with id > after_id, oldest first.

    For in-memory tallies (wbc_core.decision_tally): rows are only ever added, so these rows are all that changed.
    """
    query = (
        select(Decision.id, Decision.image_id, Decision.reviewer, Decision.verdict, Decision.new_class,
               Decision.adjudication, Image.class_name, Image.origin)
        .join(Image, Image.id == Decision.image_id)
        # "+ 0" keeps SQLite off the images index on dataset_id: walking 100k candidates to find the few new
        # decisions took ~22 ms; led by the decisions' primary-key range it takes ~1 ms (PostgreSQL plans the same).
        .where((Image.dataset_id + 0) == dataset_id, Decision.id > after_id)
        .order_by(Decision.id)
    )
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query)]


def current_adjudications(dataset_id: int) -> list[dict[str, Any]]:
    """The standing adjudication per candidate (latest adjudication row, withdrawn ones left out)."""
    latest = (select(func.max(Decision.id).label("decision_id")).where(Decision.adjudication.is_(True))
              .group_by(Decision.image_id).subquery())
    query = (
        select(Decision.id, Decision.image_id, Decision.reviewer, Decision.verdict, Decision.new_class,
               Decision.reason, Decision.created_at, Image.class_name)
        .join(latest, Decision.id == latest.c.decision_id)
        .join(Image, Image.id == Decision.image_id)
        .where(Image.dataset_id == dataset_id, Image.origin == "synthetic", Decision.verdict != "undo")
    )
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query.order_by(Decision.id))]


def decision_history(image_id: int) -> list[dict[str, Any]]:
    """Every decision ever recorded on one candidate, oldest first."""
    with read_session() as s:
        rows = s.execute(select(Decision.id, Decision.reviewer, Decision.verdict, Decision.new_class,
                                Decision.reason, Decision.adjudication, Decision.created_at)
                         .where(Decision.image_id == image_id).order_by(Decision.id))
        return [dict(r._mapping) for r in rows]


def last_effective_decisions(dataset_id: int, reviewer: str, n: int = 1) -> list[dict[str, Any]]:
    """The reviewer's n most recent decisions that still stand (for undo), newest first."""
    latest = _latest_ids(reviewer)
    query = (
        select(Decision.id, Decision.image_id, Decision.verdict, Image.class_name)
        .join(latest, Decision.id == latest.c.decision_id)
        .join(Image, Image.id == Decision.image_id)
        .where(Image.dataset_id == dataset_id, Decision.verdict != "undo")
        .order_by(Decision.id.desc())
        .limit(n)
    )
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query)]


def candidate_counts(dataset_id: int) -> dict[str, int]:
    """Number of candidates per intended class."""
    with read_session() as s:
        rows = s.execute(select(Image.class_name, func.count()).where(
            Image.dataset_id == dataset_id, Image.origin == "synthetic").group_by(Image.class_name))
        return {c: int(n) for c, n in rows}


def candidate_counts_with_recent(dataset_id: int, window: int) -> tuple[dict[str, int], list[int]]:
    """(candidates per intended class, the ids of those within `window` ids of the highest), in one snapshot."""
    mine = (Image.dataset_id == dataset_id, Image.origin == "synthetic")
    newest = select(func.max(Image.id)).where(*mine).scalar_subquery()
    # One statement, so PostgreSQL reads the counts and the window from the same snapshot (READ COMMITTED takes
    # one per statement): a candidate committed in between would otherwise be taken as counted without being so.
    both = union_all(
        select(Image.class_name, func.count().label("n"), null().label("id")).where(*mine).group_by(Image.class_name),
        select(Image.class_name, null().label("n"), Image.id).where(*mine, Image.id > newest - window))
    counts: dict[str, int] = {}
    recent: list[int] = []
    with read_session() as s:
        for class_name, n, image_id in s.execute(both):
            if image_id is None:
                counts[class_name] = int(n)
            else:
                recent.append(int(image_id))
    return counts, recent


def candidates_after(dataset_id: int, after_id: int) -> list[tuple[int, str]]:
    """(id, intended class) of the dataset's candidates with id > after_id, oldest first (for running counts)."""
    # "+ 0" keeps SQLite off the images indexes that start with dataset_id: it walked all 1M of the dataset's
    # entries (70 ms at every key press) to find the few above after_id, which the primary key reaches directly.
    with read_session() as s:
        return [(int(i), c) for i, c in s.execute(
            select(Image.id, Image.class_name).where((Image.dataset_id + 0) == dataset_id,
                                                     Image.origin == "synthetic", Image.id > after_id)
            .order_by(Image.id))]


def decisions_since(reviewer: str, since: datetime) -> tuple[int, datetime | None]:
    """How many cells the reviewer decided since a time (undo and adjudication excluded), and the first one's time."""
    with read_session() as s:
        n, first = s.execute(select(func.count(), func.min(Decision.created_at)).where(
            Decision.reviewer == reviewer, Decision.created_at >= since, Decision.verdict != "undo",
            Decision.adjudication.is_(False))).one()
    return int(n), first


# -- review settings -------------------------------------------------------------------------------------

def get_review_settings(dataset_id: int) -> dict[str, Any]:
    """The dataset's stored review settings JSON ({} when never set)."""
    with read_session() as s:
        ds = s.get(Dataset, dataset_id)
        if ds is None:
            raise LookupError(f"no dataset with id {dataset_id}")
        return dict(ds.review_settings or {})


def set_review_settings(dataset_id: int, settings: dict[str, Any]) -> None:
    """Replace the dataset's review settings JSON."""
    validate.json_value(settings, "the review settings")
    with write_session() as s:
        ds = s.get(Dataset, dataset_id)
        if ds is None:
            raise LookupError(f"no dataset with id {dataset_id}")
        ds.review_settings = dict(settings)


# -- blinded realism test ---------------------------------------------------------------------------------

def add_blind_items(dataset_id: int, reviewer: str, items: list[tuple[int, float]]) -> int:
    """Record (real image id, hash position) blind items for a reviewer, skipping ones already there."""
    validate.text(reviewer, "the reviewer name", validate.REVIEWER_MAX, required=True)
    with write_session() as s:
        have = set(s.scalars(select(BlindItem.image_id).where(BlindItem.reviewer == reviewer,
                                                              BlindItem.dataset_id == dataset_id)))
        wanted = [(i, p) for i, p in items if i not in have]
        classes: dict[int, str] = {}
        for start in range(0, len(wanted), 5000):  # chunks: SQLite limits the bound parameters of one statement
            chunk = [i for i, _ in wanted[start:start + 5000]]
            classes.update(s.execute(select(Image.id, Image.class_name).where(Image.id.in_(chunk))).all())
        rows = [BlindItem(dataset_id=dataset_id, image_id=i, reviewer=reviewer, position=p, class_name=classes.get(i))
                for i, p in wanted]
        s.add_all(rows)
        return len(rows)


def blind_items(dataset_id: int, reviewer: str | None = None) -> list[dict[str, Any]]:
    """Blind items {image_id, reviewer, class_name} of a dataset (optionally of one reviewer)."""
    query = (select(BlindItem.image_id, BlindItem.reviewer, Image.class_name)
             .join(Image, Image.id == BlindItem.image_id).where(BlindItem.dataset_id == dataset_id))
    if reviewer is not None:
        query = query.where(BlindItem.reviewer == reviewer)
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query.order_by(BlindItem.id))]


def is_blind_item(image_id: int, reviewer: str) -> bool:
    """Whether the image is a hidden real cell in that reviewer's queue."""
    with read_session() as s:
        return s.scalar(select(BlindItem.id).where(BlindItem.image_id == image_id,
                                                   BlindItem.reviewer == reviewer)) is not None


# -- export -------------------------------------------------------------------------------------------------

def export_rows(dataset_id: int) -> list[dict[str, Any]]:
    """Every image of a dataset with its provenance columns, in id order."""
    query = select(Image.id, Image.origin, Image.class_name, Image.split, Image.sha256, Image.path, Image.source,
                   Image.gan_run_id, Image.checkpoint_step, Image.seed).where(Image.dataset_id == dataset_id)
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query.order_by(Image.id))]


def dataset_of_images(image_ids: Iterable[int]) -> dict[int, int]:
    """image id -> dataset id for the ids that exist."""
    ids = list(image_ids)
    with read_session() as s:
        return dict(s.execute(select(Image.id, Image.dataset_id).where(Image.id.in_(ids))).all())
