"""`python -m wbc_core doctor`: is this installation ready to run jobs, here or on a Ray cluster?

Three checks, each ok or fail with a plain hint:
- database: reachable and migrated to the newest revision;
- ray (only with WBC_RAY_ADDRESS set): the cluster's dashboard answers; its nodes, CPUs and GPUs;
- shared folder: a tiny probe job goes through the configured executor (a Ray job, or a local process) and its
  worker must read the sentinel file the submission wrote into WBC_HOME, i.e. it sees the same home.
"""

from __future__ import annotations

import argparse
from typing import Any

PROBE_TIMEOUT_SECONDS = 120.0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the main parser."""
    s = sub.add_parser("doctor", help="check the database, the Ray cluster (WBC_RAY_ADDRESS) and the shared folder")
    s.add_argument("--timeout", type=float, default=PROBE_TIMEOUT_SECONDS,
                   help="seconds the probe job may take (a busy cluster queues it)")


def _check(name: str, ok: bool, detail: str, hint: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "hint": "" if ok else hint, **extra}


def check_database() -> dict[str, Any]:
    from sqlalchemy import text

    from db.engine import bound
    from db.migrate import current_revision, head_revision
    from wbc_core.context import current

    url = current().database.engine.url
    where = f"{url.get_backend_name()} {url.render_as_string(hide_password=True)}"
    try:
        with bound().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        at, head = current_revision(), head_revision()
    except Exception as exc:  # noqa: BLE001 - any driver error is the answer here
        return _check("database", False, f"{where}: {str(exc).splitlines()[0]}",
                      "check WBC_DB_URL (host, port, user, password) and that the server accepts this machine")
    if at != head:
        return _check("database", False, f"{where}: schema at {at}, the code expects {head}",
                      "run any wbc command once on this database (migrations apply themselves), or upgrade the "
                      "code on this machine to the same version as the others")
    return _check("database", True, f"{where}: reachable, migrated ({head})")


def check_ray() -> dict[str, Any]:
    from wbc_core.context import current
    from wbc_core.jobs.executors import ExecutorError, RayExecutor

    address = current().settings.ray_address
    if not address:
        return _check("ray", True, "not configured: jobs run as processes on this machine (WBC_RAY_ADDRESS unset)",
                      skipped=True)
    try:
        ray = RayExecutor(address)
        version = ray.check_reachable()
        nodes = ray.nodes()
    except ExecutorError as exc:
        return _check("ray", False, str(exc).split(". ")[0],
                      "start the head with `ray start --head --dashboard-host 0.0.0.0` (or its LAN address) and "
                      "set WBC_RAY_ADDRESS=http://HEAD:8265")
    gpus = sum(float(n["gpus"] or 0) for n in nodes)
    listed = "; ".join(f"{n['hostname']} ({n['ip']}): {n['cpus']:g} CPU, {n['gpus']:g} GPU"
                       + (f" [{', '.join(map(str, n['gpu_names']))}]" if n["gpu_names"] else "") for n in nodes)
    detail = f"Ray {version} at {ray.address}: {len(nodes)} node(s), {gpus:g} GPU(s) — {listed}"
    if not nodes:
        return _check("ray", False, detail, "no node is alive: run `ray start --address HEAD:6379` on the workers")
    return _check("ray", True, detail, nodes=nodes, gpus=gpus,
                  note="" if gpus else "no GPU in the cluster: runs that ask for CUDA wait until a GPU node joins")


def check_shared_folder(timeout: float) -> dict[str, Any]:
    from wbc_core import jobs
    from wbc_core.context import current
    from wbc_core.jobs.executors import ExecutorError, executor_for
    from wbc_core.jobs.state import request_stop

    settings = current().settings
    try:
        where = "a Ray worker" if executor_for(settings).name == "ray" else "a local worker process"
        run_id = jobs.submit("selftest", None, {"steps": 1, "sleep": 0.0}, started_by="system:doctor")
    except ExecutorError as exc:
        return _check("shared folder", False, f"no probe job could be submitted: {str(exc).split('. ')[0]}",
                      "fix the Ray check first")
    info = jobs.wait(run_id, timeout=timeout)
    if info.status == "succeeded":
        return _check("shared folder", True, f"{where} on {info.hostname} read the sentinel in {settings.home} "
                      f"(probe run {run_id})", run_id=run_id)
    if info.active:
        request_stop(run_id, "system:doctor")
        return _check("shared folder", False, f"the probe job (run {run_id}) did not finish in {timeout:.0f} s "
                      f"(status {info.status})", "the cluster may be busy or have no free CPU: try "
                      "`doctor --timeout 600`, or look at `ray status` on the head", run_id=run_id)
    first = (info.error or info.status).splitlines()[0]
    return _check("shared folder", False, f"the probe job (run {run_id}) {info.status}: {first}",
                  f"mount the shared folder at {settings.home} on every Ray node (same path, read-write), and "
                  "start `ray start` there from the project's environment", run_id=run_id)


def _doctor(args: argparse.Namespace) -> dict[str, Any]:
    checks = [check_database(), check_ray()]
    ray_failed = not checks[1]["ok"]
    if ray_failed:
        checks.append(_check("shared folder", False, "not checked: the Ray cluster does not answer",
                             "fix the Ray check first"))
    else:
        checks.append(check_shared_folder(args.timeout))
    ok = all(c["ok"] for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
        if c["hint"]:
            lines.append(f"      -> {c['hint']}")
        if c.get("note"):
            lines.append(f"      note: {c['note']}")
    return {"status": "ok" if ok else "failed", "checks": checks, "_text": "\n".join(lines)}


COMMANDS = {"doctor": _doctor}
