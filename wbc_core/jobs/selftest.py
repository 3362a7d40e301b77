"""A tiny job kind used to test and diagnose the job machinery without torch."""

from __future__ import annotations

import os
import time
from typing import Any

from wbc_core.types import ProgressEvent


def run_selftest(run, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Count to config['steps'], sleeping config['sleep'] s per step; crash on request."""
    steps = int(run.config.get("steps", 5))
    for step in range(1, steps + 1):
        if ctx.should_stop():
            return {"steps_done": step - 1}
        time.sleep(float(run.config.get("sleep", 0.05)))
        if run.config.get("raise_at") == step:
            raise RuntimeError(f"selftest asked to fail at step {step}")
        if run.config.get("die_at") == step:
            os._exit(17)  # simulate a hard crash: no cleanup, no final status
        ctx.progress(ProgressEvent(step=step, total=steps, metrics={"value": float(step)}, message=f"step {step}"))
    return {"steps_done": steps, "niceness": os.nice(0)}  # jobs run below the page server's priority
