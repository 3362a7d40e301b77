"""The review queue: one page of a class's candidates for a reviewer, in the page's order, with the count.

Every order is an index walk that stops after the page, or (the decided state) a sort of the reviewer's own
standing decisions, thousands at most: never a sort of the whole class (0.4-1.4 s at 1M candidates). Blind real
cells of a reviewer in blind mode are interleaved at stable hashed positions (`_blind_part`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Float, and_, cast, func, literal, null, select, union_all
from sqlalchemy.orm import aliased

from db.decisions import ReviewError
from db.engine import id_in, read_session
from db.models import AcceptanceModel, AcceptanceScore, BlindItem, Decision, Image

if TYPE_CHECKING:
    from db.acceptance import ScoreMemo

QUEUE_STATES = ("pending", "decided", "all")
QUEUE_ORDERS = ("id", "judge_prob_desc", "judge_prob_asc", "nearest_real_desc", "nearest_real_asc",
                "p_accept_desc", "p_accept_uncertain")  # the last two: the dataset's latest acceptance model
# A NULL sort key typed as a number: PostgreSQL types a bare NULL in a subquery's output as text, which a UNION
# with scored rows then refuses.
NO_KEY = cast(null(), Float)
# Index entries a decided page by a judge or distance key may walk before it sorts the reviewer's decisions
# instead (_decided_walk): ~8 ms of walking at worst, against the sort's ~50 ms at 1M candidates.
DECIDED_WALK = 4096
# Decided candidates handed over by id (the process's tally) up to this many; more are found in SQL instead (one
# statement's bound parameters stay well under SQLite's limit, and the lookups under ~50 ms at 1M candidates).
DECIDED_IDS_MAX = 10_000
# Rows a score walk reads beyond the page (_top_scored), for decisions undone since the tally's last read.
TOP_SCORED_SPARE = 16
# Per-cell provenance that only candidates have: hidden from a reviewer in blind mode, since a real cell
# would otherwise stand out by its empty GAN run.
PROVENANCE_KEYS = ("gan_run_id", "checkpoint_step", "judge_prob", "nearest_real_distance")
# Reviewers whose statement pieces a process keeps built (_queue_part, _state_filter, _standing_images): building
# them (aliased entities, correlated subqueries) took ~10 of a blind page's ~40 ms at 1M candidates, every call.
# SQLAlchemy statements are immutable, so one built piece serves every call and thread.
STATEMENT_CACHE = 256


@lru_cache(maxsize=STATEMENT_CACHE)
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
    state_filter = _state_filter(reviewer, state)
    return query if state_filter is None else query.where(state_filter)


@lru_cache(maxsize=STATEMENT_CACHE)
def _state_filter(reviewer: str, state: str):  # noqa: ANN202
    """The WHERE clause of the reviewer's state on Image rows (None for "all")."""
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
        return ~standing
    if state == "decided":
        return Image.id.in_(_standing_images(reviewer))
    return None


