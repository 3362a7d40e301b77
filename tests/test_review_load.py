"""Load: 8 reviewer processes deciding (and undoing) concurrently while a training job process writes
metrics and heartbeats every ~50 ms, all on one file-backed SQLite database. Nothing may be lost or locked."""

from __future__ import annotations

import multiprocessing as mp
import random
import sys
import time
import traceback
import types

import pytest
from sqlalchemy import func, select
from support import account

REVIEWERS = 8
DECISIONS_EACH = 60  # plus an undo after every 10th decision
TRAINER_PERIOD_S = 0.05
METRIC_NAMES = ("loss_g", "loss_d")
MIN_TRAINER_STEPS = 20


def _reviewer(k: int, dataset_id: int, start, results, me) -> None:  # noqa: ANN001 - me: this reviewer's account
    """One reviewer clicking through their queue: read a page, decide one cell, sometimes undo."""
    name = f"rev{k}"
    out = {"who": name, "decisions": 0, "undos": 0, "latencies": [], "error": None}
    try:
        from wbc_core import context, review_model

        context.current("worker")  # a new process builds its own context (the home comes from WBC_HOME)
        rng = random.Random(k)
        start.wait(60)
        for n in range(1, DECISIONS_EACH + 1):
            rows, _ = review_model.queue_page(dataset_id, "a" if k % 2 else "b", name, page_size=48)
            verdict = rng.choice(["accept", "accept", "reject", "relabel"])
            t0 = time.perf_counter()
            review_model.decide([rows[0]["id"]], name, verdict, new_class="a" if verdict == "relabel" else None,
                                reason="GAN texture artefact" if verdict == "reject" else None, user=me)
            out["latencies"].append(time.perf_counter() - t0)
            out["decisions"] += 1
            if n % 10 == 0:
                t0 = time.perf_counter()
                assert len(review_model.undo_last(dataset_id, name, user=me)) == 1
                out["latencies"].append(time.perf_counter() - t0)
                out["undos"] += 1
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        out["error"] = traceback.format_exc()
    results.put(out)


def _trainer(run_id: int, start, stop, results) -> None:  # noqa: ANN001
    """A training job: metrics and a heartbeat every ~50 ms until told to stop."""
    out = {"who": "trainer", "steps": 0, "error": None}
    try:
        from db import runs
        from wbc_core import context

        context.current("worker")
        start.wait(60)
        # At least MIN_TRAINER_STEPS even if the reviewers finish first, so the count check means something.
        while not stop.is_set() or out["steps"] < MIN_TRAINER_STEPS:
            runs.add_metrics(run_id, out["steps"], {m: 1.0 / (out["steps"] + 1) for m in METRIC_NAMES})
            runs.heartbeat(run_id, min(out["steps"] / 1000, 1.0), f"step {out['steps']}")
            out["steps"] += 1
            time.sleep(TRAINER_PERIOD_S)
    except BaseException:  # noqa: BLE001
        out["error"] = traceback.format_exc()
    results.put(out)


@pytest.mark.slow
def test_eight_reviewer_processes_and_a_trainer_lose_nothing(wbc_home, monkeypatch):
    from db import datasets, runs
    from db.engine import read_session
    from db.models import Decision

    rows = [dict(origin="real", class_name="a", split="train", sha256="r", path="p", width=8, height=8)]
    dataset_id = datasets.create_dataset("load", "real", "src", ["a", "b"], {}, "h", {}, rows)
    datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="ab"[i % 2], split=None, sha256=f"s{i}",
                                          path=f"q{i}", width=8, height=8) for i in range(400)])
    run_id = runs.create_run("selftest", dataset_id, {}, seed=0)

    # Spawned children re-import the parent's __main__; after Streamlit's AppTest (test_pages) that is a
    # page script, so hand them an empty one: the targets live in this module, imported by name.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    ctx = mp.get_context("spawn")
    start, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    trainer = ctx.Process(target=_trainer, args=(run_id, start, stop, results))
    reviewers = [ctx.Process(target=_reviewer, args=(k, dataset_id, start, results, account("reviewer", f"rev{k}")))
                 for k in range(REVIEWERS)]
    for p in [trainer, *reviewers]:
        p.start()
    time.sleep(1.0)  # let the spawned interpreters import before the clock starts
    t0 = time.perf_counter()
    start.set()
    outs = [results.get(timeout=120) for _ in reviewers]
    elapsed = time.perf_counter() - t0
    stop.set()
    outs.append(results.get(timeout=60))
    for p in [trainer, *reviewers]:
        p.join(timeout=60)

    errors = [o["error"] for o in outs if o["error"]]
    assert not errors, "\n".join(errors)
    assert not any("database is locked" in (o["error"] or "") for o in outs)
    assert [p.exitcode for p in [trainer, *reviewers]] == [0] * (REVIEWERS + 1)
    by_who = {o["who"]: o for o in outs}
    with read_session() as s:
        counts = dict(s.execute(select(Decision.reviewer, func.count()).group_by(Decision.reviewer)).all())
    assert counts == {f"rev{k}": DECISIONS_EACH + DECISIONS_EACH // 10 for k in range(REVIEWERS)}
    from db.decisions import current_decisions

    standing = {k: 0 for k in by_who if k != "trainer"}
    for d in current_decisions(dataset_id):
        standing[d["reviewer"]] += 1
    assert standing == {f"rev{k}": DECISIONS_EACH - DECISIONS_EACH // 10 for k in range(REVIEWERS)}
    steps = by_who["trainer"]["steps"]
    assert steps >= MIN_TRAINER_STEPS and len(runs.metrics([run_id])) == steps * len(METRIC_NAMES)
    assert runs.get_run(run_id).progress_message == f"step {steps - 1}"

    writes = [x for o in outs for x in o.get("latencies", [])]
    decisions = sum(o.get("decisions", 0) + o.get("undos", 0) for o in outs)
    print(f"\nload: {decisions} decision writes by {REVIEWERS} processes in {elapsed:.1f} s "
          f"({decisions / elapsed:.0f}/s incl. queue reads); max write latency {max(writes) * 1000:.0f} ms, "
          f"p50 {sorted(writes)[len(writes) // 2] * 1000:.1f} ms; trainer wrote {steps} steps")
    assert max(writes) < 5.0  # far below the 30 s busy timeout: writers queue briefly, never starve
