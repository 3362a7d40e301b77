"""Queries on review decisions. Decisions are only ever inserted; the current verdict of a
reviewer on a candidate is their latest non-adjudication decision row ('undo' makes it pending
again), and an admin's current ruling on a candidate is the latest adjudication row on it.

Blinded realism test: blind_items lists real val cells shown unannounced in one reviewer's queue.
Such a reviewer may decide those cells; nobody else may, and consensus never sees them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Float, and_, cast, func, literal, null, select, union_all
from sqlalchemy.orm import aliased

from db import validate
from db.engine import read_session, write_session
from db.models import AcceptanceModel, AcceptanceScore, BlindItem, Dataset, Decision, Image, utcnow
from db.vocabulary import VERDICTS

QUEUE_STATES = ("pending", "decided", "all")
QUEUE_ORDERS = ("id", "judge_prob_desc", "judge_prob_asc", "nearest_real_desc", "nearest_real_asc",
                "p_accept_desc", "p_accept_uncertain")  # the last two: the dataset's latest acceptance model
# A NULL sort key typed as a number: PostgreSQL types a bare NULL in a subquery's output as text, which a UNION
# with scored rows then refuses.
NO_KEY = cast(null(), Float)
# Per-cell provenance that only candidates have: hidden from a reviewer in blind mode, since a real cell
# would otherwise stand out by its empty GAN run.
PROVENANCE_KEYS = ("gan_run_id", "checkpoint_step", "judge_prob", "nearest_real_distance")


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


def _queue_part(reviewer: str, state: str, provenance: bool):  # noqa: ANN202
    """SELECT of queue rows with the reviewer's own current decision, joined per image by index seek."""
    # A correlated max(id) per image seeks ix_decisions_current directly: it costs the same for a reviewer
    # with 10 or 10,000 decisions, unlike a GROUP BY over all of their decisions.
    mine_id = (select(func.max(Decision.id))
               .where(Decision.image_id == Image.id, Decision.reviewer == reviewer, Decision.adjudication.is_(False))
               .correlate(Image).scalar_subquery())
    cols = [Image.id, Image.path, Image.sha256, Image.class_name]
    cols += [getattr(Image, k) if provenance else null().label(k) for k in PROVENANCE_KEYS]
    query = select(*cols, Decision.verdict, Decision.new_class, Decision.reason).outerjoin(
        Decision, Decision.id == mine_id)
    # The state is filtered by a (NOT) EXISTS on the reviewer's standing verdict rather than on the joined verdict
    # column: PostgreSQL estimates the semi-join from statistics and walks the page's index, where a filter on the
    # outer-joined verdict made it expect 1% pending rows, sort the whole class and take 1.3 s at 1M candidates.
    # Decided rows come from the reviewer's own standing decisions (thousands at most), not from a walk of the class.
    if state == "pending":
        mine, later = aliased(Decision), aliased(Decision)
        standing = (select(mine.id).where(mine.image_id == Image.id, mine.reviewer == reviewer,
                                          mine.adjudication.is_(False), mine.verdict != "undo",
                                          ~select(later.id).where(later.image_id == mine.image_id,
                                                                  later.reviewer == reviewer,
                                                                  later.adjudication.is_(False),
                                                                  later.id > mine.id).exists())
                    .correlate(Image).exists())
        query = query.where(~standing)
    elif state == "decided":
        query = query.where(Image.id.in_(_standing_images(reviewer)))
    return query


def _standing_images(reviewer: str):  # noqa: ANN202
    """SELECT of the image ids on which the reviewer's latest (non-adjudication) decision is not an undo."""
    mine, later = aliased(Decision), aliased(Decision)
    return select(mine.image_id).where(
        mine.reviewer == reviewer, mine.adjudication.is_(False), mine.verdict != "undo",
        ~select(later.id).where(later.image_id == mine.image_id, later.reviewer == reviewer,
                                later.adjudication.is_(False), later.id > mine.id).exists())


