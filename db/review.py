"""Queries on review decisions. Decisions are only ever inserted; the current verdict of a
reviewer on a candidate is their latest decision row ('undo' makes it pending again)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, func, or_, select

from db.engine import read_session, write_session
from db.models import VERDICTS, Decision, Image

QUEUE_STATES = ("pending", "decided", "all")


class ReviewError(ValueError):
    """A decision that cannot be recorded (unknown candidate, bad verdict or class)."""


def record_decisions(image_ids: Iterable[int], reviewer: str, verdict: str, new_class: str | None = None,
                     reason: str | None = None) -> list[int]:
    """Append one decision per candidate in a single transaction; return the decision ids."""
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise ReviewError("a reviewer name is required")
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if verdict == "relabel" and not new_class:
        raise ReviewError("a relabel decision needs the new class")
    if not ids:
        return []
    with write_session() as s:
        found = dict(s.execute(select(Image.id, Image.origin).where(Image.id.in_(ids))).all())
        missing = [i for i in ids if i not in found]
        if missing:
            raise ReviewError(f"no candidate with id {', '.join(map(str, missing[:10]))}")
        real = [i for i in ids if found[i] != "synthetic"]
        if real:
            raise ReviewError(f"images {real[:10]} are real cells, not candidates; only candidates are reviewed")
        rows = [Decision(image_id=i, reviewer=reviewer, verdict=verdict,
                         new_class=new_class if verdict == "relabel" else None, reason=reason) for i in ids]
        s.add_all(rows)
        s.flush()
        return [row.id for row in rows]


def _latest_ids(reviewer: str | None = None):  # noqa: ANN202
    query = select(func.max(Decision.id).label("decision_id")).group_by(Decision.image_id, Decision.reviewer)
    if reviewer is not None:
        query = query.where(Decision.reviewer == reviewer)
    return query.subquery()


def review_queue(dataset_id: int, class_name: str, reviewer: str, state: str = "pending", limit: int = 48,
                 offset: int = 0, gan_run_id: int | None = None, order: str = "id") -> tuple[list[dict[str, Any]], int]:
    """One page of a class's candidates for a reviewer, with their own current verdict, and the total count."""
    if state not in QUEUE_STATES:
        raise ReviewError(f"state must be one of {QUEUE_STATES}")
    latest = _latest_ids(reviewer)
    mine = select(Decision).join(latest, Decision.id == latest.c.decision_id).subquery()
    query = (
        select(Image.id, Image.path, Image.class_name, Image.gan_run_id, Image.checkpoint_step, Image.judge_prob,
               Image.nearest_real_distance, mine.c.verdict, mine.c.new_class, mine.c.reason)
        .outerjoin(mine, mine.c.image_id == Image.id)
        .where(Image.dataset_id == dataset_id, Image.origin == "synthetic", Image.class_name == class_name)
    )
    if gan_run_id is not None:
        query = query.where(Image.gan_run_id == gan_run_id)
    is_pending = or_(mine.c.verdict.is_(None), mine.c.verdict == "undo")
    if state == "pending":
        query = query.where(is_pending)
    elif state == "decided":
        query = query.where(~is_pending)
    order_by = {
        "id": [Image.id],
        "judge_prob_desc": [Image.judge_prob.desc().nulls_last(), Image.id],
        "judge_prob_asc": [Image.judge_prob.asc().nulls_last(), Image.id],
        "nearest_real_desc": [Image.nearest_real_distance.desc().nulls_last(), Image.id],
        "nearest_real_asc": [Image.nearest_real_distance.asc().nulls_last(), Image.id],
    }.get(order)
    if order_by is None:
        raise ReviewError(f"unknown order {order!r}")
    with read_session() as s:
        total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = s.execute(query.order_by(*order_by).limit(limit).offset(offset)).all()
    return [dict(r._mapping) for r in rows], int(total)


def current_decisions(dataset_id: int, reviewer: str | None = None) -> list[dict[str, Any]]:
    """Every reviewer's current (latest, not undone) verdict on the dataset's candidates."""
    latest = _latest_ids(reviewer)
    query = (
        select(Decision.id, Decision.image_id, Decision.reviewer, Decision.verdict, Decision.new_class,
               Decision.reason, Decision.created_at, Image.class_name)
        .join(latest, Decision.id == latest.c.decision_id)
        .join(Image, Image.id == Decision.image_id)
        .where(Image.dataset_id == dataset_id, Decision.verdict != "undo")
    )
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query.order_by(Decision.id))]


def decision_history(image_id: int) -> list[dict[str, Any]]:
    """Every decision ever recorded on one candidate, oldest first."""
    with read_session() as s:
        rows = s.execute(select(Decision.id, Decision.reviewer, Decision.verdict, Decision.new_class,
                                Decision.reason, Decision.created_at)
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


def progress_by_reviewer(dataset_id: int) -> list[dict[str, Any]]:
    """Counts of current verdicts per reviewer, class and verdict."""
    latest = _latest_ids()
    query = (
        select(Decision.reviewer, Image.class_name, Decision.verdict, func.count().label("n"))
        .join(latest, Decision.id == latest.c.decision_id)
        .join(Image, Image.id == Decision.image_id)
        .where(and_(Image.dataset_id == dataset_id, Decision.verdict != "undo"))
        .group_by(Decision.reviewer, Image.class_name, Decision.verdict)
    )
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query)]
