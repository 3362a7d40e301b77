"""Background jobs: every long computation runs as a run of a job kind, in its own OS process.

- `kinds`: the registry of job kinds and their bodies;
- `launcher`: the one spawn (worker and chain processes);
- `warm`: the warm starter, which forks a long-lived process's workers with torch already imported;
- `state`: submit, cancel, wait, reconcile (dead workers) and kill;
- `worker`: the process that executes one run (`python -m wbc_core.worker RUN_ID`);
- `groups`: ablations and multi-seed groups, trained one after another by a chain process.
"""

from wbc_core.jobs.launcher import launch, launch_chain, prestart
from wbc_core.jobs.state import (
    HEARTBEAT_SECONDS,
    STALE_SECONDS,
    cancel,
    check_cancel,
    kill,
    pid_alive,
    reconcile,
    reconcile_if_due,
    request_stop,
    run_dir,
    submit,
    wait,
)

__all__ = ["HEARTBEAT_SECONDS", "STALE_SECONDS", "cancel", "check_cancel", "kill", "launch", "launch_chain",
           "pid_alive", "prestart", "reconcile", "reconcile_if_due", "request_stop", "run_dir", "submit", "wait"]
