"""The review queue: one page of a class's candidates for a reviewer, in the page's order, with the count.

Every order is an index walk that stops after the page, or (the decided state) a sort of the reviewer's own
standing decisions, thousands at most: never a sort of the whole class (0.4-1.4 s at 1M candidates). Blind real
cells of a reviewer in blind mode are interleaved at stable hashed positions (`_blind_part`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Float, and_, cast, func, literal, null, select, union_all
from sqlalchemy.orm import aliased

from db.decisions import ReviewError
from db.engine import read_session
from db.models import AcceptanceModel, AcceptanceScore, BlindItem, Decision, Image

QUEUE_STATES = ("pending", "decided", "all")
QUEUE_ORDERS = ("id", "judge_prob_desc", "judge_prob_asc", "nearest_real_desc", "nearest_real_asc",
                "p_accept_desc", "p_accept_uncertain")  # the last two: the dataset's latest acceptance model
# A NULL sort key typed as a number: PostgreSQL types a bare NULL in a subquery's output as text, which a UNION
# with scored rows then refuses.
NO_KEY = cast(null(), Float)
# Per-cell provenance that only candidates have: hidden from a reviewer in blind mode, since a real cell
# would otherwise stand out by its empty GAN run.
PROVENANCE_KEYS = ("gan_run_id", "checkpoint_step", "judge_prob", "nearest_real_distance")


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
        by_acceptance, uncertain, model_id = order.startswith("p_accept_"), order == "p_accept_uncertain", None
        if by_acceptance:
            model_id = s.scalar(select(AcceptanceModel.id).where(AcceptanceModel.dataset_id == dataset_id)
                                .order_by(AcceptanceModel.version.desc()).limit(1))
        if state == "decided" and order != "id":
            # The decided state sorts the reviewer's own standing decisions in the class (thousands at most).
            # Walking the class's index in the key's order for them instead, PostgreSQL passed ~70k entries of
            # 125k for a page of a reviewer with 5,000 decisions (300-370 ms at 1M candidates). By id, that walk
            # stays the faster one (the id index meets decided candidates evenly spread: ~20 ms).
            score = (model_id or -1, uncertain) if by_acceptance else None
            parts = _decided_parts(_queue_part(reviewer, "all", not blind_mode),
                                   [*where, Image.id.in_(_standing_images(reviewer))], column, score, descending,
                                   offset + limit)
            if by_acceptance:
                column, key_range = None, _acceptance_range(s, model_id, uncertain)
        elif by_acceptance:
            # "+ 0" on SQLite only: without statistics it would otherwise walk the whole class by ix_images_queue,
            # look up each score and sort (87 vs 2 ms for 125k candidates); the score index's walk reaches the page
            # directly. PostgreSQL estimates an expression's equality at 0.5% of rows, so there it made the walk
            # look like a scan of every score for 624 rows and it sorted the class instead (0.2-0.4 s at 1M).
            on_sqlite = s.get_bind().dialect.name == "sqlite"
            dataset_match = (Image.dataset_id + 0) == dataset_id if on_sqlite else Image.dataset_id == dataset_id
            by_score = _queue_part(reviewer, state, not blind_mode).where(dataset_match, *besides_dataset)
            parts = _acceptance_parts(s, by_score, cand, model_id or -1, uncertain, offset + limit)
            column, key_range = None, _acceptance_range(s, model_id, uncertain)
        else:
            parts = _candidate_parts(cand, column, descending, offset + limit)
        total = _queue_count(s, reviewer, state, where) if candidate_total is None else candidate_total
        if with_blind:
            blind = _blind_part(s, dataset_id, class_name, reviewer, state, where, column, key_range).subquery()
            # Only the blind cells that can reach the page: all of them (1,500 of a class at 1M) doubled its cost.
            first = blind.c.k_1.desc().nulls_last() if descending else blind.c.k_1.asc().nulls_last()
            parts.append(select(*select(*blind.c).order_by(first, blind.c.k_id, blind.c.id).limit(offset + limit)
                                .subquery().c))
            total += s.scalar(select(func.count()).select_from(blind)) or 0
        query = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
        key = query.c.k_1.desc().nulls_last() if descending else query.c.k_1.asc().nulls_last()
        page = select(*[c for c in query.c if not c.name.startswith("k_")]).order_by(key, query.c.k_id, query.c.id)
        rows = s.execute(page.limit(limit).offset(offset)).all()
    return [dict(r._mapping) for r in rows], int(total)


def _decided_parts(rows, where: list, column, score: tuple[int, bool] | None, descending: bool,  # noqa: ANN001
                   need: int) -> list:
    """The first `need` of a small set of candidates (`where`: the reviewer's decided ones) by sorting them.

    The ids and keys are sorted first and the page's `need` rows joined to `rows` (the queue's columns and the
    reviewer's verdict) after, so the verdict lookup runs per page row, not per decided candidate. The key is an
    expression ("+ 0", or the score's distance from 0.5), so no database walks an index of the whole class in the
    key's order instead. score: (model id, uncertain) for the acceptance orders."""
    top = select(Image.id.label("top_id"))
    if score is not None:
        model_id, uncertain = score
        scores = AcceptanceScore
        top = top.outerjoin(scores, and_(scores.image_id == Image.id, scores.model_id == model_id))
        key = func.abs(scores.p_accept - 0.5) if uncertain else scores.p_accept + 0
    else:  # a judge or distance column (by id, review_queue keeps the walk)
        key = column + 0
    ordered = key.desc().nulls_last() if descending else key.asc().nulls_last()
    first = (top.add_columns(cast(key, Float).label("top_key")).where(*where).order_by(ordered, Image.id)
             .limit(need).subquery())
    keyed = rows.join(first, first.c.top_id == Image.id).add_columns(Image.id.label("k_id"),
                                                                     first.c.top_key.label("k_1"))
    return [select(*keyed.subquery().c)]


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
