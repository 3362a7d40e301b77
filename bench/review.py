"""Review page at scale, in a real browser: 100k candidates, `streamlit run app.py`, headless Chromium.

Measures
  (a) opening a class queue: sidebar click on Review -> 48 grid images loaded, and switching the class in the
      Class select box -> the new class's 48 images loaded (first open with a cold thumbnail cache reported apart);
  (b) decision latency over ~30 key presses ("a", every third one "3" = reject with reason 3):
      key down -> decision row in the database (polled every 2 ms on a separate connection), and
      key down -> grid updated (the decided cell's image under the cursor replaced by the next candidate's);
  plus the domain calls one rerun of the work area makes, timed directly, to show what the server spends.
Targets: queue < 2 s, decision p95 < 300 ms. The server starts as the README's Quickstart starts it: from the project
folder, so `.streamlit/config.toml` applies (no file watcher, no usage statistics); only the port, the address and
headless mode are given on the command line.

With --database postgresql the database is a throw-away PostgreSQL cluster on 127.0.0.1 (tests/pg_support.py) and
the server gets it as WBC_DB_URL, as the README's "Several machines" set-up does; the candidate rows are then loaded
with COPY (executemany on SQLite) and the table is VACUUM ANALYZEd, as autovacuum leaves it after a bulk load.
Candidates share DISTINCT_IMAGES small image files round-robin (rows are what scales, not files).

Run: .venv/bin/python bench/review.py [--candidates 100000] [--other-decisions 20000] [--decisions 30]
                                      [--database sqlite|postgresql] [--profile server.prof]
--profile runs the server under py-spy (`pip install py-spy`) and writes collapsed stacks of every thread: where
a key press's server time goes (it found Streamlit's gc.collect after every rerun).
Prints and writes bench/results/review.json and .md (review_<database>_<N>.json/.md when not the defaults).
Needs /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CLASSES = [f"class_{i}" for i in range(8)]
OTHER_REVIEWERS = ("ann", "bob", "cem", "dee")
DISTINCT_IMAGES = 200  # shared round-robin by id: neighbours in a class queue (ids 8 apart) always differ
REVIEWER, PASSWORD = "bench", "bench-password"
GRID = ".st-key-review_grid img"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TARGETS = {"queue_open_ms": 2000, "decision_p95_ms": 300}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(statistics.median(values), 1), "p95_ms": round(_pct(values, 0.95), 1),
            "max_ms": round(max(values), 1), "min_ms": round(min(values), 1)}


# -- database -----------------------------------------------------------------------------------------------------


def _png(rng, size: int = 64) -> bytes:  # noqa: ANN001
    import io

    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(size * 0.2, size * 0.3) ** 2
    img = np.full((size, size, 3), 230.0)
    img[inside] = rng.uniform(60, 200, 3)
    img += rng.normal(0, 8, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def populate(home: Path, n_candidates: int, other_decisions: int, seed: int = 0) -> dict:
    """Dataset 'bench': 8 classes of real cells and n candidates (bulk insert in chunks of 10k), other reviewers'
    decisions, and the reviewer account. Image files: DISTINCT_IMAGES small PNGs shared round-robin."""
    import numpy as np

    from db import datasets
    from db import decisions as decisions_db
    from db.migrate import ensure_schema
    from wbc_core import auth

    t0 = time.perf_counter()
    ensure_schema()
    rng = np.random.default_rng(seed)
    folder = home / "images" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(DISTINCT_IMAGES):
        data = _png(rng)
        path = folder / f"img_{i:03d}.png"
        path.write_bytes(data)
        files.append((str(path.relative_to(home)), hashlib.sha256(data).hexdigest()))
    real = [dict(origin="real", class_name=c, split=split, sha256=files[k % 50][1], path=files[k % 50][0],
                 width=64, height=64) for k, (c, split) in enumerate(
                     (c, split) for c in CLASSES for split, n in (("train", 30), ("val", 30), ("test", 10))
                     for _ in range(n))]
    dataset_id = datasets.create_dataset("bench", "real", "bench", CLASSES, {}, "h", {}, real)
    pick = random.Random(seed)
    ids = _bulk_candidates(dataset_id, n_candidates, files, pick)
    # Other reviewers' verdicts on the second half of the queue, so consensus and progress have real work.
    pool = ids[len(ids) // 2:]
    per = other_decisions // len(OTHER_REVIEWERS)
    for reviewer in OTHER_REVIEWERS:
        chosen = pick.sample(pool, min(per, len(pool)))
        for start in range(0, len(chosen), 500):
            batch = chosen[start:start + 500]
            decisions_db.record_decisions(batch[:400], reviewer, "accept")
            decisions_db.record_decisions(batch[400:], reviewer, "reject", reason="GAN texture artefact")
    auth.create_user(REVIEWER, PASSWORD, "reviewer", user=auth.claim_local_account("bench-admin"))
    _settle()
    return {"dataset_id": dataset_id, "candidates": len(ids), "other_decisions": per * len(OTHER_REVIEWERS),
            "setup_s": round(time.perf_counter() - t0, 1)}


COLUMNS = ("dataset_id", "origin", "class_name", "split", "sha256", "path", "width", "height", "source",
           "checkpoint_step", "seed", "judge_prob", "nearest_real_distance", "created_at")
CHUNK = 50_000


def _bulk_candidates(dataset_id: int, n: int, files: list[tuple[str, str]], pick: random.Random) -> list[int]:
    """Candidate rows in chunks: COPY on PostgreSQL, executemany on SQLite, with progress and an ETA."""
    from datetime import UTC, datetime

    from db.engine import get_engine

    engine = get_engine()
    pg = engine.dialect.name == "postgresql"
    now = datetime.now(UTC).replace(tzinfo=None)
    t0 = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for start in range(0, n, CHUNK):
            rows = [(dataset_id, "synthetic", CLASSES[i % len(CLASSES)], None, files[i % DISTINCT_IMAGES][1],
                     files[i % DISTINCT_IMAGES][0], 64, 64, "bench", 1000 * (i % 5), i, pick.random(),
                     pick.random() * 30, now) for i in range(start, min(start + CHUNK, n))]
            if pg:
                with cur.copy(f"COPY images ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cur.executemany(f"INSERT INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                rows)
            raw.commit()
            done = start + len(rows)
            rate = done / (time.perf_counter() - t0)
            print(f"  inserted {done:>9,} / {n:,} candidates, {rate:,.0f} rows/s, ETA {(n - done) / rate:5.0f} s",
                  end="\r" if done < n else "\n", flush=True)
        mark = "%s" if pg else "?"
        cur.execute(f"SELECT id FROM images WHERE dataset_id = {mark} AND origin = 'synthetic' ORDER BY id",
                    (dataset_id,))
        ids = [row[0] for row in cur.fetchall()]
        raw.commit()
    finally:
        raw.close()
    return ids


def _settle() -> None:
    """VACUUM ANALYZE on PostgreSQL (as autovacuum leaves a table after a bulk load); SQLite stays as the app has it."""
    from db.engine import get_engine

    engine = get_engine()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")


def decision_counter(db_url: str):  # noqa: ANN201 - (count(reviewer) -> int, close())
    """A separate read connection that counts a reviewer's decision rows (polled while a key press is handled)."""
    if db_url.startswith("sqlite"):
        db = sqlite3.connect(f"file:{db_url.partition(':///')[2]}?mode=ro", uri=True, isolation_level=None)
        query = "SELECT count(*) FROM decisions WHERE reviewer = ?"
    else:
        import psycopg

        db = psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        query = "SELECT count(*) FROM decisions WHERE reviewer = %s"
    return (lambda who: db.execute(query, (who,)).fetchone()[0]), db.close


