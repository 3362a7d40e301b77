"""Inter-rater agreement (Cohen's kappa per reviewer pair, Fleiss' kappa per class) and the blinded
realism report (how often real cells are rejected as fake, and how often candidates pass as real).

Categories of a vote: "accept", "reject" or "relabel:<class>". Only candidates count for agreement;
blind real cells are scored in the realism report alone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

from db import decisions as decisions_db
from wbc_core.auth import User, authorize


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters from (rating_a, rating_b) pairs; None if undefined (no items, or p_e = 1)."""
    from sklearn.metrics import cohen_kappa_score  # first use only: the Agreement page pays, no other import

    if not pairs:
        return None
    a, b = (list(x) for x in zip(*pairs, strict=True))
    if len(set(a) | set(b)) == 1:
        return None  # both raters used one and the same category throughout: chance explains everything
    return float(cohen_kappa_score(a, b))


def fleiss_kappa(items: Iterable[Mapping[str, int]]) -> float | None:
    """Fleiss' kappa from per-item category counts; items may have different numbers of raters (>= 2 each).

    Per item i with n_i raters and n_ij of them choosing category j, the agreement is
    P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)), the share of agreeing ordered rater pairs; P_bar is
    the mean of P_i over items. Category shares p_j = sum_i n_ij / sum_i n_i pool all ratings, and
    P_e = sum_j p_j^2. kappa = (P_bar - P_e) / (1 - P_e). With equal n_i this is Fleiss (1971) exactly.
    Items with fewer than 2 raters are skipped; None when no item is left or P_e = 1.

    Kept by hand rather than taken from statsmodels: its `fleiss_kappa` assumes the same number of raters
    for every item, which consensus voting does not give (k of n reviewers, some skip a cell), and the
    whole of statsmodels (with patsy) would be a dependency for these fifteen lines. Pinned by the
    worked example of Fleiss (1971) and, for equal rater counts, by the table formula in the tests.
    """
    per_item: list[float] = []
    totals: Counter = Counter()
    ratings = 0
    for counts in items:
        n_i = sum(counts.values())
        if n_i < 2:
            continue
        per_item.append(sum(c * (c - 1) for c in counts.values()) / (n_i * (n_i - 1)))
        totals.update(counts)
        ratings += n_i
    if not per_item:
        return None
    p_bar = sum(per_item) / len(per_item)
    p_e = sum((t / ratings) ** 2 for t in totals.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def _votes(row: dict[str, Any]) -> str:
    return f"relabel:{row['new_class']}" if row["verdict"] == "relabel" else row["verdict"]


def agreement_report(dataset_id: int, user: User | None = None) -> dict[str, Any]:
    """Cohen's kappa per reviewer pair and Fleiss' kappa per intended class, from current votes on candidates.

    {"pairs": [{reviewer_a, reviewer_b, n, percent_agreement, kappa}],
     "classes": [{class_name, items, raters_max, kappa}], "overall": {items, kappa}}
    """
    if user is not None:
        authorize(user, "view")
    votes: dict[int, dict[str, str]] = defaultdict(dict)
    intended: dict[int, str] = {}
    for row in decisions_db.current_decisions(dataset_id, origin="synthetic"):
        votes[row["image_id"]][row["reviewer"]] = _votes(row)
        intended[row["image_id"]] = row["class_name"]
    reviewers = sorted({r for v in votes.values() for r in v})
    pairs = []
    for a, b in combinations(reviewers, 2):
        both = [(v[a], v[b]) for v in votes.values() if a in v and b in v]
        pairs.append({"reviewer_a": a, "reviewer_b": b, "n": len(both),
                      "percent_agreement": (sum(x == y for x, y in both) / len(both)) if both else None,
                      "kappa": cohen_kappa(both)})
    by_class: dict[str, list[Counter]] = defaultdict(list)
    for image_id, v in votes.items():
        if len(v) >= 2:
            by_class[intended[image_id]].append(Counter(v.values()))
    classes = [{"class_name": c, "items": len(items), "raters_max": max(sum(i.values()) for i in items),
                "kappa": fleiss_kappa(items)} for c, items in sorted(by_class.items())]
    every = [i for items in by_class.values() for i in items]
    return {"pairs": pairs, "classes": classes, "overall": {"items": len(every), "kappa": fleiss_kappa(every)}}


def realism_report(dataset_id: int, user: User | None = None) -> dict[str, Any]:
    """Blinded realism test results (admin view: it reveals which cells were real).

    reviewers: per reviewer in blind mode, real cells shown and decided, and the share of decided real
    cells rejected as fake. classes: per class, the candidates' pass-as-real rate (share of candidate
    verdicts by blind-mode reviewers that were not "reject"; a relabel still says "a real cell") next to
    the same rate for the real cells. A good generator brings the two rates close together.
    """
    if user is not None:
        authorize(user, "configure_review")
    blind = decisions_db.blind_items(dataset_id)
    blind_keys = {(b["image_id"], b["reviewer"]) for b in blind}
    blind_reviewers = {b["reviewer"] for b in blind}
    shown = Counter(b["reviewer"] for b in blind)
    real_by_reviewer: dict[str, Counter] = defaultdict(Counter)
    per_class: dict[str, Counter] = defaultdict(Counter)
    for row in decisions_db.current_decisions(dataset_id, origin="real"):
        if (row["image_id"], row["reviewer"]) not in blind_keys:
            continue  # cannot happen (such decisions are refused); never score it if it did
        passed = row["verdict"] != "reject"
        real_by_reviewer[row["reviewer"]]["decided"] += 1
        real_by_reviewer[row["reviewer"]]["rejected"] += not passed
        per_class[row["class_name"]]["real_decided"] += 1
        per_class[row["class_name"]]["real_passed"] += passed
    for row in decisions_db.current_decisions(dataset_id, origin="synthetic"):
        if row["reviewer"] in blind_reviewers:
            per_class[row["class_name"]]["cand_decided"] += 1
            per_class[row["class_name"]]["cand_passed"] += row["verdict"] != "reject"

    def rate(num: int, den: int) -> float | None:
        return num / den if den else None

    reviewers = [{"reviewer": r, "real_shown": shown[r], "real_decided": real_by_reviewer[r]["decided"],
                  "real_rejected": real_by_reviewer[r]["rejected"],
                  "rejected_as_fake_rate": rate(real_by_reviewer[r]["rejected"], real_by_reviewer[r]["decided"])}
                 for r in sorted(blind_reviewers)]
    classes = [{"class_name": c, "candidates_decided": k["cand_decided"],
                "candidate_pass_rate": rate(k["cand_passed"], k["cand_decided"]),
                "real_decided": k["real_decided"], "real_accept_rate": rate(k["real_passed"], k["real_decided"])}
               for c, k in sorted(per_class.items())]
    return {"reviewers": reviewers, "classes": classes}
