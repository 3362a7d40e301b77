"""Expert review of candidates: decisions, undo, consensus, adjudication, quotas, the blinded realism
test and the curated set.

Acting user: functions that change state take `user` (a wbc_core.auth.User), always: it is re-read and
checked against the needed permission and must be the named reviewer (PermissionDenied otherwise). There
is no trusted caller without a user: the CLI acts as a named local account too.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from db import datasets as ds_db
from db import decisions as decisions_db
from db import review_queue as queue_db
from db.acceptance import ScoreMemo
from db.datasets import ImageRow
from db.decisions import ReviewError
from db.models import utcnow
from db.review_queue import QUEUE_ORDERS, QUEUE_STATES
from wbc_core import limits
from wbc_core.auth import PermissionDenied, User, authorize
from wbc_core.context import current
from wbc_core.decision_tally import TallyCounts, candidate_count_for, tally_for, vote_of

__all__ = ["QUEUE_ORDERS", "QUEUE_STATES", "REJECT_REASONS", "ConsensusRule", "Outcome", "ReviewError",
           "ReviewSettings", "accepted_candidates", "adjudicate", "class_summary", "consensus", "decide",
           "decision_rate", "disputed_candidates", "enable_blind_test", "get_review_settings", "is_blind_item",
           "outcome_of", "queue_page", "reject_reason", "reviewer_progress", "set_review_settings", "undo_last"]

# Numbered 1-6 in this order for keyboard use (reject_reason(3) -> "stain or colour artefact").
# The acceptance-model retrain check runs on every (retrain_every / this)-th decision of a process.
RETRAIN_CHECK_DIVISOR = 10
REJECT_REASONS = (
    "wrong class morphology",
    "implausible nucleus or granules",
    "stain or colour artefact",
    "GAN texture artefact",
    "broken or smudged cell",
    "too close to a real cell",
)
MAX_BLIND_FRACTION = limits.bound("blind_fraction").max  # beyond 0.5 the "candidate" queue would be mostly real


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
class ReviewSettings:
    """A dataset's review settings, stored as JSON on the dataset."""

    rule: ConsensusRule = ConsensusRule()  # consensus rule used by default everywhere for this dataset
    quotas: dict[str, int] = field(default_factory=dict)  # class -> target number of accepted candidates
    retrain_every: int = 50  # new decisions between automatic acceptance-model retrains (0 = never)

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON form."""
        return {"min_agreeing": self.rule.min_agreeing, "min_votes": self.rule.min_votes,
                "quotas": dict(self.quotas), "retrain_every": self.retrain_every}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReviewSettings:
        """Parse the stored JSON form (missing keys take defaults). Values stored before the limits existed (a
        quota of 10**20, NaN, text) are brought into range or dropped, so reading never fails and widgets fit."""
        votes = [limits.clamp("consensus_votes", raw.get(k, 1)) or 1 for k in ("min_agreeing", "min_votes")]
        quotas = {str(k): limits.clamp("quota", v) for k, v in (raw.get("quotas") or {}).items()}
        every = limits.clamp("retrain_every", raw.get("retrain_every", 50))
        return cls(ConsensusRule(*votes), {k: v for k, v in quotas.items() if v}, 50 if every is None else int(every))


@dataclass(frozen=True)
class Outcome:
    """The consensus on one candidate."""

    status: str  # accepted | rejected | pending | disputed
    final_class: str | None  # class it enters the curated set with (relabels applied); None unless accepted
    votes: dict[str, str]  # reviewer -> verdict ("accept", "reject" or "relabel:<class>")
    adjudicated: bool = False  # an admin's standing adjudication decided it, overriding the votes


def reject_reason(key: int | str) -> str:
    """The reject reason for a keyboard number 1-6, or the reason itself if given as text."""
    if isinstance(key, str) and not key.strip().isdigit():
        if key not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {key!r}")
        return key
    n = int(key)
    if not 1 <= n <= len(REJECT_REASONS):
        raise ValueError(f"reject reasons are numbered 1-{len(REJECT_REASONS)}, got {n}")
    return REJECT_REASONS[n - 1]


def _acting(user: User, permission: str, reviewer: str | None = None) -> User:
    current = authorize(user, permission)  # no user at all: PermissionDenied("sign in first")
    if reviewer is not None and reviewer.strip() != current.username:
        # Otherwise one signed-in person could record verdicts under a colleague's name.
        raise PermissionDenied(f"signed in as '{current.username}': decisions are recorded under your own name")
    return current


def decide(image_ids: list[int], reviewer: str, verdict: str, new_class: str | None = None,
           reason: str | None = None, *, user: User) -> list[int]:
    """Record one reviewer's verdict on candidates (appended, never overwriting); return decision ids."""
    _acting(user, "review", reviewer)
    if reason is not None and verdict != "reject":
        reason = None  # reasons explain rejections only
    ids = decisions_db.record_decisions(image_ids, reviewer, verdict, new_class=new_class, reason=reason)
    # The retrain check reads the dataset's settings and, every few decisions, its models and runs: ~10-20 ms on
    # PostgreSQL at 1M candidates, half of the key press's write. It runs after it, on the process's check thread.
    _retrain_checks().submit(list(image_ids)[:1], reviewer.strip())
    return ids