def server_calls(dataset_id: int, calls: int = 10) -> dict[str, dict[str, float]]:
    """The domain calls one rerun of the review work area makes, timed in this process (same database)."""
    from wbc_core import importing, review_model
    from wbc_core.thumbnails import thumbnail_path

    def timed(fn) -> dict[str, float]:  # noqa: ANN001
        fn()  # warm (thumbnails made, pages cached by SQLite)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return _stats(times)

    items, _ = review_model.queue_page(dataset_id, CLASSES[0], REVIEWER)
    return {
        "queue_page(48)": timed(lambda: review_model.queue_page(dataset_id, CLASSES[0], REVIEWER)),
        "class_summary": timed(lambda: review_model.class_summary(dataset_id)),
        "decision_rate": timed(lambda: review_model.decision_rate(REVIEWER)),
        "thumbnail_path x48": timed(lambda: [thumbnail_path(i, 96) for i in items]),
        "atlas sample_paths(12)": timed(lambda: importing.sample_paths(dataset_id, CLASSES[0], n=12)),
        "reviewer_progress (expander)": timed(lambda: review_model.reviewer_progress(dataset_id)),
    }


# -- server and browser -------------------------------------------------------------------------------------------


def review_model_default_retrain() -> int:
    from wbc_core.review_model import ReviewSettings

    return ReviewSettings().retrain_every


def jobs_started() -> list[str]:
    """The background jobs the measured page started (they share the CPU with the server and the browser)."""
    from db import runs as runs_db

    return [f"{r.kind} ({r.status})" for r in runs_db.list_runs()]


