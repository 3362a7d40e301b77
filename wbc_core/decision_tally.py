"""Review counts per dataset, kept in memory and brought up to date from the decision rows added since the last look.

The Review page asks for the quota gauge (review_model.class_summary) and the progress tables
(review_model.reviewer_progress) again and again. Recounting every current vote took ~300 ms at 100k candidates
and 20k decisions, most of it turning rows into votes, and it ran beside the key presses of every reviewer of the
server. A tally reads only the rows added since its last read (a few per key press), so a refresh costs
milliseconds.

Exactness. Decisions are append-only, and a reviewer's current vote on a candidate is their latest row on it (an
"undo" row makes it pending again), an admin's ruling the latest adjudication row. Applying rows keyed by
(candidate, reviewer) and keeping the highest id seen therefore gives the same votes whatever order rows arrive
in, and reading a row twice changes nothing. SQLite serialises writes (BEGIN IMMEDIATE), so ids become visible in
order and a read never skips one. PostgreSQL numbers a row when it is inserted, not when it commits, so a slow
transaction can commit an id below one already read: each read goes back LOOKBACK_IDS ids, and there the tally is
rebuilt from every row every FULL_REREAD_S seconds. The rebuild runs on a thread of its own while callers go on with
the incremental reads, and its state is swapped in when done: re-reading every row took 585-751 ms at 1M candidates
and 20k decisions, which one reviewer's key press paid every two minutes. A count can lag such a decision by at
most FULL_REREAD_S plus one rebuild, which the page's summaries (a few seconds old by design, pages.ui.refresh)
allow; training sets never use a tally (review_model.consensus reads every current vote).

Candidates per class are counted the same way (CandidateCount): images are only ever added while a dataset
lives (they go only with the whole dataset), so the ids above the last one read are all that is new. Counting
is not idempotent, so the ids counted within the look-back window are remembered to count each exactly once. Its
periodic recount on PostgreSQL runs on a thread too.
Together they give the Review queue its "N pending" without walking a class's index entries (~60 ms of every
key press at 1M candidates on PostgreSQL).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db import decisions as decisions_db
from db.engine import bound

log = logging.getLogger(__name__)

LOOKBACK_IDS = 64  # ids re-read behind the newest one seen: late PostgreSQL commits land within a few ids
FULL_REREAD_S = 120.0  # a tally older than this is rebuilt from every row


def vote_of(row: dict[str, Any]) -> str | None:
    """A decision row as a vote: "accept", "reject" or "relabel:<class>"; None for an undo (no vote)."""
    if row["verdict"] == "undo":
        return None
    return f"relabel:{row['new_class']}" if row["verdict"] == "relabel" else row["verdict"]


def verdict_of(vote: str) -> str:
    """The verdict word of a vote ("relabel:ig" -> "relabel")."""
    return vote.split(":", 1)[0]


# (votes reviewer -> vote, intended class) -> (status, final class): review_model's consensus rule, applied
Judge = Callable[[dict[str, str], str], tuple[str, str | None]]


@dataclass(frozen=True)
class TallyCounts:
    """What one refresh hands out (copies: the caller may keep them while the tally moves on)."""

    status: dict[str, Counter]  # intended class -> outcome status (accepted/rejected/disputed/pending) -> candidates
    final: Counter  # final class (relabels applied) -> accepted candidates
    verdicts: dict[tuple[str, str], Counter]  # (reviewer, intended class) -> verdict -> current votes, any origin


class DecisionTally:
    """The current votes and rulings of one dataset, with consensus outcomes of its candidates under one rule."""

    # What a rebuild replaces (everything but the dataset, the lock and the rebuild's own bookkeeping).
    _STATE = ("_newest", "_votes", "_rulings", "_cells", "_verdicts", "_standing", "_stale", "_rule", "_outcomes",
              "_status", "_final")

    def __init__(self, dataset_id: int) -> None:
        self.dataset_id = dataset_id
        self._lock = threading.Lock()  # several sessions' threads refresh the same tally
        self.rebuild = Rebuild(f"decision tally of dataset {dataset_id}")  # PostgreSQL's periodic re-read
        self._judged_with: tuple[Any, Judge] | None = None  # the last counts() call's rule and judge
        self._start_over()

    def _start_over(self) -> None:
        self._newest = 0  # highest decision id read
        self._votes: dict[int, dict[str, tuple[int, str | None]]] = defaultdict(dict)  # cell -> reviewer -> (id, vote)
        self._rulings: dict[int, tuple[int, str | None]] = {}  # cell -> (id, ruling vote; None once withdrawn)
        self._cells: dict[int, tuple[str, str]] = {}  # cell -> (intended class, origin)
        self._verdicts: dict[tuple[str, str], Counter] = defaultdict(Counter)
        # (reviewer, intended class) -> candidates with a current vote (the decided queue's members)
        self._standing: dict[tuple[str, str], set[int]] = defaultdict(set)
        self._stale: set[int] = set()  # cells whose votes changed since they were last judged
        self._rule: Any = None  # the rule self._outcomes were judged under
        self._outcomes: dict[int, tuple[str, str | None]] = {}  # synthetic cell -> (status, final class)
        self._status: dict[str, Counter] = defaultdict(Counter)
        self._final: Counter = Counter()

    def counts(self, rule: Any, judge: Judge) -> TallyCounts:
        """Read the rows added since the last call, re-judge the cells they touched (all after a rule change)."""
        with self._lock:
            self._judged_with = (rule, judge)
            self._catch_up()
            touched, self._stale = self._stale, set()
            if rule != self._rule:
                self._rule, touched = rule, set(self._cells)
                self._outcomes.clear()
                self._status.clear()
                self._final.clear()
            for cell in touched:
                self._rejudge(cell, judge)
            return TallyCounts({c: Counter(n) for c, n in self._status.items()}, Counter(self._final),
                               {k: Counter(n) for k, n in self._verdicts.items()})

    def decided_candidates(self, reviewer: str, class_name: str) -> int:
        """Candidates of a class on which the reviewer's latest vote stands (not undone), up to date now."""
        with self._lock:
            self._catch_up()
            return len(self._standing.get((reviewer, class_name), ()))

    def standing_candidates(self, reviewer: str, class_name: str) -> list[int]:
        """The candidates of a class on which the reviewer's latest vote stands, by id, up to date now (the decided
        queue's members; a decision committed late on PostgreSQL joins within the look-back, see the module)."""
        with self._lock:
            self._catch_up()
            return sorted(self._standing.get((reviewer, class_name), ()))

    def _catch_up(self) -> None:
        """Read the rows added since the last read; the cells they changed wait in _stale to be re-judged."""
        if self._newest:  # a tally that has read nothing yet reads every row now anyway
            self.rebuild.start_if_due(self._rebuilt)
        from_scratch = self._newest == 0
        self._stale |= {row["image_id"] for row in self._rows_since_last_read() if self._apply(row)}
        if from_scratch and self._newest:
            # The tally's objects (~80k at 20k decisions) live as long as the process: out of the cyclic collector's
            # sight, a full collection no longer walks them on some key press (68 ms pauses at 1M candidates, one
            # call in ~100). They hold no reference cycles, so reference counting still frees them on a start-over.
            # Collect first: garbage frozen with them would never be freed. That one collection lands on the call
            # that already pays for reading every decision.
            gc.collect()
            gc.freeze()

    def _rebuilt(self) -> None:
        """On the rebuild's thread: a tally read from every row (judged under the last rule used), then swapped in.

        Rows the live tally read meanwhile are read again on its next call (from the new newest id, less the
        look-back), and reading a row twice changes nothing."""
        fresh = DecisionTally(self.dataset_id)
        with self._lock:
            judged_with = self._judged_with
        if judged_with is not None:
            fresh.counts(*judged_with)
        else:
            fresh._catch_up()  # nobody else sees `fresh` yet: no lock
        with self._lock, fresh._lock:
            for name in self._STATE:
                setattr(self, name, getattr(fresh, name))

    @staticmethod
    def _late_commits_possible() -> bool:
        # SQLite's one writer makes ids visible in order: there a periodic re-read (~0.3 s of a server thread at
        # 20k decisions, felt as a slow key press) would only ever find what the incremental reads found.
        return not bound().is_sqlite

    def _rows_since_last_read(self) -> list[dict[str, Any]]:
        rows = decisions_db.decision_rows_after(self.dataset_id, max(0, self._newest - LOOKBACK_IDS))
        if self._newest and not any(row["id"] == self._newest for row in rows):
            # The newest row read before is gone, which append-only decisions never allow for a living dataset:
            # the dataset was deleted and its id reused (tests, a re-import). Count the new one from scratch.
            self._start_over()
            rows = decisions_db.decision_rows_after(self.dataset_id, 0)
        return rows

    def _apply(self, row: dict[str, Any]) -> bool:
        """Take one row in; False when a row with a higher id already decided its (cell, reviewer) slot."""
        cell, decision_id, vote = row["image_id"], row["id"], vote_of(row)
        self._newest = max(self._newest, decision_id)
        self._cells[cell] = (row["class_name"], row["origin"])
        if row["adjudication"]:
            held = self._rulings.get(cell)
            if held is not None and held[0] >= decision_id:
                return False
            self._rulings[cell] = (decision_id, vote)
            return True
        held = self._votes[cell].get(row["reviewer"])
        if held is not None and held[0] >= decision_id:
            return False
        slot = (row["reviewer"], row["class_name"])
        mine = self._verdicts[slot]
        synthetic = row["origin"] == "synthetic"
        if held is not None and held[1] is not None:
            mine[verdict_of(held[1])] -= 1
            self._standing[slot].discard(cell)
        if vote is not None:
            mine[verdict_of(vote)] += 1
            if synthetic:
                self._standing[slot].add(cell)
        self._votes[cell][row["reviewer"]] = (decision_id, vote)
        return True

    def _rejudge(self, cell: int, judge: Judge) -> None:
        intended, origin = self._cells[cell]
        if origin != "synthetic":  # blind real cells count in their reviewer's progress, never in consensus
            return
        old = self._outcomes.pop(cell, None)
        if old is not None:
            self._status[intended][old[0]] -= 1
            if old[0] == "accepted":
                self._final[old[1]] -= 1
        new = self._outcome(cell, intended, judge)
        if new is None:
            return
        self._outcomes[cell] = new
        self._status[intended][new[0]] += 1
        if new[0] == "accepted":
            self._final[new[1]] += 1

    def _outcome(self, cell: int, intended: str, judge: Judge) -> tuple[str, str | None] | None:
        ruling = self._rulings.get(cell)
        if ruling is not None and ruling[1] is not None:  # a standing adjudication overrides the votes
            if ruling[1] == "reject":
                return "rejected", None
            return "accepted", ruling[1].split(":", 1)[1] if ruling[1].startswith("relabel:") else intended
        votes = {reviewer: vote for reviewer, (_, vote) in self._votes.get(cell, {}).items() if vote is not None}
        return judge(votes, intended) if votes else None