@lru_cache(maxsize=STATEMENT_CACHE)
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
                 candidate_total: int | None = None, decided_ids: Sequence[int] | None = None,
                 score_memo: ScoreMemo | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of a class's candidates for a reviewer, with their own current verdict, and the total count.

    candidate_total: how many candidates match, when the caller keeps that count (wbc_core.decision_tally);
    None counts them here, a walk of the class's index entries (tens of ms at 1M candidates).
    decided_ids: the reviewer's decided candidates of the class, when the caller keeps them (the same tally): the
    decided state then sorts those instead of finding them in SQL (each is still checked to stand).
    score_memo: the process's memory of the latest acceptance model's scores of them (db.acceptance.ScoreMemo),
    so that a decided page by acceptance reads only the scores it has not seen.

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
        descending = order.endswith("_desc")
        key_range, unscored = None, None  # unscored: a part added only when the page comes back short
        by_acceptance, uncertain, model_id = order.startswith("p_accept_"), order == "p_accept_uncertain", None
        score_writes = 0
        if by_acceptance:
            model_id, score_writes = s.execute(
                select(AcceptanceModel.id, AcceptanceModel.score_writes).where(AcceptanceModel.dataset_id == dataset_id)
                .order_by(AcceptanceModel.version.desc()).limit(1)).first() or (None, 0)
        if state == "decided" and order != "id":
            # By a judge or distance key, a bounded walk of the class's index in the page's order first; when it
            # does not fill the page, or by acceptance, a sort of the reviewer's own standing decisions in the
            # class (thousands at most). By id, the plain walk stays (decided candidates evenly spread: ~20 ms).
            rows = _queue_part(reviewer, "all", not blind_mode)
            walked = None
            if not by_acceptance and (candidate_total is None or candidate_total >= offset + limit):
                walked = _decided_walk(s, rows, reviewer, where, column, descending, offset + limit)
            if walked is not None:
                parts = walked
            else:
                score = (model_id or -1, uncertain) if by_acceptance else None
                if decided_ids is not None and len(decided_ids) <= DECIDED_IDS_MAX and len(besides_dataset) == 2:
                    memo = (score_memo, score_writes) if score_memo is not None and model_id else None
                    parts = _decided_from_ids(s, rows, reviewer, (dataset_id, class_name), decided_ids, column,
                                              score, descending, offset + limit, memo)
                else:
                    parts = _decided_parts(rows, [*where, Image.id.in_(_standing_images(reviewer))], column, score,
                                           descending, offset + limit)
        elif by_acceptance:
            # "+ 0" on SQLite only: without statistics it would otherwise walk the whole class by ix_images_queue,
            # look up each score and sort (87 vs 2 ms for 125k candidates); the score index's walk reaches the page
            # directly. PostgreSQL estimates an expression's equality at 0.5% of rows, so there it made the walk
            # look like a scan of every score for 624 rows and it sorted the class instead (0.2-0.4 s at 1M).
            on_sqlite = s.get_bind().dialect.name == "sqlite"
            dataset_match = (Image.dataset_id + 0) == dataset_id if on_sqlite else Image.dataset_id == dataset_id
            by_score = _queue_part(reviewer, state, not blind_mode).where(dataset_match, *besides_dataset)
            cand = _queue_part(reviewer, state, not blind_mode).where(*where)
            parts, unscored = _acceptance_parts(s, by_score, cand, model_id or -1, uncertain, offset + limit,
                                                count_first=with_blind)
        else:
            parts = _candidate_parts(_queue_part(reviewer, state, not blind_mode).where(*where), column, descending,
                                     offset + limit)
        if by_acceptance:  # the blind cells' keys then span the scores' range, not a column's
            column, key_range = None, _acceptance_range(s, model_id, uncertain) if with_blind else None
        total = _queue_count(s, reviewer, state, where) if candidate_total is None else candidate_total
        if with_blind:
            keys, blind_total = _blind_part(s, dataset_id, class_name, reviewer, state, where, column, key_range,
                                            descending, offset + limit)
            parts.append(keys)
            total += blind_total
        rows = s.execute(_page_of(parts, descending).limit(limit).offset(offset)).all()
        if unscored is not None and len(rows) < limit:
            # The scored candidates fell short of the page: the unscored ones follow them, by id.
            rows = s.execute(_page_of([*parts, unscored], descending).limit(limit).offset(offset)).all()
    return [dict(r._mapping) for r in rows], int(total)


def _page_of(parts: list, descending: bool):  # noqa: ANN202
    """The page query over the parts' rows, in the page's order (k_1, then k_id, then id), keys left out."""
    query = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    key = query.c.k_1.desc().nulls_last() if descending else query.c.k_1.asc().nulls_last()
    return select(*[c for c in query.c if not c.name.startswith("k_")]).order_by(key, query.c.k_id, query.c.id)


def _standing_probe(reviewer: str):  # noqa: ANN202
    """True where the reviewer's latest (non-adjudication) decision on the image is not an undo: a correlated
    scalar subquery, one seek of ix_decisions_current per row. Unlike an EXISTS, no planner turns it into a join:
    PostgreSQL made the EXISTS a hash semi-join over the whole class (125k index entries, ~50 ms at 1M)."""
    latest = (select(Decision.verdict)
              .where(Decision.image_id == Image.id, Decision.reviewer == reviewer, Decision.adjudication.is_(False))
              .order_by(Decision.id.desc()).limit(1).correlate(Image).scalar_subquery())
    return latest != "undo"  # no decision: NULL, so not decided either