def stop_jobs(grace_s: float = 30.0) -> None:
    """Stop every run still active in the bench's home: SIGTERM (a checkpointing stop), then SIGKILL."""
    from db import runs as runs_db

    pids = [r.pid for r in runs_db.active_runs() if r.pid]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, log: Path, db_url: str | None = None, profile: Path | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """The server as the README starts it; with `profile`, under py-spy (sampled stacks of every thread, collapsed)."""
    port = _free_port()
    env = {**os.environ, "WBC_HOME": str(home), "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for key in ("WBC_DB_URL", "WBC_AUTH", "WBC_USER"):
        env.pop(key, None)
    if db_url:
        env["WBC_DB_URL"] = db_url
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1"]
    if profile is not None:  # py-spy: pip install py-spy (a dev tool, not a requirement)
        command = [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "--rate", "250",
                   "--output", str(profile), "--", *command]
    proc = subprocess.Popen(command,
                            cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"streamlit did not start:\n{log.read_text()}")


GRID_READY = """([old, n]) => {
  const imgs = [...document.querySelectorAll('GRID')];
  return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0) && imgs[0].src !== old;
}""".replace("GRID", GRID)

# Resolves with the epoch time (ms) at which the image under the cursor (cell 0) shows another image, loaded.
ARM = """(old) => {
  window.__key = null;
  document.addEventListener('keydown', () => { window.__key = performance.timeOrigin + performance.now(); },
                            {capture: true, once: true});
  window.__grid = new Promise(resolve => {
    const check = () => {
      const img = document.querySelector('.st-key-rv_cell_0 img');
      if (img && img.src !== old && img.complete && img.naturalWidth > 0)
        resolve(performance.timeOrigin + performance.now());
      else requestAnimationFrame(check);
    };
    requestAnimationFrame(check);
  });
}"""


def first_src(page) -> str:  # noqa: ANN001
    return page.evaluate("() => document.querySelector('.st-key-rv_cell_0 img')?.src || ''")


def idle(page) -> None:  # noqa: ANN001
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=30_000)


def measure(url: str, db_url: str, n_decisions: int, opens: int, screenshot: Path) -> dict:
    from playwright.sync_api import expect, sync_playwright

    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("textbox", name="User name").fill(REVIEWER)
        page.get_by_role("textbox", name="Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Data", level=1)).to_be_visible(timeout=60_000)
        nav = page.get_by_test_id("stSidebarNav")

        # (a) open the queue from another page; the first time the thumbnail cache is cold
        open_times = []
        for k in range(opens + 1):
            nav.get_by_role("link", name="Data").click()
            expect(page.get_by_role("heading", name="Data", level=1)).to_be_visible()
            idle(page)
            t0 = time.perf_counter()
            nav.get_by_role("link", name="Review").click()
            page.wait_for_function(GRID_READY, arg=["", 48], polling="raf")
            open_times.append((time.perf_counter() - t0) * 1000)
            idle(page)
            if k == 0:
                out["open_review_cold_ms"] = round(open_times.pop(), 1)
        out["open_review"] = _stats(open_times)

        switch_times = []
        for k in range(opens):
            old = first_src(page)
            page.get_by_test_id("stMain").get_by_test_id("stSelectbox").filter(has_text="Class").locator("input").click()
            t0 = time.perf_counter()
            page.get_by_role("option", name=CLASSES[1 + k % 2], exact=True).click()
            page.wait_for_function(GRID_READY, arg=[old, 48], polling="raf")
            switch_times.append((time.perf_counter() - t0) * 1000)
            idle(page)
        out["switch_class"] = _stats(switch_times)

        # (b) decisions from the keyboard, cursor on the first cell of the pending queue
        page.get_by_role("heading", name="Review", level=1).click()
        count, close = decision_counter(db_url)
        to_db, to_grid, server_side = [], [], []
        for k in range(n_decisions):
            idle(page)
            time.sleep(0.3)  # a reviewer looks at the cell before deciding
            before = count(REVIEWER)
            page.evaluate(ARM, first_src(page))
            page.keyboard.press("3" if k % 3 == 2 else "a")
            while count(REVIEWER) == before:
                time.sleep(0.002)
            t_db = time.time() * 1000
            t_grid = page.evaluate("() => window.__grid")
            t_key = page.evaluate("() => window.__key")
            to_db.append(t_db - t_key)
            to_grid.append(t_grid - t_key)
            server_side.append(t_grid - t_db)
        close()
        out["decision_key_to_db"] = _stats(to_db)
        out["decision_key_to_grid"] = _stats(to_grid)
        out["decision_db_to_grid"] = _stats(server_side)
        page.screenshot(path=str(screenshot))
        browser.close()
    return out


