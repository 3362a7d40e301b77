"""Expert review of candidates: decisions, undo, consensus and the curated set."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from db import datasets as ds_db
from db import review as review_db
from db.datasets import ImageRow

REJECT_REASONS = (
    "wrong class morphology",
    "implausible nucleus or granules",
    "stain or colour artefact",
    "GAN texture artefact",
    "broken or smudged cell",
    "too close to a real cell",
)


@dataclass(frozen=True)
class ConsensusRule:
    """When do reviewers' current verdicts make a candidate accepted (or rejected)?"""

    min_agreeing: int = 1  # reviewers who must share the winning verdict (e.g. 2 for "2 of 3 agree")
    min_votes: int = 1  # reviewers who must have decided before any outcome counts

    def __post_init__(self) -> None:
        if self.min_agreeing < 1 or self.min_votes < 1:
            raise ValueError("min_agreeing and min_votes must be at least 1")
        if self.min_agreeing > self.min_votes:
            object.__setattr__(self, "min_votes", self.min_agreeing)


@dataclass(frozen=True)
class Outcome:
    """The consensus on one candidate."""

    status: str  # accepted | rejected | pending | disputed
    final_class: str | None  # class it enters the curated set with (relabels applied); None unless accepted
    votes: dict[str, str]  # reviewer -> verdict ("accept", "reject" or "relabel:<class>")


def decide(image_ids: list[int], reviewer: str, verdict: str, new_class: str | None = None,
           reason: str | None = None) -> list[int]:
    """Record one reviewer's verdict on candidates (appended, never overwriting); return decision ids."""
    if reason is not None and verdict != "reject":
        reason = None  # reasons explain rejections only
    return review_db.record_decisions(image_ids, reviewer, verdict, new_class=new_class, reason=reason)


def undo_last(dataset_id: int, reviewer: str, n: int = 1) -> list[int]:
    """Withdraw the reviewer's n most recent standing decisions (by appending 'undo'); return the image ids."""
    last = review_db.last_effective_decisions(dataset_id, reviewer, n)
    image_ids = [row["image_id"] for row in last]
    for image_id in image_ids:
        review_db.record_decisions([image_id], reviewer, "undo")
    return image_ids


def _vote(row: dict[str, Any]) -> str:
    return f"relabel:{row['new_class']}" if row["verdict"] == "relabel" else row["verdict"]


def consensus(dataset_id: int, rule: ConsensusRule = ConsensusRule()) -> dict[int, Outcome]:
    """Outcome per decided candidate under the rule; candidates nobody decided are absent (pending)."""
    votes: dict[int, dict[str, str]] = defaultdict(dict)
    intended: dict[int, str] = {}
    for row in review_db.current_decisions(dataset_id):
        votes[row["image_id"]][row["reviewer"]] = _vote(row)
        intended[row["image_id"]] = row["class_name"]
    return {image_id: outcome_of(v, intended[image_id], rule) for image_id, v in votes.items()}


def outcome_of(votes: dict[str, str], intended_class: str, rule: ConsensusRule) -> Outcome:
    """Apply a consensus rule to one candidate's votes (reviewer -> verdict)."""
    if len(votes) < rule.min_votes:
        return Outcome("pending", None, votes)
    ranked = Counter(votes.values()).most_common()
    winner, count = ranked[0]
    tied = len(ranked) > 1 and ranked[1][1] == count
    if tied or count < rule.min_agreeing:
        return Outcome("disputed", None, votes)
    if winner == "reject":
        return Outcome("rejected", None, votes)
    final = winner.split(":", 1)[1] if winner.startswith("relabel:") else intended_class
    return Outcome("accepted", final, votes)


def accepted_candidates(dataset_id: int, rule: ConsensusRule = ConsensusRule()) -> list[tuple[ImageRow, str]]:
    """Candidates accepted by consensus, with the class they count as (after relabels)."""
    outcomes = consensus(dataset_id, rule)
    accepted = {i: o.final_class for i, o in outcomes.items() if o.status == "accepted"}
    rows = ds_db.images_by_ids(sorted(accepted))
    return [(row, accepted[row.id]) for row in rows if row.origin == "synthetic"]


def class_summary(dataset_id: int, rule: ConsensusRule = ConsensusRule()) -> list[dict[str, Any]]:
    """Per intended class: candidates, accepted, rejected, disputed and pending counts."""
    outcomes = consensus(dataset_id, rule)
    per_class: dict[str, Counter] = defaultdict(Counter)
    for row in ds_db.candidates(dataset_id):
        status = outcomes[row.id].status if row.id in outcomes else "pending"
        per_class[row.class_name]["candidates"] += 1
        per_class[row.class_name][status] += 1
    return [{"class_name": c, **{k: counts.get(k, 0) for k in
                                 ("candidates", "accepted", "rejected", "disputed", "pending")}}
            for c, counts in sorted(per_class.items())]


def queue_page(dataset_id: int, class_name: str, reviewer: str, state: str = "pending", page: int = 0,
               page_size: int = 48, order: str = "id", gan_run_id: int | None = None
               ) -> tuple[list[dict[str, Any]], int]:
    """One page of a reviewer's queue for a class, and the total number of matching candidates."""
    return review_db.review_queue(dataset_id, class_name, reviewer, state=state, limit=page_size,
                                  offset=page * page_size, gan_run_id=gan_run_id, order=order)
