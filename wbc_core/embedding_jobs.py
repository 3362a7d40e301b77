"""The embedding map as a background job: the Dashboard queues it and shows the cached map when it is done."""

from __future__ import annotations

from typing import Any

from db import runs as runs_db
from wbc_core import jobs
from wbc_core.auth import User, authorize
from wbc_core.types import ProgressEvent


def start_embedding(run_id: int, max_points: int = 1500, seed: int = 0, method: str = "tsne",
                    *, user: User, launch: bool = True) -> int:
    """Queue a job that computes (and caches) the embedding map of a finished classifier run.

    Any signed-in account may ask for the map (the view permission); the job records who did."""
    from wbc_core import embedding, limits

    who = authorize(user, "view").username
    limits.check("embedding_points", max_points)
    run = runs_db.get_run(run_id)
    if run.kind != "classifier" or run.status != "succeeded":
        raise ValueError(f"run {run_id} is not a finished classifier run; pick one that succeeded")
    methods = getattr(embedding, "EMBEDDING_METHODS", ("tsne",))
    if method not in methods:
        raise ValueError(f"the map method must be one of {', '.join(methods)}, got {method!r}")
    config = {"classifier_run_id": run_id, "max_points": int(max_points), "seed": int(seed), "method": method}
    return jobs.submit("embedding", run.dataset_id, config, seed=int(seed), started_by=who, launch=launch)


def run_embedding_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body of "embedding"."""
    from wbc_core import embedding

    c = run.config
    ctx.progress(ProgressEvent(step=0, total=1, message=f"mapping {c['max_points']} cells"))
    kwargs = {"method": c["method"]} if c.get("method", "tsne") != "tsne" else {}
    frame = embedding.embedding_map(int(c["classifier_run_id"]), int(c["max_points"]), int(c["seed"]),
                                    refresh=True, **kwargs)
    return {"points": len(frame), "classifier_run_id": int(c["classifier_run_id"])}
