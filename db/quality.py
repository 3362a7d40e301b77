"""Quality scores of candidates: bulk updates of the review-sorting columns on images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, update

from db.engine import write_session
from db.models import Image

SCORE_COLUMNS = ("judge_prob", "judge_top_class", "nearest_real_id", "nearest_real_distance", "memorised")


def set_candidate_scores(rows: Sequence[dict[str, Any]]) -> int:
    """Set the score columns of synthetic images, one dict per image with "id" and every SCORE_COLUMNS key."""
    if not rows:
        return 0
    missing = [c for c in ("id", *SCORE_COLUMNS) if c not in rows[0]]
    if missing:
        raise ValueError(f"score rows lack {missing}")
    # One executemany UPDATE in one transaction: scoring 400 cells is one lock and one commit, not 400.
    # The origin filter keeps a stray id from ever writing scores onto a real cell.
    stmt = (update(Image.__table__).where(Image.__table__.c.id == bindparam("_id"),
                                          Image.__table__.c.origin == "synthetic")
            .values({c: bindparam(c) for c in SCORE_COLUMNS}))
    params = [{"_id": int(r["id"]), **{c: r[c] for c in SCORE_COLUMNS}} for r in rows]
    with write_session() as s:
        result = s.connection().execute(stmt, params)
    return int(result.rowcount)