class CandidateCount:
    """Candidates per intended class of one dataset, counted once and then from the ids added since."""

    def __init__(self, dataset_id: int) -> None:
        self.dataset_id = dataset_id
        self._lock = threading.Lock()
        self.rebuild = Rebuild(f"candidate count of dataset {dataset_id}")  # PostgreSQL's periodic recount
        self._counted = False
        self._per_class: Counter = Counter()
        self._newest = 0
        self._recent: set[int] = set()  # ids counted within LOOKBACK_IDS of the newest: each is counted once

    def per_class(self) -> Counter:
        """Candidates per intended class now (a copy)."""
        with self._lock:
            if self._counted:
                self.rebuild.start_if_due(self._recounted)
            rows = [] if not self._counted else decisions_db.candidates_after(
                self.dataset_id, max(0, self._newest - LOOKBACK_IDS))
            # The newest candidate counted is gone only when the dataset was deleted and its id reused (tests, a
            # re-import), as in DecisionTally: then, and at the start, count from scratch.
            if not self._counted or (self._newest and all(i != self._newest for i, _ in rows)):
                self._adopt(*decisions_db.candidate_counts_with_recent(self.dataset_id, LOOKBACK_IDS))
                return Counter(self._per_class)
            for image_id, class_name in rows:
                if image_id not in self._recent:  # new, or a late commit inside the window
                    self._per_class[class_name] += 1
                    self._recent.add(image_id)
                    self._newest = max(self._newest, image_id)
            floor = self._newest - LOOKBACK_IDS
            self._recent = {i for i in self._recent if i > floor}
            return Counter(self._per_class)

    def _adopt(self, counts: dict[str, int], recent: list[int]) -> None:
        self._per_class, self._recent, self._counted = Counter(counts), set(recent), True
        self._newest = max(recent, default=0)

    def _recounted(self) -> None:
        """On the recount's thread: count every candidate, then swap the counts in. Candidates counted since by the
        live reads lie above the recount's newest id less the look-back, so the next read counts them again."""
        counts, recent = decisions_db.candidate_counts_with_recent(self.dataset_id, LOOKBACK_IDS)
        with self._lock:
            self._adopt(counts, recent)


