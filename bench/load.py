"""Many reviewers at once: reviewer processes deciding through the app's review API while training processes write
metrics and heartbeats, against one database, for a bounded time. Nothing may be lost and nothing may fail.

Each reviewer is its own OS process with its own context (as a browser session on another web worker would be):
it reads its pending queue page, decides the first cell (accept, reject or relabel), and undoes every tenth
decision. Each trainer appends two metrics and a heartbeat every 50 ms. At the end every decision a reviewer was
told it made must be in the database (0 lost), every call must have succeeded (0 errors), and the decision rows
must add up exactly. Reported: decision writes/s, and p50/p95/max of the decide call (one write transaction).

PostgreSQL runs as a throw-away cluster on 127.0.0.1 (tests/pg_support.py); SQLite in WAL mode in a temp folder.

Run: .venv/bin/python bench/load.py [--seconds 120] [--pg-reviewers 32] [--sqlite-reviewers 16] [--trainers 2]
Prints progress with an ETA and writes bench/results/load.json and .md (each backend as soon as it is done).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
CLASSES = ("a", "b", "c", "d")
TRAINER_PERIOD_S = 0.05


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _reviewer(name: str, dataset_id: int, seconds: float, start, results) -> None:  # noqa: ANN001
    out = {"who": name, "decided": [], "undone": 0, "latencies": [], "errors": []}
    try:
        from wbc_core import auth, context, review_model

        context.current("worker")
        me = auth.get_user(name)
        rng = random.Random(name)
        start.wait(120)
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            try:
                rows, _ = review_model.queue_page(dataset_id, CLASSES[n % len(CLASSES)], name, page_size=48)
                if not rows:
                    n += 1
                    continue
                verdict = rng.choice(["accept", "accept", "reject", "relabel"])
                t0 = time.perf_counter()
                reason = "GAN texture artefact" if verdict == "reject" else None
                review_model.decide([rows[0]["id"]], name, verdict, reason=reason,
                                    new_class=CLASSES[(n + 1) % len(CLASSES)] if verdict == "relabel" else None,
                                    user=me)
                out["latencies"].append(time.perf_counter() - t0)
                out["decided"].append(rows[0]["id"])
                n += 1
                if n % 10 == 0:
                    t0 = time.perf_counter()
                    review_model.undo_last(dataset_id, name, user=me)
                    out["latencies"].append(time.perf_counter() - t0)
                    out["undone"] += 1
            except Exception:  # noqa: BLE001 - counted and reported, the loop goes on
                out["errors"].append(traceback.format_exc(limit=3))
    except BaseException:  # noqa: BLE001
        out["errors"].append(traceback.format_exc())
    results.put(out)


def _trainer(run_id: int, seconds: float, start, results) -> None:  # noqa: ANN001
    out = {"who": f"trainer-{run_id}", "steps": 0, "errors": []}
    try:
        from db import runs
        from wbc_core import context

        context.current("worker")
        start.wait(120)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                runs.add_metrics(run_id, out["steps"], {"loss_g": 1.0, "loss_d": 0.5})
                runs.heartbeat(run_id, 0.5, f"step {out['steps']}")
                out["steps"] += 1
            except Exception:  # noqa: BLE001
                out["errors"].append(traceback.format_exc(limit=3))
            time.sleep(TRAINER_PERIOD_S)
    except BaseException:  # noqa: BLE001
        out["errors"].append(traceback.format_exc())
    results.put(out)


def _prepare(reviewers: int, trainers: int, candidates_per_class: int) -> tuple[int, list[str], list[int]]:
    """A dataset with candidates (rows only: the review API never opens the files here), accounts, runs."""
    from db import datasets as ds_db
    from db import runs as runs_db
    from wbc_core import auth

    admin = auth.claim_local_account("local")
    real = [{"origin": "real", "class_name": c, "split": s, "sha256": f"{c}{s}{i:08d}".ljust(64, "0"),
             "path": f"x/{c}{s}{i}.png", "width": 64, "height": 64, "source": "bench"}
            for c in CLASSES for s in ("train", "val", "test") for i in range(3)]
    dataset_id = ds_db.create_dataset("load", "real", "bench", list(CLASSES), {}, "bench", {}, real, image_size=64)
    rows = [{"origin": "synthetic", "class_name": c, "split": None, "sha256": f"s{c}{i:09d}".ljust(64, "0"),
             "path": f"x/s{c}{i}.png", "width": 64, "height": 64, "source": "bench"}
            for c in CLASSES for i in range(candidates_per_class)]
    for start in range(0, len(rows), 10_000):
        ds_db.add_images(dataset_id, rows[start:start + 10_000])
    names = [f"rev{k:02d}" for k in range(reviewers)]
    for name in names:
        auth.create_user(name, "bench-password", "reviewer", user=admin)
    run_ids = [runs_db.create_run("selftest", dataset_id, {}, seed=0, started_by="local") for _ in range(trainers)]
    for run_id in run_ids:
        runs_db.mark_started(run_id, os.getpid(), platform.node())
    return dataset_id, names, run_ids


def run_backend(backend: str, reviewers: int, trainers: int, seconds: float, candidates_per_class: int) -> dict:
    """One bounded load run on one backend; the measured figures and the loss/error checks."""
    from wbc_core import context

    with tempfile.TemporaryDirectory(prefix=f"wbc_load_{backend}_") as tmp:
        cluster = None
        url = None
        if backend == "postgresql":
            import pg_support

            cluster = pg_support.start_cluster()
            url = cluster.create_database()
        home = Path(tmp) / "home"
        # The spawned reviewers and trainers build their contexts from these (so must this process's, for SQLite).
        os.environ["WBC_HOME"] = str(home)
        if url:
            os.environ["WBC_DB_URL"] = url
        else:
            os.environ.pop("WBC_DB_URL", None)
        ctx = context.build("bench", home=home, db_url=url)
        try:
            with context.using(ctx):
                dataset_id, names, run_ids = _prepare(reviewers, trainers, candidates_per_class)
                spawn = mp.get_context("spawn")
                start, results = spawn.Event(), spawn.Queue()
                procs = [spawn.Process(target=_reviewer, args=(n, dataset_id, seconds, start, results)) for n in names]
                procs += [spawn.Process(target=_trainer, args=(r, seconds, start, results)) for r in run_ids]
                for p in procs:
                    p.start()
                time.sleep(min(30.0, 3.0 + 0.4 * len(procs)))  # let the spawned interpreters import and connect
                began = time.monotonic()
                start.set()
                while time.monotonic() - began < seconds:
                    left = seconds - (time.monotonic() - began)
                    print(f"  {backend}: {len(names)} reviewers, {trainers} trainers, ETA {left:4.0f} s", end="\r",
                          flush=True)
                    time.sleep(min(5.0, max(left, 0.1)))
                outs = [results.get(timeout=seconds + 120) for _ in procs]
                for p in procs:
                    p.join(timeout=60)
                    if p.is_alive():
                        p.kill()
                print()
                wall = time.monotonic() - began
                return _summarise(backend, dataset_id, outs, wall, reviewers, trainers, run_ids)
        finally:
            ctx.close()
            if cluster is not None:
                cluster.stop()


def _summarise(backend: str, dataset_id: int, outs: list[dict], wall: float, reviewers: int, trainers: int,
               run_ids: list[int]) -> dict:
    from sqlalchemy import select

    from db import runs as runs_db
    from db.engine import read_session
    from db.models import Decision

    revs = [o for o in outs if o["who"].startswith("rev")]
    errors = [e for o in outs for e in o["errors"]]
    told = {(o["who"], i) for o in revs for i in o["decided"]}
    with read_session() as s:  # every row ever written (decisions are append-only): nothing told may be missing
        rows = s.execute(select(Decision.reviewer, Decision.image_id, Decision.verdict)).all()
    stored = {(r.reviewer, r.image_id) for r in rows if r.verdict != "undo"}
    stored_undos = sum(1 for r in rows if r.verdict == "undo")
    lost = sorted(told - stored)[:10]
    decisions = sum(len(o["decided"]) for o in revs)
    undos = sum(o["undone"] for o in revs)
    latencies = [x * 1000 for o in revs for x in o["latencies"]]
    metric_rows = len(runs_db.metrics(run_ids))
    trainer_steps = sum(o["steps"] for o in outs if o["who"].startswith("trainer"))
    return {"backend": backend, "reviewer_processes": reviewers, "trainer_processes": trainers,
            "seconds": round(wall, 1), "decisions": decisions, "undos": undos,
            "writes_per_s": round((decisions + undos) / wall, 1),
            "write_ms": {"p50": round(statistics.median(latencies), 1) if latencies else None,
                         "p95": round(_percentile(latencies, 0.95), 1) if latencies else None,
                         "max": round(max(latencies), 1) if latencies else None},
            "lost_decisions": len(told - stored), "lost_examples": lost, "errors": len(errors),
            "decision_rows": sum(1 for r in rows if r.verdict != "undo"), "undo_rows": stored_undos,
            "error_examples": errors[:3], "trainer_steps": trainer_steps,
            "metric_rows": metric_rows, "metric_rows_expected": 2 * trainer_steps}


def markdown(result: dict) -> str:
    lines = ["# Load: reviewer processes and training processes on one database", "",
             f"{result['machine']}; {result['seconds']} s per backend; load average at start {result['load']}.", "",
             "| backend | reviewers | trainers | decisions (+undos) | writes/s | write p50 / p95 / max ms | lost "
             "| errors | metric rows (expected) |", "|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in result["runs"]:
        w = r["write_ms"]
        lines.append(f"| {r['backend']} | {r['reviewer_processes']} | {r['trainer_processes']} | {r['decisions']} "
                     f"(+{r['undos']}) | {r['writes_per_s']} | {w['p50']} / {w['p95']} / {w['max']} | "
                     f"{r['lost_decisions']} | {r['errors']} | {r['metric_rows']} ({r['metric_rows_expected']}) |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--pg-reviewers", type=int, default=32)
    parser.add_argument("--sqlite-reviewers", type=int, default=16)
    parser.add_argument("--trainers", type=int, default=2)
    parser.add_argument("--candidates-per-class", type=int, default=5000)
    parser.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "seconds": args.seconds, "load": round(os.getloadavg()[0], 2), "runs": []}
    for backend in args.backends:
        reviewers = args.pg_reviewers if backend == "postgresql" else args.sqlite_reviewers
        print(f"{backend}: {reviewers} reviewers + {args.trainers} trainers for {args.seconds:.0f} s "
              f"(ETA {args.seconds + 40:.0f} s)")
        result["runs"].append(run_backend(backend, reviewers, args.trainers, args.seconds, args.candidates_per_class))
        (out / "load.json").write_text(json.dumps(result, indent=2) + "\n")  # partial results as each ends
        (out / "load.md").write_text(markdown(result))
        print(markdown(result))
    bad = [r for r in result["runs"] if r["lost_decisions"] or r["errors"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