def review_queue(dataset_id: int, class_name: str, reviewer: str, state: str = "pending", limit: int = 48,
                 offset: int = 0, gan_run_id: int | None = None, order: str = "id",
                 checkpoint_step: int | None = None, image_ids: Sequence[int] | None = None,
                 candidate_total: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of a class's candidates for a reviewer, with their own current verdict, and the total count.

    candidate_total: how many candidates match, when the caller keeps that count (wbc_core.decision_tally);
    None counts them here, a walk of the class's index entries (tens of ms at 1M candidates).

    image_ids keeps only those candidates (a selection handed over from the embedding map); no blind real cells
    are mixed into such a hand-picked queue.

    A reviewer in blind mode also gets their blind real cells, interleaved at stable hashed positions
    and with the same keys; provenance keys are then None on every row of that reviewer's queue.
    """
    if state not in QUEUE_STATES:
        raise ReviewError(f"state must be one of {QUEUE_STATES}")
    if order not in QUEUE_ORDERS:
        raise ReviewError(f"unknown order {order!r}; one of {', '.join(QUEUE_ORDERS)}")
    besides_dataset = [Image.origin == "synthetic", Image.class_name == class_name]
    if gan_run_id is not None:
        besides_dataset.append(Image.gan_run_id == gan_run_id)
    if checkpoint_step is not None:
        besides_dataset.append(Image.checkpoint_step == checkpoint_step)
    if image_ids is not None:
        besides_dataset.append(Image.id.in_(sorted({int(i) for i in image_ids})))
    where = [Image.dataset_id == dataset_id, *besides_dataset]
    column = {"judge_prob": Image.judge_prob, "nearest_real": Image.nearest_real_distance}.get(order.rsplit("_", 1)[0])
    with read_session() as s:
        blind_mode = s.scalar(select(BlindItem.id).where(BlindItem.dataset_id == dataset_id,
                                                         BlindItem.reviewer == reviewer).limit(1)) is not None
        # A run or step filter inspects one GAN run's output: real cells belong to none, and mixing them
        # into a small run's view would inflate their share there.
        with_blind = blind_mode and gan_run_id is None and checkpoint_step is None and image_ids is None
        cand = _queue_part(reviewer, state, not blind_mode).where(*where)
        descending = order.endswith("_desc")
        key_range = None
        if order.startswith("p_accept_"):
            model_id = s.scalar(select(AcceptanceModel.id).where(AcceptanceModel.dataset_id == dataset_id)
                                .order_by(AcceptanceModel.version.desc()).limit(1))
            uncertain = order == "p_accept_uncertain"
            # "+ 0": SQLite (no statistics) would otherwise walk the whole class by ix_images_queue, look up each
            # score and sort (87 vs 2 ms for 125k candidates); the score index's walk reaches the page directly.
            by_score = _queue_part(reviewer, state, not blind_mode).where((Image.dataset_id + 0) == dataset_id,
                                                                          *besides_dataset)
            parts = _acceptance_parts(s, by_score, cand, model_id or -1, uncertain, offset + limit)
            column, key_range = None, _acceptance_range(s, model_id, uncertain)
        else:
            parts = _candidate_parts(cand, column, descending, offset + limit)
        total = _queue_count(s, reviewer, state, where) if candidate_total is None else candidate_total
        if with_blind:
            blind = _blind_part(s, dataset_id, class_name, reviewer, state, where, column, key_range)
            parts.append(select(*blind.subquery().c))
            total += s.scalar(select(func.count()).select_from(blind.subquery())) or 0
        query = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
        key = query.c.k_1.desc().nulls_last() if descending else query.c.k_1.asc().nulls_last()
        page = select(*[c for c in query.c if not c.name.startswith("k_")]).order_by(key, query.c.k_id, query.c.id)
        rows = s.execute(page.limit(limit).offset(offset)).all()
    return [dict(r._mapping) for r in rows], int(total)


def _candidate_parts(cand, column, descending: bool, need: int) -> list:  # noqa: ANN001
    """The candidates' first `need` rows in the page's order, as index walks that stop early.

    Scored rows (key ascending or descending, then id) and unscored ones (by id, after them: NULLS LAST) are two
    parts, so each one is a plain ordered walk of an index of images (ix_images_queue, 0010's score indexes) on
    SQLite and PostgreSQL alike; sorting the whole joined class instead took 0.4-1.4 s at 1M candidates.
    """
    if column is None:
        parts = [cand.add_columns(Image.id.label("k_id"), Image.id.label("k_1")).order_by(Image.id)]
    else:
        keyed = cand.add_columns(Image.id.label("k_id"), column.label("k_1"))
        parts = [keyed.where(column.is_not(None)).order_by(column.desc() if descending else column.asc(), Image.id),
                 # ordered by the (NULL) key too, so the ascending score index serves this part as well
                 keyed.where(column.is_(None)).order_by(column.asc(), Image.id)]
    return [select(*part.limit(need).subquery().c) for part in parts]


def _queue_count(s, reviewer: str, state: str, where: list) -> int:  # noqa: ANN001
    """How many candidates match `where` in the reviewer's state, in one pass over the class's index entries.

    The reviewer's standing decisions (thousands at most) are joined to that pass by image id, so the count costs
    an index-only walk of the class plus the reviewer's own decisions, not a decision lookup per candidate."""
    if state == "all":
        return int(s.scalar(select(func.count()).select_from(Image).where(*where)) or 0)
    standing = _standing_images(reviewer).subquery()
    every, decided = s.execute(select(func.count(), func.count(standing.c.image_id)).select_from(Image)
                               .outerjoin(standing, standing.c.image_id == Image.id).where(*where)).one()
    return int(decided if state == "decided" else every - decided)


def _acceptance_parts(s, by_score, cand, model_id: int, uncertain: bool, need: int) -> list:  # noqa: ANN001
    """The first `need` candidates by the model's score, as ordered walks of ix_acceptance_scores_asc/_desc.

    "Most likely accepted" walks the scores down from the top; "most uncertain" walks up and down from 0.5 and
    the two meet in the page's sort. Each walk orders by (score, image id) exactly as its index does (0011), so
    PostgreSQL stops after the page instead of sorting all of the model's scores. Both join images by primary
    key, where ordering by a per-row score lookup sorted the whole class (0.5-1 s at 1M candidates). Unscored
    candidates (sorted last, by id) are fetched only when the scored ones cannot fill the page: their anti-join
    would walk the whole class when all are scored.
    by_score and cand are the same queue rows; by_score's filters leave the score index to lead the join.
    """
    score = AcceptanceScore
    joined = by_score.join(score, and_(score.image_id == Image.id, score.model_id == model_id))
    if uncertain:
        half = literal(0.5)
        walks = [joined.where(score.p_accept >= half).add_columns(Image.id.label("k_id"),
                                                                  (score.p_accept - half).label("k_1"))
                 .order_by(score.p_accept.asc(), score.image_id),
                 joined.where(score.p_accept < half).add_columns(Image.id.label("k_id"),
                                                                 (half - score.p_accept).label("k_1"))
                 .order_by(score.p_accept.desc(), score.image_id)]
    else:
        walks = [joined.add_columns(Image.id.label("k_id"), score.p_accept.label("k_1"))
                 .order_by(score.p_accept.desc(), score.image_id)]
    parts = [select(*walk.limit(need).subquery().c) for walk in walks]
    scored = s.scalar(select(func.count()).select_from(union_all(*parts).subquery() if len(parts) > 1
                                                      else parts[0].subquery())) or 0
    if scored < need:
        unscored = ~select(score.image_id).where(score.image_id == Image.id, score.model_id == model_id).exists()
        parts.append(select(*cand.where(unscored).add_columns(Image.id.label("k_id"), NO_KEY.label("k_1"))
                            .order_by(Image.id).limit(need).subquery().c))
    return parts


def _acceptance_range(s, model_id: int | None, uncertain: bool) -> tuple[float | None, float | None]:  # noqa: ANN001
    """(lowest, highest) sort key of the model's scores, from the ends of its index (for blind cells' keys);
    (None, None) without scores."""
    if model_id is None:
        return None, None
    lo, hi = s.execute(select(func.min(AcceptanceScore.p_accept), func.max(AcceptanceScore.p_accept))
                       .where(AcceptanceScore.model_id == model_id)).one()
    if lo is None:
        return None, None
    return (0.0, max(abs(lo - 0.5), abs(hi - 0.5))) if uncertain else (float(lo), float(hi))


def _blind_part(s, dataset_id: int, class_name: str, reviewer: str, state: str, where: list, column,  # noqa: ANN001, ANN202
                key_range: tuple[float | None, float | None] | None = None):
    """The reviewer's blind real cells of the class, with sort keys spread over the candidates' key range
    (key_range when the caller knows it: the acceptance scores' range, read from their index's ends)."""
    # Sort keys are interpolated into the candidates' range by each item's stored hash position, so the
    # real cells sit among the candidates in every order (never all first or last). Real ids are smaller
    # than candidate ids (imported earlier), and real cells have no judge scores.
    if column is not None and key_range is None:
        lo_id, hi_id, lo, hi = s.execute(select(func.min(Image.id), func.max(Image.id), func.min(column),
                                                func.max(column)).where(*where)).one()
    else:  # key_range: the acceptance scores' (None, None without scores: by id only); no column: the key is the id
        lo_id, hi_id = s.execute(select(func.min(Image.id), func.max(Image.id)).where(*where)).one()
        lo, hi = key_range if key_range is not None else (lo_id, hi_id)
    lo_id, hi_id = lo_id or 0, hi_id or 0
    k_id = literal(float(lo_id)) + BlindItem.position * float(hi_id - lo_id)
    # Unscored classes sort every candidate by id only; so do the real cells then.
    k_1 = NO_KEY if lo is None else literal(float(lo)) + BlindItem.position * float(hi - lo)
    return (_queue_part(reviewer, state, False)
            .join(BlindItem, and_(BlindItem.image_id == Image.id, BlindItem.reviewer == reviewer))
            .where(BlindItem.dataset_id == dataset_id, Image.class_name == class_name)
            .add_columns(k_id.label("k_id"), k_1.label("k_1")))


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
        rows = [BlindItem(dataset_id=dataset_id, image_id=i, reviewer=reviewer, position=p)
                for i, p in items if i not in have]
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
