"""Dispatch cost of a job: submit -> the worker's first heartbeat, for the local executor and for Ray.

Each sample submits one `selftest` job (1 step, no sleep: torch-free, so the time is dispatch plus the worker's own
start-up, which is the same in both) on a throw-away WBC_HOME with SQLite, and polls the database every 10 ms until
the worker has reported in (status running, first heartbeat), then until it has ended. The reference is the local
subprocess in the same run; Ray's overhead per job is the difference of the medians, and their ratio.

Run: .venv/bin/python bench/dispatch.py [--jobs 8] [--ray-address http://127.0.0.1:8265]
Without --ray-address a throw-away local head node (tests/ray_support.py, 2 CPUs, 127.0.0.1) is started and stopped.
Prints and writes bench/results/dispatch.json and .md.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from db import runs  # noqa: E402
from wbc_core import context, jobs  # noqa: E402


def _sample(poll: float = 0.01, timeout: float = 300.0) -> dict[str, float]:
    started = time.perf_counter()
    run_id = jobs.submit("selftest", None, {"steps": 1, "sleep": 0.0})
    submitted = time.perf_counter()
    reported = None
    while time.perf_counter() - started < timeout:
        info = runs.get_run(run_id)
        if reported is None and info.status != "queued":
            reported = time.perf_counter()
        if not info.active:
            if info.status != "succeeded":
                raise RuntimeError(f"probe run {run_id} {info.status}: {info.error}")
            ended = time.perf_counter()
            return {"submit_s": submitted - started, "first_heartbeat_s": (reported or ended) - started,
                    "end_s": ended - started}
        time.sleep(poll)
    raise RuntimeError(f"probe run {run_id} did not end in {timeout:.0f} s")


def _series(ray_address: str | None, n: int) -> list[dict[str, float]]:
    ctx = context.current()
    with context.using(context.with_settings(ctx, ray_address=ray_address)):
        _sample()  # warm-up: imports, the Ray client and its runtime-env cache
        return [_sample() for _ in range(n)]


def _summary(samples: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for key in ("submit_s", "first_heartbeat_s", "end_s"):
        values = sorted(s[key] for s in samples)
        out[f"{key}_median"] = round(statistics.median(values), 3)
        out[f"{key}_max"] = round(values[-1], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="samples per executor (after one warm-up job each)")
    parser.add_argument("--ray-address", default=None, help="an existing cluster's dashboard; default: start one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    cluster = None
    address = args.ray_address
    if address is None:
        from ray_support import RayCluster, ray_command

        script = ray_command()
        if script is None:
            raise SystemExit("Ray is not installed: pip install -r requirements-scale.txt")
        cluster = RayCluster(script).start()
        address = cluster.address
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="wbc-dispatch-") as tmp:
        ctx = context.build("bench", home=Path(tmp) / "home", environ={})
        try:
            with context.using(ctx):
                local = _series(None, args.jobs)
                ray = _series(address, args.jobs)
        finally:
            ctx.close()
            if cluster is not None:
                cluster.stop()
    results = {"local": _summary(local), "ray": _summary(ray)}
    lm, rm = results["local"]["first_heartbeat_s_median"], results["ray"]["first_heartbeat_s_median"]
    results["ray_overhead_per_job_s"] = round(rm - lm, 3)
    results["ray_over_local_ratio"] = round(rm / lm, 2)
    results["samples"] = {"local": local, "ray": ray}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                          "loadavg_before": [round(x, 2) for x in load_before],
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()], "jobs_per_executor": args.jobs,
                          "ray_cluster": "started by the bench (1 head, 2 CPUs, 127.0.0.1)" if cluster else address}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dispatch.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Dispatch cost: submit -> first heartbeat", "",
             f"selftest job (1 step, torch-free), {args.jobs} samples each after a warm-up, SQLite, "
             f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after.", "",
             "| executor | submit (median) | first heartbeat (median / max) | job ended (median) |",
             "|---|---|---|---|"]
    for name in ("local", "ray"):
        r = results[name]
        lines.append(f"| {name} | {r['submit_s_median']:.3f} s | {r['first_heartbeat_s_median']:.3f} s / "
                     f"{r['first_heartbeat_s_max']:.3f} s | {r['end_s_median']:.3f} s |")
    lines += ["", f"Ray's overhead per job: {results['ray_overhead_per_job_s']:+.3f} s to the first heartbeat, "
              f"{results['ray_over_local_ratio']:.2f}x the local subprocess."]
    (args.out / "dispatch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
