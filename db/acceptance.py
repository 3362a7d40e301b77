"""Queries on acceptance models (one row per trained model of a dataset) and their scores of candidates.

A model's scores are advisory: they order the review queue and steer generation; nothing here touches decisions.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from db import validate
from db.engine import id_in, read_session, write_session
from db.models import AcceptanceModel, AcceptanceScore, Decision, Image, utcnow

_COLUMNS = ("id", "dataset_id", "version", "trained_on_decisions", "cv_auc", "calibration", "summary", "path",
            "run_id", "created_at")


def _row(model: AcceptanceModel) -> dict[str, Any]:
    return {k: getattr(model, k) for k in _COLUMNS}


def add_model(dataset_id: int, *, trained_on: int, cv_auc: float | None, calibration: dict[str, Any],
              summary: dict[str, Any], path: str, run_id: int | None = None,
              version: int | None = None) -> dict[str, Any]:
    """Record a newly trained model as the dataset's next version (or the one given); return its row."""
    validate.json_value(calibration, "the calibration curve")
    validate.json_value(summary, "the model summary")
    with write_session() as s:  # BEGIN IMMEDIATE on SQLite: max+1 cannot race; the unique key guards PostgreSQL
        last = s.scalar(select(func.max(AcceptanceModel.version)).where(AcceptanceModel.dataset_id == dataset_id))
        model = AcceptanceModel(dataset_id=dataset_id, version=version or int(last or 0) + 1,
                                trained_on_decisions=trained_on, cv_auc=cv_auc, calibration=calibration,
                                summary=summary, path=path, run_id=run_id,
                                created_at=utcnow())
        s.add(model)
        s.flush()
        return _row(model)


def next_version(dataset_id: int) -> int:
    """The version the dataset's next model gets."""
    with read_session() as s:
        last = s.scalar(select(func.max(AcceptanceModel.version)).where(AcceptanceModel.dataset_id == dataset_id))
        return int(last or 0) + 1


def latest_model(dataset_id: int) -> dict[str, Any] | None:
    """The dataset's newest model row, or None before the first one is trained."""
    with read_session() as s:
        model = s.scalars(select(AcceptanceModel).where(AcceptanceModel.dataset_id == dataset_id)
                          .order_by(AcceptanceModel.version.desc()).limit(1)).first()
        return _row(model) if model is not None else None


def get_model(model_id: int) -> dict[str, Any]:
    """One model row (LookupError when unknown)."""
    with read_session() as s:
        model = s.get(AcceptanceModel, model_id)
        if model is None:
            raise LookupError(f"no acceptance model with id {model_id}")
        return _row(model)


def set_scores(model_id: int, scores: Mapping[int, float]) -> int:
    """Store (replace) one model's p_accept for candidates; return how many."""
    rows = [{"image_id": int(i), "model_id": model_id, "p_accept": validate.finite(float(p), "an acceptance score")}
            for i, p in scores.items()]
    with write_session() as s:
        ids = [r["image_id"] for r in rows]
        for start in range(0, len(ids), 500):
            s.execute(delete(AcceptanceScore).where(AcceptanceScore.model_id == model_id,
                                                    AcceptanceScore.image_id.in_(ids[start:start + 500])))
        # One executemany, not ORM objects: 2,000 ORM inserts held SQLite's one write lock 4x as long (57 vs 14 ms),
        # and a reviewer's next decision waited behind it while an acceptance model scored its candidates.
        if rows:
            s.execute(insert(AcceptanceScore), rows)
        # In the scores' own transaction: whoever sees the new count also sees these scores (ScoreMemo).
        s.execute(update(AcceptanceModel).where(AcceptanceModel.id == model_id)
                  .values(score_writes=AcceptanceModel.score_writes + 1))
    return len(rows)


# Candidates a ScoreMemo remembers before it starts again: ~100 bytes each, so ~20 MB at most.
SCORE_MEMO_MAX = 200_000


class ScoreMemo:
    """A process's memory of one dataset's latest acceptance model's scores of the candidates it was asked about
    (the decided queue by acceptance, db.review_queue), so each page reads only the ones it has not seen.

    A model's score of a candidate never changes (set_scores writes the model's own prediction for it), so a
    remembered score stays right for as long as its model is the one asked about. A candidate remembered as
    unscored may be scored later: those are forgotten when the model's score_writes has moved on. The caller
    reads score_writes with the model's id, before these lookups, so a write that commits in between is seen as
    new on the next call at the latest. Thread-safe: the Streamlit server's sessions share one per dataset.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: int | None = None
        self._writes: int | None = None
        self._scores: dict[int, float | None] = {}

    def scores(self, s, model_id: int, score_writes: int, ids: Sequence[int]) -> dict[int, float | None]:  # noqa: ANN001
        """id -> the model's score (None: unscored) for every id, reading from the session s only the unknown."""
        with self._lock:
            if self._model != model_id or len(self._scores) > SCORE_MEMO_MAX:
                self._model, self._writes, self._scores = model_id, score_writes, {}
            elif self._writes != score_writes:
                self._writes = score_writes
                self._scores = {i: p for i, p in self._scores.items() if p is not None}
            missing = [int(i) for i in ids if i not in self._scores]
        found: dict[int, float | None] = dict.fromkeys(missing)
        if missing:
            found.update(_scores_of(s, model_id, sorted(missing)))
        with self._lock:
            if (self._model, self._writes) == (model_id, score_writes):  # not a slower call from before a write
                self._scores.update(found)
            known = self._scores
            return {int(i): known.get(int(i), found.get(int(i))) for i in ids}


