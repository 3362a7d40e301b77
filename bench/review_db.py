"""Review queue at scale: 100k candidates over 8 classes, ~20k decisions by 4 reviewers, file-backed SQLite.

Times opening a class queue (count + first page of 48) for a reviewer who has decided thousands, per
state and sort order (p50/p95 over 20 calls), a blind-mode queue, and the write of one decision.
Run: .venv/bin/python bench/review_db.py [--candidates N] ; prints and writes bench/results/review_db.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = [f"class_{i}" for i in range(8)]
REVIEWERS = ("ann", "bob", "cem", "dee")
DECISIONS_PER_REVIEWER = 5_000
CALLS = 20
PAGE = 48


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _timed(fn, calls: int = CALLS) -> dict[str, float]:  # noqa: ANN001
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"p50_ms": round(statistics.median(times) * 1000, 2), "p95_ms": round(_pct(times, 0.95) * 1000, 2),
            "max_ms": round(max(times) * 1000, 2)}


def populate(n_candidates: int, seed: int = 0) -> tuple[int, list[int]]:
    """Create the dataset, real cells, candidates with scores, and the reviewers' decisions."""
    from db import datasets
    from db import decisions as decisions_db

    rng = random.Random(seed)
    real = [dict(origin="real", class_name=c, split=split, sha256=f"r{c}{split}{i}", path=f"real/{c}/{split}{i}.png",
                 width=64, height=64) for c in CLASSES for split, n in (("train", 300), ("val", 1500), ("test", 200))
            for i in range(n)]
    dataset_id = datasets.create_dataset("bench", "real", "bench", CLASSES, {}, "h", {}, real)
    ids: list[int] = []
    for start in range(0, n_candidates, 10_000):
        rows = [dict(origin="synthetic", class_name=CLASSES[i % len(CLASSES)], split=None, sha256=f"s{i}",
                     path=f"cand/{i}.png", width=64, height=64, gan_run_id=None, checkpoint_step=1000 * (i % 5),
                     seed=i, judge_prob=rng.random() if i % 10 else None, nearest_real_distance=rng.random() * 30)
                for i in range(start, min(start + 10_000, n_candidates))]
        ids += datasets.add_images(dataset_id, rows)
    # Each reviewer decides 5,000 candidates of the first two classes (so their class queues hold
    # thousands of own decisions), in batches like "accept page", with some undos and rejects.
    pool = [i for k, i in enumerate(ids) if k % len(CLASSES) in (0, 1)]
    for reviewer in REVIEWERS:
        chosen = rng.sample(pool, DECISIONS_PER_REVIEWER)
        for start in range(0, len(chosen), 250):
            batch = chosen[start:start + 250]
            decisions_db.record_decisions(batch[:200], reviewer, "accept")
            decisions_db.record_decisions(batch[200:], reviewer, "reject", reason="GAN texture artefact")
        decisions_db.record_decisions(chosen[:50], reviewer, "undo")
    return dataset_id, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "review_db.json"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="wbc_bench_review_"))
    from wbc_core import context, review_model

    ctx = context.build("bench", home=home, db_url=f"sqlite:///{home / 'wbc.db'}")  # this run's own database
    context.activate(ctx)
    t0 = time.perf_counter()
    dataset_id, ids = populate(args.candidates)
    setup_s = time.perf_counter() - t0
    print(f"populated {args.candidates} candidates + decisions in {setup_s:.1f} s ({home})")
    from db import users as users_db

    admin = users_db.insert_user("bench-admin", "", "admin")  # the acting accounts of the domain calls below
    ann = users_db.insert_user("ann", "", "reviewer")
    review_model.enable_blind_test(dataset_id, "dee", fraction=0.1, seed=0, user=admin)

    results: dict[str, dict[str, float]] = {}
    for state in review_model.QUEUE_STATES:
        for order in review_model.QUEUE_ORDERS:
            key = f"ann/{CLASSES[0]}/{state}/{order}"
            results[key] = _timed(lambda s=state, o=order: review_model.queue_page(dataset_id, CLASSES[0], "ann", s,
                                                                            page_size=PAGE, order=o))
            print(f"queue {key:<48} p50 {results[key]['p50_ms']:>7.1f} ms  p95 {results[key]['p95_ms']:>7.1f} ms")
    for key, fn in {
        "ann/class_0/pending/id/page_20": lambda: review_model.queue_page(dataset_id, CLASSES[0], "ann", page=20),
        "ann/class_5/pending/id (no own decisions)": lambda: review_model.queue_page(dataset_id, CLASSES[5], "ann"),
        "dee/class_0/pending/judge_prob_desc (blind mode)":
            lambda: review_model.queue_page(dataset_id, CLASSES[0], "dee", order="judge_prob_desc"),
        "ann/class_0/pending/id run-step filter":
            lambda: review_model.queue_page(dataset_id, CLASSES[0], "ann", checkpoint_step=2000),
    }.items():
        results[key] = _timed(fn)
        print(f"queue {key:<48} p50 {results[key]['p50_ms']:>7.1f} ms  p95 {results[key]['p95_ms']:>7.1f} ms")

    pending, _ = review_model.queue_page(dataset_id, CLASSES[2], "ann", page_size=200)
    it = iter(p["id"] for p in pending)
    write = _timed(lambda: review_model.decide([next(it)], "ann", "accept", user=ann), calls=100)
    undo = _timed(lambda: review_model.undo_last(dataset_id, "ann", user=ann), calls=20)
    print(f"record one decision p50 {write['p50_ms']:.1f} ms p95 {write['p95_ms']:.1f} ms max {write['max_ms']:.1f} ms")
    print(f"undo last           p50 {undo['p50_ms']:.1f} ms p95 {undo['p95_ms']:.1f} ms")
    summary = _timed(lambda: review_model.class_summary(dataset_id), calls=3)
    print(f"class_summary (consensus over all decisions) p50 {summary['p50_ms']:.0f} ms")

    worst = max(v["p95_ms"] for k, v in results.items())
    out = {"candidates": args.candidates, "classes": len(CLASSES), "reviewers": len(REVIEWERS),
           "decisions": len(REVIEWERS) * (DECISIONS_PER_REVIEWER + 50), "page_size": PAGE, "calls": CALLS,
           "setup_seconds": round(setup_s, 1), "queue_open": results, "worst_queue_p95_ms": worst,
           "decision_write": write, "undo_last": undo, "class_summary": summary,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"worst queue p95 {worst:.1f} ms (target < 2000 ms); wrote {path}")
    ctx.close()
    shutil.rmtree(home, ignore_errors=True)  # ~100 MB of throwaway database
    return 0 if worst < 2000 else 1


if __name__ == "__main__":
    sys.exit(main())