def _decided_walk(s, rows, reviewer: str, where: list, column, descending: bool,  # noqa: ANN001
                  need: int) -> list | None:
    """The first `need` decided candidates by a judge or distance key, from at most DECIDED_WALK index entries of
    the class in the page's order; None when those hold fewer than `need` decided ones (the caller then sorts the
    reviewer's decisions instead). At 1M candidates, 5,000 decisions: 5 ms, where the sort takes ~50 ms.

    The walk is bounded by the key of the DECIDED_WALK-th scored entry (ties included), read first from the
    same index, so a reviewer whose decisions lie far down the order costs that read, not a walk of the class.
    Everything at or before the bound is walked, so when `need` decided rows are found there, they are exactly
    the first `need` of the whole decided queue; unscored rows sort after every scored one."""
    if need * 8 > DECIDED_WALK:  # deep pages: the sort is cheaper than a walk this long
        return None
    first_key = column.desc() if descending else column.asc()
    scored = [*where, column.is_not(None)]
    bound = s.scalar(select(column).where(*scored).order_by(first_key, Image.id).offset(DECIDED_WALK - 1).limit(1))
    within = scored if bound is None else [*scored, column >= bound if descending else column <= bound]
    found = s.scalars(select(Image.id).where(*within, _standing_probe(reviewer)).order_by(first_key, Image.id)
                      .limit(need)).all()
    if len(found) < need:
        return None
    page = rows.where(Image.id.in_(found)).add_columns(Image.id.label("k_id"), column.label("k_1"))
    return [select(*page.subquery().c)]


def _decided_from_ids(s, rows, reviewer: str, dataset_class: tuple[int, str], ids: Sequence[int],  # noqa: ANN001
                      column, score: tuple[int, bool] | None, descending: bool, need: int,
                      memo: tuple[ScoreMemo, int] | None = None) -> list:
    """The first `need` of the reviewer's decided candidates `ids` by a key, sorted here: one read of each one's
    key (and that its decision still stands), then the page rows by id.

    Finding the decided candidates of a class in SQL meant meeting the reviewer's decisions with the class's
    125k index entries at 1M candidates (~70 of a decided page's 90 ms by acceptance); given their ids, the
    read is 2,500 primary-key lookups. Missing keys sort last, ties by id, as everywhere in the queue.
    The ids' dataset, origin and class are checked here in Python: given as SQL filters, SQLite (no statistics)
    walked the class's index for them instead of looking the ids up.
    memo: (the process's ScoreMemo, the model's score_writes): by acceptance, the ids' scores then come from it."""
    ids = sorted({int(i) for i in ids})
    if score is not None:
        model_id, uncertain = score
        top = None if memo is None else _top_remembered(s, reviewer, dataset_class, ids, score, need, *memo)
        if top is None:
            top = _top_scored(s, reviewer, dataset_class, ids, model_id, uncertain, need)
        if top is not None:
            return _acceptance_page(rows, top, model_id, uncertain)
        keys = (select(Image.id, AcceptanceScore.p_accept, Image.dataset_id, Image.origin, Image.class_name)
                .outerjoin(AcceptanceScore, and_(AcceptanceScore.image_id == Image.id,
                                                 AcceptanceScore.model_id == model_id)))
    else:
        uncertain = False
        keys = select(Image.id, column, Image.dataset_id, Image.origin, Image.class_name)
    looked_up = s.execute(keys.where(id_in(s, ids, Image.id), _standing_probe(reviewer))).all()
    found = [row for row in looked_up if _of_class(row[2:], dataset_class)]

    def order(row) -> tuple:  # noqa: ANN001
        value = row[1]
        if value is not None and uncertain:
            value = abs(value - 0.5)
        return (value is None, 0.0 if value is None else (-value if descending else value), row[0])

    top = [row[0] for row in sorted(found, key=order)[:need]]
    if score is not None:
        return _acceptance_page(rows, top, model_id, uncertain)
    page = rows.where(Image.id.in_(top))
    return [select(*page.add_columns(Image.id.label("k_id"), column.label("k_1")).subquery().c)]


def _acceptance_page(rows, top: list[int], model_id: int, uncertain: bool) -> list:  # noqa: ANN001
    """The page rows of the candidates `top`, keyed by the model's score as the page sorts them."""
    scores = aliased(AcceptanceScore)
    page = rows.where(Image.id.in_(top)).outerjoin(scores, and_(scores.image_id == Image.id,
                                                                scores.model_id == model_id))
    key = func.abs(scores.p_accept - 0.5) if uncertain else scores.p_accept
    return [select(*page.add_columns(Image.id.label("k_id"), cast(key, Float).label("k_1")).subquery().c)]


def _of_class(dataset_origin_class: Sequence, dataset_class: tuple[int, str]) -> bool:
    """A looked-up (dataset id, origin, class) row is a candidate of the queue's dataset and class."""
    return tuple(dataset_origin_class) == (dataset_class[0], "synthetic", dataset_class[1])