def _scores_of(s, model_id: int, ids: list[int]) -> dict[int, float]:  # noqa: ANN001
    """The model's scores of ids, the ids bound as one parameter and looked up by the (image, model) key."""
    model = AcceptanceScore.model_id
    # "+ 0" on SQLite only: without statistics it walked the model's score index (1M entries at 1M candidates) and
    # kept the listed ids, instead of one key lookup per id; PostgreSQL's estimates need the plain column.
    query = select(AcceptanceScore.image_id, AcceptanceScore.p_accept).where(
        (model + 0 if s.get_bind().dialect.name == "sqlite" else model) == model_id,
        id_in(s, ids, AcceptanceScore.image_id))
    return {int(i): float(p) for i, p in s.execute(query)}


def scores(model_id: int, image_ids: list[int] | None = None) -> dict[int, float]:
    """image id -> p_accept of one model (all its scores, or those of the given images)."""
    with read_session() as s:
        if image_ids is not None:
            return _scores_of(s, model_id, sorted({int(i) for i in image_ids}))
        query = select(AcceptanceScore.image_id, AcceptanceScore.p_accept).where(AcceptanceScore.model_id == model_id)
        return {int(i): float(p) for i, p in s.execute(query)}


def score_count(model_id: int) -> int:
    """How many candidates a model scored."""
    with read_session() as s:
        return int(s.scalar(select(func.count()).where(AcceptanceScore.model_id == model_id)) or 0)


def _decision_rows(dataset_id: int, after_id: int):  # noqa: ANN202 - a select
    # "+ 0" keeps SQLite off the images indexes that start with dataset_id: at 1M candidates it walked them all
    # and looked up decisions for each (240 ms on every tenth key press) instead of reading the few decision rows
    # above after_id by primary key and their images by theirs.
    return (select(Decision.id, Decision.verdict).join(Image, Image.id == Decision.image_id)
            .where(Decision.id > after_id, (Image.dataset_id + 0) == dataset_id, Image.origin == "synthetic"))


def decision_counts(dataset_id: int, after_id: int = 0, limit: int | None = None) -> dict[str, int]:
    """Decision rows on the dataset's candidates by verdict (every row, 'undo' too), of those with an id above
    after_id (a primary-key range), and of the newest `limit` of those when given (a bounded read)."""
    rows = _decision_rows(dataset_id, after_id)
    if limit is not None:
        rows = rows.order_by(Decision.id.desc()).limit(limit)
    rows = rows.subquery()
    query = select(rows.c.verdict, func.count()).group_by(rows.c.verdict)
    with read_session() as s:
        return {str(v): int(n) for v, n in s.execute(query)}


def decisions_since(dataset_id: int, after_id: int, limit: int) -> int:
    """How many decision rows on the dataset's candidates have an id above after_id, counting no further than
    limit: the check after every decision reads at most `limit` rows, however large the dataset."""
    rows = _decision_rows(dataset_id, after_id).order_by(Decision.id).limit(limit).subquery()
    with read_session() as s:
        return int(s.scalar(select(func.count()).select_from(rows)) or 0)


def last_decision_id() -> int:
    """The newest decision row's id (0 when there is none)."""
    with read_session() as s:
        return int(s.scalar(select(func.max(Decision.id))) or 0)


def has_judge_scores(dataset_id: int) -> bool:
    """Whether any candidate of the dataset was scored by the judge (the acceptance model builds on it)."""
    with read_session() as s:
        return s.scalar(select(Image.id).where(Image.dataset_id == dataset_id, Image.origin == "synthetic",
                                               Image.judge_prob.is_not(None)).limit(1)) is not None


def set_steered(image_ids: list[int], model_id: int | None) -> None:
    """Mark candidates as sampled with steering by a model (steered False with no model otherwise)."""
    with write_session() as s:
        for start in range(0, len(image_ids), 500):
            for image in s.scalars(select(Image).where(Image.id.in_(image_ids[start:start + 500]))):
                image.steered = model_id is not None
                image.steer_model_id = model_id
