"""Job start: a worker forked by the warm starter against a cold `python -m wbc_core.worker`, in the same run.

Each sample submits one job on a throw-away WBC_HOME (SQLite) and polls the database every 20 ms: submit -> the
worker has reported in (status running) and submit -> the run has ended. Two kinds:
- `classifier`: a tiny small_cnn run (3 classes x 12 cells at 32 px, 1 epoch, 1 thread): the job imports torch,
  torch._dynamo (through the optimiser) and scikit-learn's metrics, as every real training, scoring or acceptance
  model job does;
- `selftest`: 1 step and no torch (dispatch alone).
Cold and warm samples alternate (cold, warm, cold, ...), so both see the same load; the reference is cold.
The starter's own import time (once per server process) is reported too.

Run: .venv/bin/python bench/job_start.py [--samples 5] [--kinds classifier selftest]
Prints each sample with an ETA and writes bench/results/job_start.json and .md after every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support import account, write_cell_folder  # noqa: E402

from db import runs  # noqa: E402
from wbc_core import context, jobs, retrain  # noqa: E402
from wbc_core.importing import import_folder  # noqa: E402
from wbc_core.jobs import launcher  # noqa: E402

TINY_RUN = {"model": "small_cnn", "epochs": 1, "batch_size": 8, "num_threads": 1, "device": "cpu",
            "schedule": "cosine"}
MODES = ("cold", "warm")


def tiny_dataset(where: Path) -> int:
    return import_folder(write_cell_folder(where / "cells"), "tiny", size=32, user=account()).dataset_id


def submit(kind: str, dataset_id: int) -> int:
    if kind == "classifier":
        return retrain.start_classifier_run(dataset_id, "real", TINY_RUN, user=account())
    return jobs.submit("selftest", None, {"steps": 1, "sleep": 0.0})


def sample(kind: str, dataset_id: int, poll: float = 0.02, timeout: float = 300.0) -> dict[str, float]:
    started = time.perf_counter()
    run_id = submit(kind, dataset_id)
    running = None
    while time.perf_counter() - started < timeout:
        info = runs.get_run(run_id)
        if running is None and info.status != "queued":
            running = time.perf_counter() - started
        if not info.active:
            if info.status != "succeeded":
                raise RuntimeError(f"run {run_id} {info.status}: {info.error}")
            return {"to_running_s": round(running or time.perf_counter() - started, 3),
                    "to_end_s": round(time.perf_counter() - started, 3),
                    "job_wall_s": float((info.result or {}).get("wall_seconds", float("nan")))}
        time.sleep(poll)
    raise RuntimeError(f"run {run_id} did not end in {timeout:.0f} s")


def summarise(samples: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, by_mode in samples.items():
        row: dict[str, Any] = {}
        for mode, values in by_mode.items():
            for key in ("to_running_s", "to_end_s"):
                if values:
                    row[f"{mode}_{key}_median"] = round(statistics.median(v[key] for v in values), 3)
        if by_mode.get("cold") and by_mode.get("warm"):
            for key in ("to_running_s", "to_end_s"):
                cold, warm = row[f"cold_{key}_median"], row[f"warm_{key}_median"]
                row[f"{key}_saved_s"] = round(cold - warm, 3)
                row[f"{key}_ratio_cold_over_warm"] = round(cold / warm, 2) if warm else None
        out[kind] = row
    return out


def write(out_dir: Path, record: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "job_start.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Job start: warm starter vs cold worker ({record['machine']}, {record['when']})", "",
             f"Starter imports: {record['starter_preload_s']} s (once per server process). "
             f"Medians of {record['samples_per_mode']} samples per mode, cold and warm alternating.", "",
             "| kind | cold: submit -> running | warm | cold: submit -> ended | warm | saved per job | "
             "cold / warm |", "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, row in record["summary"].items():
        if "to_end_s_saved_s" in row:
            lines.append(f"| {kind} | {row['cold_to_running_s_median']} s | {row['warm_to_running_s_median']} s | "
                         f"{row['cold_to_end_s_median']} s | {row['warm_to_end_s_median']} s | "
                         f"{row['to_end_s_saved_s']} s | {row['to_end_s_ratio_cold_over_warm']}x |")
    (out_dir / "job_start.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5, help="samples per kind and mode")
    parser.add_argument("--kinds", nargs="+", default=["classifier", "selftest"], choices=["classifier", "selftest"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ctx = context.build("bench", home=Path(tmp) / "home")
        record: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                                  "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                  "samples_per_mode": args.samples, "kinds": args.kinds}
        with context.using(ctx):
            dataset_id = tiny_dataset(Path(tmp))
            starter = launcher.warm_starter()
            if starter is None or not starter.poll_ready(timeout=120):
                raise SystemExit(f"the warm starter does not serve: {starter.why if starter else 'switched off'}")
            record["starter_preload_s"] = starter.preload_seconds
            cold_ctx = context.with_settings(ctx, warm_jobs=False)
            samples: dict[str, dict[str, list[dict[str, float]]]] = {k: {m: [] for m in MODES} for k in args.kinds}
            total, done, began = len(args.kinds) * args.samples * len(MODES), 0, time.monotonic()
            for kind in args.kinds:
                sample(kind, dataset_id)  # warm-up: page cache, the first forked child's copy-on-write faults
                for _ in range(args.samples):
                    for mode in MODES:
                        with context.using(cold_ctx if mode == "cold" else ctx):
                            result = sample(kind, dataset_id)
                        samples[kind][mode].append(result)
                        done += 1
                        eta = (time.monotonic() - began) / done * (total - done)
                        print(f"[{done}/{total}] {kind} {mode}: running after {result['to_running_s']} s, ended "
                              f"after {result['to_end_s']} s (ETA {eta:.0f} s)", flush=True)
                        record["samples"] = samples
                        record["summary"] = summarise(samples)
                        write(args.out, record)
        ctx.close()
    print(json.dumps(record["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