def _top_scored(s, reviewer: str, dataset_class: tuple[int, str], ids: list[int], model_id: int,  # noqa: ANN001
                uncertain: bool, need: int) -> list[int] | None:
    """The first `need` of `ids` by the model's score from walks of its score index that keep only `ids` (a hashed
    filter: ~3 ms at 1M scores where looking up 2,500 scores took ~20-50), then checked to stand; None when the
    walks cannot say (too few scored, or too many found not standing): the caller then reads every id's score.

    A walk returns the first `limit` matches in its order, so every id it did not return sorts after its last
    row; rows up to the earliest such boundary are exactly the first ones of all the scored ids."""
    members = id_in(s, ids, AcceptanceScore.image_id)  # ids: sorted, distinct
    score, limit = AcceptanceScore, need + TOP_SCORED_SPARE
    mine = select(score.image_id, score.p_accept).where(score.model_id == model_id, members)
    if uncertain:
        walks = [(mine.where(score.p_accept >= 0.5).order_by(score.p_accept.asc(), score.image_id), -0.5, 1.0),
                 (mine.where(score.p_accept < 0.5).order_by(score.p_accept.desc(), score.image_id), 0.5, -1.0)]
    else:
        walks = [(mine.order_by(score.p_accept.desc(), score.image_id), 0.0, -1.0)]
    merged, boundary = [], None
    for walk, shift, sign in walks:  # key = sign * p + shift, ascending: the page's order
        got = [((sign * p + shift), i) for i, p in s.execute(walk.limit(limit)).all()]
        merged += got
        if len(got) == limit:
            boundary = got[-1] if boundary is None else min(boundary, got[-1])
    if boundary is None:  # every walk ran out: fewer scored ids than a page, the plain read is as cheap
        return None
    merged = sorted(k for k in merged if k <= boundary)
    standing = _standing_of_class(s, reviewer, dataset_class, [i for _, i in merged])
    top = [i for _, i in merged if i in standing][:need]
    return top if len(top) == need else None


def _top_remembered(s, reviewer: str, dataset_class: tuple[int, str], ids: list[int],  # noqa: ANN001
                    score: tuple[int, bool], need: int, memo: ScoreMemo, score_writes: int) -> list[int] | None:
    """The first `need` of `ids` by the model's score, the scores from the process's memo (one read of the ids it
    has not seen: none on most pages), checked to stand; None when too many of the first ones no longer stand.

    At 1M candidates this replaces the score index walks of _top_scored (~30 ms for "most uncertain", two walks)
    by a sort of the reviewer's ~2,500 remembered scores in Python (~2 ms)."""
    model_id, uncertain = score
    known = memo.scores(s, model_id, score_writes, ids)

    def key(i: int) -> tuple:  # the page's order: unscored last, ties by id
        p = known[i]
        return (p is None, 0.0 if p is None else (abs(p - 0.5) if uncertain else -p), i)

    first = sorted(ids, key=key)[:need + TOP_SCORED_SPARE]
    standing = _standing_of_class(s, reviewer, dataset_class, first)
    top = [i for i in first if i in standing][:need]
    return top if len(top) == need or len(first) == len(ids) else None


def _standing_of_class(s, reviewer: str, dataset_class: tuple[int, str], ids: list[int]) -> set[int]:  # noqa: ANN001
    """Those of ids that are candidates of the queue's dataset and class on which the reviewer's decision stands."""
    rows = s.execute(select(Image.id, Image.dataset_id, Image.origin, Image.class_name)
                     .where(id_in(s, ids, Image.id), _standing_probe(reviewer)))
    return {row[0] for row in rows if _of_class(row[1:], dataset_class)}


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