class _RetrainChecks:
    """One thread per process that runs the retrain checks of decisions in the order they were made."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # Its thread ends when the context's caches are cleared (drain), after the checks queued in it.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wbc-retrain-check")
        self._last: Any = None  # the newest check's future: one thread, so when it is done all are

    def submit(self, image_ids: list[int], reviewer: str) -> None:
        from wbc_core import context

        made_in = context.active()

        def check() -> None:
            if context.active() is made_in:  # a test or bench switched homes since: its database is gone
                _retrain_if_due(image_ids, reviewer)

        self._last = self._pool.submit(check)

    def wait(self, timeout: float) -> None:
        if self._last is not None:
            self._last.result(timeout)

    def drain(self) -> None:
        """Run the queued checks, then end the thread (the context's caches are cleared)."""
        self._pool.shutdown(wait=True)


def wait_for_retrain_checks(timeout: float = 30.0) -> None:
    """Return once the retrain checks of this process's decisions so far have run (tests, a CLI about to end)."""
    _retrain_checks().wait(timeout)


def _retrain_checks() -> _RetrainChecks:
    return current().caches.get("review.retrain_checks", _RetrainChecks)


def _retrain_if_due(image_ids: list[int], reviewer: str) -> None:
    """Enqueue an acceptance-model retrain after every N new decisions (the dataset's retrain_every setting).

    The decisions are recorded already: a failure here (e.g. no worker can start) is logged, never raised.
    """
    import logging

    from wbc_core import feedback

    try:
        datasets = set(decisions_db.dataset_of_images(list(image_ids)[:1]).values())
        made = current().caches.get("review.decisions_since_check", Counter)  # per process, per dataset
        for dataset_id in datasets:
            every = get_review_settings(dataset_id).retrain_every
            made[dataset_id] += 1
            # The check costs a few queries; on every key press of dozens of reviewers it showed in the load bench.
            # Checking every every/10-th decision of this process delays a retrain by a few decisions at most.
            if every <= 0 or made[dataset_id] % max(1, every // RETRAIN_CHECK_DIVISOR):
                continue
            feedback.maybe_retrain(dataset_id, every, started_by=reviewer)
    except Exception:  # noqa: BLE001 - advisory work must never undo or block a person's decision
        logging.getLogger(__name__).warning("could not enqueue the acceptance-model retrain", exc_info=True)


def undo_last(dataset_id: int, reviewer: str, n: int = 1, *, user: User) -> list[int]:
    """Withdraw the reviewer's n most recent standing decisions (by appending 'undo'); return the image ids."""
    _acting(user, "review", reviewer)
    last = decisions_db.last_effective_decisions(dataset_id, reviewer, n)
    image_ids = [row["image_id"] for row in last]
    if image_ids:  # one transaction: a crash cannot leave half of a multi-undo applied
        decisions_db.record_decisions(image_ids, reviewer, "undo")
    return image_ids


def _rule(dataset_id: int, rule: ConsensusRule | None) -> ConsensusRule:
    return rule if rule is not None else get_review_settings(dataset_id).rule


def consensus(dataset_id: int, rule: ConsensusRule | None = None) -> dict[int, Outcome]:
    """Outcome per decided candidate (rule: the dataset's stored one by default); undecided ones are absent.

    A standing adjudication overrides the reviewers' votes. Blind real cells never appear here.
    """
    return _consensus(dataset_id, _rule(dataset_id, rule))[0]


def _consensus(dataset_id: int, rule: ConsensusRule) -> tuple[dict[int, Outcome], dict[int, str]]:
    """Outcomes and the intended class of each decided candidate."""
    votes: dict[int, dict[str, str]] = defaultdict(dict)
    intended: dict[int, str] = {}
    for row in decisions_db.current_decisions(dataset_id, origin="synthetic"):
        votes[row["image_id"]][row["reviewer"]] = vote_of(row)
        intended[row["image_id"]] = row["class_name"]
    outcomes = {image_id: outcome_of(v, intended[image_id], rule) for image_id, v in votes.items()}
    for row in decisions_db.current_adjudications(dataset_id):
        final = row["new_class"] if row["verdict"] == "relabel" else row["class_name"]
        accepted = row["verdict"] != "reject"
        intended[row["image_id"]] = row["class_name"]
        outcomes[row["image_id"]] = Outcome("accepted" if accepted else "rejected", final if accepted else None,
                                            votes.get(row["image_id"], {}), adjudicated=True)
    return outcomes, intended


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


def accepted_candidates(dataset_id: int, rule: ConsensusRule | None = None) -> list[tuple[ImageRow, str]]:
    """Candidates accepted by consensus or adjudication, with the class they count as (after relabels)."""
    outcomes = consensus(dataset_id, rule)
    accepted = {i: o.final_class for i, o in outcomes.items() if o.status == "accepted"}
    rows = ds_db.images_by_ids(sorted(accepted))
    return [(row, accepted[row.id]) for row in rows if row.origin == "synthetic"]


def _tally_counts(dataset_id: int, rule: ConsensusRule) -> TallyCounts:
    def judge(votes: dict[str, str], intended: str) -> tuple[str, str | None]:
        outcome = outcome_of(votes, intended, rule)
        return outcome.status, outcome.final_class
    return tally_for(current().caches, dataset_id).counts(rule, judge)


def class_summary(dataset_id: int, rule: ConsensusRule | None = None) -> list[dict[str, Any]]:
    """Per intended class: candidates, accepted, rejected, disputed, pending; accepted_final, quota, quota_met.

    accepted_final counts accepted candidates by their final class (relabels applied): what the quota is on.
    Counted from the process's decision tally and running candidate counts (wbc_core.decision_tally: only new
    rows are read): loading 100k candidate rows, or every current vote, would take a large part of a second.
    """
    settings = get_review_settings(dataset_id)
    tallied = _tally_counts(dataset_id, rule if rule is not None else settings.rule)
    per_class: dict[str, Counter] = defaultdict(Counter)
    for class_name, n in _candidate_counts(dataset_id).items():
        per_class[class_name]["candidates"] = n
    for class_name, statuses in tallied.status.items():
        for status in ("accepted", "rejected", "disputed"):  # "pending" here: fewer votes than the rule needs
            per_class[class_name][status] += statuses[status]
    out = []
    for c in sorted(set(per_class) | set(settings.quotas)):
        counts = per_class[c]
        decided = counts["accepted"] + counts["rejected"] + counts["disputed"]
        quota = settings.quotas.get(c)
        out.append({"class_name": c, **{k: counts.get(k, 0) for k in ("candidates", "accepted", "rejected",
                                                                        "disputed")},
                    "pending": counts["candidates"] - decided,
                    "accepted_final": tallied.final[c], "quota": quota,
                    "quota_met": None if quota is None else tallied.final[c] >= quota})
    return out


def queue_page(dataset_id: int, class_name: str, reviewer: str, state: str = "pending", page: int = 0,
               page_size: int = 48, order: str = "id", gan_run_id: int | None = None,
               checkpoint_step: int | None = None, image_ids: Sequence[int] | None = None
               ) -> tuple[list[dict[str, Any]], int]:
    """One page of a reviewer's queue for a class, and the total number of matching items.

    image_ids (a selection from the embedding map, see wbc_core.embedding_selection) keeps only those candidates.
    Rows: id, path, sha256, class_name, gan_run_id, checkpoint_step, judge_prob, nearest_real_distance,
    verdict, new_class, reason (the reviewer's own current decision; verdict None or "undo" = pending).
    """
    total, decided_ids, memo = None, None, None
    if gan_run_id is None and checkpoint_step is None and image_ids is None and state in QUEUE_STATES:
        # The whole class: its count comes from the process's running counts, not a walk of the class in SQL;
        # the decided state's members from the same tally.
        candidates = _candidate_counts(dataset_id)[class_name]
        tally = tally_for(current().caches, dataset_id)
        if state == "decided":
            decided_ids = tally.standing_candidates(reviewer, class_name)
            decided = len(decided_ids)
            if order.startswith("p_accept_"):  # their scores, remembered between pages (db.acceptance.ScoreMemo)
                memo = current().caches.get(f"score_memo/{dataset_id}", ScoreMemo)
        else:
            decided = tally.decided_candidates(reviewer, class_name)
        total = {"all": candidates, "decided": decided, "pending": max(candidates - decided, 0)}[state]
    return queue_db.review_queue(dataset_id, class_name, reviewer, state=state, limit=page_size,
                                  offset=page * page_size, gan_run_id=gan_run_id, order=order,
                                  checkpoint_step=checkpoint_step, image_ids=image_ids, candidate_total=total,
                                  decided_ids=decided_ids, score_memo=memo)


def _candidate_counts(dataset_id: int) -> Counter:
    """Candidates per intended class, from the process's running count (wbc_core.decision_tally)."""
    return candidate_count_for(current().caches, dataset_id).per_class()


# -- settings and quotas -------------------------------------------------------------------------------------

def get_review_settings(dataset_id: int) -> ReviewSettings:
    """The dataset's consensus rule and quotas (defaults: 1 agreeing vote of 1, no quotas)."""
    return ReviewSettings.from_dict(decisions_db.get_review_settings(dataset_id))


def set_review_settings(dataset_id: int, settings: ReviewSettings, user: User) -> ReviewSettings:
    """Store the dataset's consensus rule and quotas (admin only); quota 0 removes a class's quota."""
    _acting(user, "configure_review")
    classes = ds_db.get_dataset(dataset_id).class_names
    unknown = sorted(set(settings.quotas) - set(classes))
    if unknown:
        raise ValueError(f"unknown class {', '.join(map(repr, unknown))}; classes: {', '.join(classes)}")
    quotas = {c: limits.check("quota", v, f"the quota of {c}") for c, v in sorted(settings.quotas.items())}
    for what, value in (("reviewers who must agree", settings.rule.min_agreeing),
                        ("votes needed", settings.rule.min_votes)):
        limits.check("consensus_votes", value, what)
    every = limits.check("retrain_every", settings.retrain_every, "new decisions between acceptance-model retrains")
    clean = ReviewSettings(settings.rule, {c: v for c, v in quotas.items() if v > 0}, every)
    decisions_db.set_review_settings(dataset_id, clean.to_dict())
    return clean


# -- adjudication ------------------------------------------------------------------------------------------------

def disputed_candidates(dataset_id: int, rule: ConsensusRule | None = None) -> list[dict[str, Any]]:
    """The adjudication queue: disputed, not yet adjudicated candidates with everyone's votes and reasons."""
    outcomes = consensus(dataset_id, rule)
    ids = sorted(i for i, o in outcomes.items() if o.status == "disputed")
    reasons: dict[int, dict[str, str]] = defaultdict(dict)
    for row in decisions_db.current_decisions(dataset_id, origin="synthetic"):
        if row["image_id"] in outcomes and row["reason"]:
            reasons[row["image_id"]][row["reviewer"]] = row["reason"]
    return [{"image_id": row.id, "path": row.path, "sha256": row.sha256, "class_name": row.class_name,
             "votes": dict(outcomes[row.id].votes), "reasons": reasons.get(row.id, {})}
            for row in ds_db.images_by_ids(ids)]


def adjudicate(image_ids: list[int], admin_user: User, verdict: str, new_class: str | None = None,
               reason: str | None = None) -> list[int]:
    """An admin's ruling on candidates (accept, reject, relabel; 'undo' withdraws it); the latest one wins."""
    admin = authorize(admin_user, "adjudicate")
    if verdict not in ("accept", "reject", "relabel", "undo"):
        raise ReviewError(f"an adjudication is accept, reject, relabel or undo, got {verdict!r}")
    return decisions_db.record_decisions(image_ids, admin.username, verdict, new_class=new_class,
                                      reason=reason if verdict == "reject" else None, adjudication=True)


# -- progress -------------------------------------------------------------------------------------------------------

def reviewer_progress(dataset_id: int) -> list[dict[str, Any]]:
    """Per reviewer and intended class: queue size, decided, accepted, rejected, relabelled, pending.

    Counts include the reviewer's own blind real cells, so they match what that reviewer's queue shows.
    """
    counts = _tally_counts(dataset_id, get_review_settings(dataset_id).rule).verdicts
    candidates = _candidate_counts(dataset_id)
    blind = Counter((b["reviewer"], b["class_name"]) for b in decisions_db.blind_items(dataset_id))
    out = []
    for reviewer, class_name in sorted({key for key, c in counts.items() if +c} | set(blind)):
        c = counts.get((reviewer, class_name), Counter())
        decided = c["accept"] + c["reject"] + c["relabel"]
        queue = candidates.get(class_name, 0) + blind[(reviewer, class_name)]
        out.append({"reviewer": reviewer, "class_name": class_name, "queue": queue, "decided": decided,
                    "accepted": c["accept"], "rejected": c["reject"], "relabelled": c["relabel"],
                    "pending": max(queue - decided, 0)})
    return out


def decision_rate(reviewer: str, window_minutes: float = 5.0) -> float:
    """Cells per minute the reviewer decided over the last window (undo and adjudication not counted).

    The clock starts at their first decision inside the window (at least 10 s ago), so a session that
    began two minutes ago is not diluted over the whole window.
    """
    now = utcnow()
    n, first = decisions_db.decisions_since(reviewer, now - timedelta(minutes=window_minutes))
    if n == 0 or first is None:
        return 0.0
    minutes = max((now - first).total_seconds(), 10.0) / 60.0
    return n / minutes


# -- blinded realism test -----------------------------------------------------------------------------------------

def _position(reviewer: str, image_id: int) -> float:
    digest = hashlib.sha256(f"{reviewer}\0{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def enable_blind_test(dataset_id: int, reviewer: str, fraction: float = 0.1, seed: int = 0,
                      *, user: User) -> dict[str, int]:
    """Mix real val cells unannounced into a reviewer's queue; return how many were added per class.

    Per class, real cells make up `fraction` of that reviewer's resulting queue (n = f*N/(1-f) for N
    candidates), capped by the class's val cells. Calling again tops up (e.g. after new candidates).
    """
    _acting(user, "configure_review")
    if not 0 < fraction <= MAX_BLIND_FRACTION:
        raise ValueError(f"the blind fraction must be above 0 and at most {MAX_BLIND_FRACTION}")
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise ValueError("a reviewer name is required")
    existing = decisions_db.blind_items(dataset_id, reviewer)
    have = Counter(b["class_name"] for b in existing)
    chosen_ids = {b["image_id"] for b in existing}
    rng = random.Random(f"{seed}:{reviewer}")
    added: dict[str, int] = {}
    items: list[tuple[int, float]] = []
    for class_name, n_cand in sorted(decisions_db.candidate_counts(dataset_id).items()):
        target = round(fraction * n_cand / (1 - fraction))
        pool = [r.id for r in ds_db.real_images(dataset_id, split="val", class_name=class_name)
                if r.id not in chosen_ids]
        picked = rng.sample(pool, min(max(target - have[class_name], 0), len(pool)))
        items += [(i, _position(reviewer, i)) for i in picked]
        added[class_name] = len(picked)
    decisions_db.add_blind_items(dataset_id, reviewer, items)
    return added


def is_blind_item(image_id: int, reviewer: str) -> bool:
    """Whether an image in the reviewer's queue is a hidden real cell (for scoring; never show it to them)."""
    return decisions_db.is_blind_item(image_id, reviewer)