def markdown(result: dict) -> str:
    m = result["browser"]
    rows = [("open Review page (cold thumbnails)", {"p50_ms": m["open_review_cold_ms"], "p95_ms": "", "n": 1}),
            ("open Review page", m["open_review"]), ("switch class", m["switch_class"]),
            ("decision: key -> DB row", m["decision_key_to_db"]),
            ("decision: key -> grid updated", m["decision_key_to_grid"]),
            ("decision: DB row -> grid updated", m["decision_db_to_grid"])]
    lines = [f"# Review page benchmark ({result['candidates']:,} candidates, {result['other_decisions']:,} other "
             f"decisions, {result.get('database', 'sqlite')})", "",
             f"{result['machine']}; load average at the end {result['load_average']}. Automatic acceptance-model "
             f"retrain every {result.get('retrain_every', '?')} decisions (0 = off); jobs the page started during "
             f"the run: {', '.join(result.get('jobs_during_measurement') or ['none'])}.", "",
             "| measure | n | p50 ms | p95 ms |", "|---|---|---|---|"]
    lines += [f"| {name} | {s.get('n', '')} | {s['p50_ms']} | {s['p95_ms']} |" for name, s in rows]
    lines += ["", f"Targets: queue open < {TARGETS['queue_open_ms']} ms, decision p95 < {TARGETS['decision_p95_ms']} "
              f"ms. Met: {result['targets_met']}.", "", "Domain calls of one work-area rerun (this process, warm):",
              "", "| call | p50 ms | p95 ms |", "|---|---|---|"]
    lines += [f"| {name} | {s['p50_ms']} | {s['p95_ms']} |" for name, s in result["server_calls"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--other-decisions", type=int, default=20_000)
    parser.add_argument("--decisions", type=int, default=30)
    parser.add_argument("--opens", type=int, default=5)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--profile", type=Path, help="record the server under py-spy into this file (collapsed "
                        "stacks); timings then carry the sampler's cost")
    parser.add_argument("--no-retrain", action="store_true", help="turn the dataset's automatic acceptance-model "
                        "retrain off (by default the decisions start one, as they would for a reviewer)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary WBC_HOME (with review.png, the page)")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"needs Chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="wbc-bench-review-"))
    from wbc_core import context

    cluster = None
    db_url = f"sqlite:///{home / 'wbc.db'}"
    if args.database == "postgresql":
        import pg_support

        cluster = pg_support.start_cluster()
        db_url = cluster.create_database()
    ctx = context.build("bench", home=home, db_url=db_url)  # the server gets the same home and database
    context.activate(ctx)
    proc = None
    try:
        setup = populate(home, args.candidates, args.other_decisions)
        print(f"populated in {setup['setup_s']} s", flush=True)
        if args.no_retrain:  # measure the page alone, without the acceptance-model retrain the decisions start
            from wbc_core import auth, review_model

            review_model.set_review_settings(setup["dataset_id"], review_model.ReviewSettings(retrain_every=0),
                                             auth.claim_local_account("bench-admin"))
        setup["retrain_every"] = 0 if args.no_retrain else review_model_default_retrain()
        calls = server_calls(setup["dataset_id"])
        ctx.database.dispose()  # the server process opens its own connections
        proc, url = start_server(home, home / "streamlit.log", db_url if cluster else None, args.profile)
        browser = measure(url, db_url, args.decisions, args.opens, home / "review.png")
        met = {"queue_open": browser["open_review"]["p95_ms"] < TARGETS["queue_open_ms"]
               and browser["switch_class"]["p95_ms"] < TARGETS["queue_open_ms"],
               "decision_p95": browser["decision_key_to_grid"]["p95_ms"] < TARGETS["decision_p95_ms"]}
        result = {**setup, "database": args.database, "decisions_measured": args.decisions, "page_size": 48,
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                             f"Python {platform.python_version()}",
                  "load_average": [round(x, 2) for x in os.getloadavg()], "targets": TARGETS, "targets_met": met,
                  "browser": browser, "server_calls": calls, "jobs_during_measurement": jobs_started()}
    finally:
        stop_jobs()  # e.g. the acceptance-model retrain the decisions triggered: nothing is left running
        if proc is not None:
            # py-spy writes its profile on Ctrl-C (and stops the server with it); a plain server gets SIGTERM
            if args.profile:
                proc.send_signal(signal.SIGINT)
            else:
                proc.terminate()
            proc.wait(timeout=60)
        ctx.close()
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = ("review" if (args.database, args.candidates) == ("sqlite", 100_000)
            else f"review_{args.database}_{args.candidates}") + ("_no_retrain" if args.no_retrain else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