class Rebuild:
    """The periodic from-scratch read of one counter on PostgreSQL: due every FULL_REREAD_S seconds, run on a thread
    of its own, at most one at a time. A failed one is logged and the next period tries again (the incremental reads
    go on meanwhile, so nothing is lost)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._last = time.monotonic()  # the counter's owner reads every row when it is made, so that counts as one
        self._thread: threading.Thread | None = None

    def start_if_due(self, work: Callable[[], None]) -> None:
        """Run work on a thread if a period has passed since the last start (never on SQLite: see the module)."""
        if time.monotonic() - self._last <= FULL_REREAD_S or not DecisionTally._late_commits_possible():
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"rebuild {self.what}", daemon=True)
        self._thread.start()

    def make_due(self) -> None:
        """Let the next read start a rebuild, as FULL_REREAD_S later (benches and tests)."""
        self._last -= FULL_REREAD_S + 1

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until a running rebuild (if any) has been swapped in; False if it is still running after timeout."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # noqa: BLE001 - a busy or closed database must not kill the thread noisily
            log.exception("rebuilding the %s failed; the incremental counts go on and it is tried again", self.what)


class _PerDataset:
    """One counter of a kind per dataset, for every session of a process (held in the context's caches)."""

    kind: type  # what one dataset gets: DecisionTally or CandidateCount

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_dataset: dict[int, Any] = {}

    def get(self, dataset_id: int) -> Any:  # noqa: ANN401 - an instance of self.kind
        with self._lock:
            if dataset_id not in self._by_dataset:
                self._by_dataset[dataset_id] = self.kind(dataset_id)
            return self._by_dataset[dataset_id]


class _Tallies(_PerDataset):
    kind = DecisionTally


class _CandidateCounts(_PerDataset):
    kind = CandidateCount


def tally_for(caches: Any, dataset_id: int) -> DecisionTally:  # noqa: ANN401 - wbc_core.context.Caches
    """The process's tally of a dataset, shared by every session of a server."""
    return caches.get("decision_tallies", _Tallies).get(dataset_id)


def candidate_count_for(caches: Any, dataset_id: int) -> CandidateCount:  # noqa: ANN401 - wbc_core.context.Caches
    """The process's running count of a dataset's candidates per class."""
    return caches.get("candidate_counts", _CandidateCounts).get(dataset_id)