def _acceptance_parts(s, by_score, cand, model_id: int, uncertain: bool, need: int,  # noqa: ANN001
                      count_first: bool) -> tuple[list, Any]:
    """The first `need` candidates by the model's score, as ordered walks of ix_acceptance_scores_asc/_desc.

    "Most likely accepted" walks the scores down from the top; "most uncertain" walks up and down from 0.5 and
    the two meet in the page's sort. Each walk orders by (score, image id) exactly as its index does (0011), so
    PostgreSQL stops after the page instead of sorting all of the model's scores. Both join images by primary
    key, where ordering by a per-row score lookup sorted the whole class (0.5-1 s at 1M candidates). Unscored
    candidates (sorted last, by id) are fetched only when the scored ones cannot fill the page: their anti-join
    would walk the whole class when all are scored.
    by_score and cand are the same queue rows; by_score's filters leave the score index to lead the join.

    Returns (parts, unscored). Without count_first, unscored is the unscored candidates' part, to add when the page
    over the scored parts comes back short: that saves a count of the walks, which ran every walk twice (once to
    count, once in the page). count_first (a blind queue, whose real cells can fill a page when the model has no
    scores, and then sort among the unscored by id) counts the walks first and adds the part itself (unscored None).
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
    no_score = ~select(score.image_id).where(score.image_id == Image.id, score.model_id == model_id).exists()
    unscored = select(*cand.where(no_score).add_columns(Image.id.label("k_id"), NO_KEY.label("k_1"))
                      .order_by(Image.id).limit(need).subquery().c)
    if not count_first:
        return parts, unscored
    scored = s.scalar(select(func.count()).select_from(union_all(*parts).subquery() if len(parts) > 1
                                                      else parts[0].subquery())) or 0
    return (parts + [unscored] if scored < need else parts), None


def _acceptance_range(s, model_id: int | None, uncertain: bool) -> tuple[float | None, float | None]:  # noqa: ANN001
    """(lowest, highest) sort key of the model's scores, from the ends of its index (for blind cells' keys);
    (None, None) without scores."""
    if model_id is None:
        return None, None
    lo, hi = _index_ends(s, [AcceptanceScore.p_accept], [AcceptanceScore.model_id == model_id])
    if lo is None:
        return None, None
    return (0.0, max(abs(lo - 0.5), abs(hi - 0.5))) if uncertain else (float(lo), float(hi))


def _index_ends(s, columns: list, where: list) -> list:  # noqa: ANN001
    """min and max of each column where `where` holds, [min_1, max_1, min_2, ...], each read from one end of an index.

    One scalar subquery per min() or max(): SQLite optimises a lone min() or max() only, and with several in one
    SELECT it read every row instead (~200 ms for a model's 1M scores, ~29 ms for a class's 125k candidates)."""
    ends = [select(end(column)).where(*where).scalar_subquery() for column in columns for end in (func.min, func.max)]
    return list(s.execute(select(*ends)).one())


def _blind_part(s, dataset_id: int, class_name: str, reviewer: str, state: str, where: list, column,  # noqa: ANN001
                key_range: tuple[float | None, float | None] | None, descending: bool, need: int):  # noqa: ANN202
    """The reviewer's blind real cells of the class that can reach the page (the first `need` in its order), as a
    part of the page query, and how many match in all.

    Sort keys are spread over the candidates' key range (key_range when the caller knows it: the acceptance
    scores' range, read from their index's ends) by each item's stored hash position, so the real cells sit among
    the candidates in every order (never all first or last). The first `need` ids and keys are chosen before the
    reviewer's verdict is joined, so the verdict lookup runs per page row: joined to all 1,500 blind cells of a
    class at 1M candidates first, it was half of the page's 80 ms."""
    # Real ids are smaller than candidate ids (imported earlier), and real cells have no judge scores.
    if column is not None and key_range is None:
        lo_id, hi_id, lo, hi = _index_ends(s, [Image.id, column], where)
    else:  # key_range: the acceptance scores' (None, None without scores: by id only); no column: the key is the id
        lo_id, hi_id = _index_ends(s, [Image.id], where)
        lo, hi = key_range if key_range is not None else (lo_id, hi_id)
    lo_id, hi_id = lo_id or 0, hi_id or 0
    k_id = literal(float(lo_id)) + BlindItem.position * float(hi_id - lo_id)
    # Unscored classes sort every candidate by id only; so do the real cells then.
    k_1 = NO_KEY if lo is None else literal(float(lo)) + BlindItem.position * float(hi - lo)
    state_filter = _state_filter(reviewer, state)
    mine = [BlindItem.dataset_id == dataset_id, BlindItem.class_name == class_name,
            *([] if state_filter is None else [state_filter])]
    items = select(Image.id).join(BlindItem, and_(BlindItem.image_id == Image.id, BlindItem.reviewer == reviewer))
    total = s.scalar(select(func.count()).select_from(items.where(*mine).subquery())) or 0
    first = k_1.desc().nulls_last() if descending else k_1.asc().nulls_last()
    top = (items.add_columns(k_id.label("top_id_key"), k_1.label("top_key")).where(*mine)
           .order_by(first, k_id, Image.id).limit(need).subquery())
    rows = (_queue_part(reviewer, "all", False).join(top, top.c.id == Image.id)
            .add_columns(top.c.top_id_key.label("k_id"), top.c.top_key.label("k_1")))
    return select(*rows.subquery().c), int(total)
