"""Where a run's worker process runs: on this machine (local, the default) or as a Ray job (WBC_RAY_ADDRESS set).

Either way the worker is the same `python -m wbc_core.worker RUN_ID`, and the database stays the only channel:
status, heartbeat, progress, metrics and the cancel flag. The executor only starts the process, says whether it
still exists, hands back its log tail and, as a last resort, stops it.

The Ray executor submits through the Ray Jobs API of the cluster's dashboard (`http://head:8265`). Workers on other
machines must see the same WBC_HOME at the same path (a shared folder): at each submission a sentinel file with a
random token is written into the run's folder, and the worker refuses to start when it cannot read it
(`check_shared_home`).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db import runs as runs_db
from wbc_core.context import SENTINEL_VARIABLE, Settings, current

SENTINEL_FILE = ".wbc_sentinel"  # in each run's folder; holds the token the worker gets in WBC_SENTINEL
REACH_TIMEOUT_SECONDS = 3.0  # how long a submission waits for the Ray dashboard to answer before refusing
RAY_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")  # Ray job statuses after which its process is gone
GPU_KINDS = ("gan", "classifier")  # kinds whose config may ask for CUDA (entrypoint_num_gpus=1 then)
# Kinds that always run on the app's machine: an import reads the server folders (WBC_IMPORT_ROOTS) of this host.
LOCAL_KINDS = ("import",)
LOG_TAIL_CHARS = 2000


class ExecutorError(ConnectionError):
    """The job engine cannot take the run (unreachable, refused); the message says what to check."""


def entrypoint(run_id: int) -> list[str]:
    """The worker's command line, the same for every executor (after the interpreter)."""
    return ["-m", "wbc_core.worker", str(run_id)]


class LocalExecutor:
    """Today's behaviour: a detached subprocess on this machine, found again by its pid."""

    name = "local"

    def launch(self, run_id: int, log_path: Path) -> int:
        from wbc_core.jobs import launcher

        token = write_sentinel(run_id)  # the same proof as on Ray: the worker reads it before anything else
        pid = launcher.spawn("wbc_core.worker", [str(run_id)], log_path, {SENTINEL_VARIABLE: token})
        runs_db.set_pid(run_id, pid, socket.gethostname())
        return pid

    def status(self, external_id: str | None) -> str | None:  # noqa: ARG002 - the pid check lives in state
        return None

    def stop(self, external_id: str | None) -> None:  # noqa: ARG002
        return None

    def log_tail(self, external_id: str | None) -> str:  # noqa: ARG002
        return ""


def normalise_address(address: str) -> str:
    """The Ray dashboard URL of an address as a user writes it (head:8265, http://head:8265/)."""
    text = address.strip().rstrip("/")
    if text.startswith("ray://"):
        raise ExecutorError(f"the Ray address {address!r} (WBC_RAY_ADDRESS) is a Ray Client address; jobs are "
                            "submitted to the Ray dashboard instead, e.g. http://head:8265")
    if "://" not in text:
        text = f"http://{text}"
    return text


@dataclass
class RayExecutor:
    """Each run is a Ray job: `python -m wbc_core.worker RUN_ID` with the run's resource needs."""

    address: str
    name: str = "ray"

    def __post_init__(self) -> None:
        self.address = normalise_address(self.address)

    # -- cluster --------------------------------------------------------------------------------------------------
    def _get(self, path: str, timeout: float = REACH_TIMEOUT_SECONDS) -> Any:  # noqa: ANN401 - parsed JSON
        try:
            with urllib.request.urlopen(f"{self.address}{path}", timeout=timeout) as response:  # noqa: S310
                return json.loads(response.read().decode())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ExecutorError(
                f"the Ray cluster at {self.address} (WBC_RAY_ADDRESS) does not answer: {reason}. Check that "
                "`ray start --head --dashboard-host <address>` runs there and that this machine reaches its "
                "dashboard port (8265 by default); unset WBC_RAY_ADDRESS to run jobs on this machine.") from None

    def check_reachable(self) -> str:
        """The cluster's Ray version; ExecutorError in plain words if its dashboard does not answer in time."""
        return str(self._get("/api/version").get("ray_version", "?"))

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's alive nodes: hostname, ip, CPUs and GPUs (from the dashboard's node summary)."""
        data = self._get("/nodes?view=summary")
        out = []
        for node in data.get("data", {}).get("summary", []):
            raylet = node.get("raylet", {})
            if raylet.get("state", "ALIVE") != "ALIVE":
                continue
            total = raylet.get("resourcesTotal", {})
            out.append({"hostname": node.get("hostname"), "ip": node.get("ip"), "cpus": total.get("CPU", 0),
                        "gpus": total.get("GPU", 0), "gpu_names": [g.get("name") for g in node.get("gpus") or []]})
        return out

    def _client(self):  # noqa: ANN202 - ray.job_submission.JobSubmissionClient, imported only here
        def make():  # noqa: ANN202
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError:
                raise ExecutorError("a Ray address (WBC_RAY_ADDRESS) is set but Ray is not installed here: "
                                    "pip install -r requirements-scale.txt") from None
            return JobSubmissionClient(self.address)

        return current().caches.get(f"ray_client:{self.address}", make)

    # -- jobs -----------------------------------------------------------------------------------------------------
    def resources(self, run: runs_db.RunInfo) -> dict[str, float]:
        """entrypoint_num_gpus=1 for GAN and classifier runs whose config asks for CUDA; one CPU otherwise.

        A classifier run with workers N > 1 (DDP on one node) asks for N GPUs (CUDA) or N CPUs."""
        device = str(run.config.get("device", "")).lower()
        workers = int(run.config.get("workers") or 1) if run.kind == "classifier" else 1
        if run.kind in GPU_KINDS and device.startswith("cuda"):
            return {"entrypoint_num_cpus": workers, "entrypoint_num_gpus": workers}
        return {"entrypoint_num_cpus": workers}

    def launch(self, run_id: int, log_path: Path) -> int:  # noqa: ARG002 - Ray keeps the log (log_tail)
        from wbc_core.jobs.launcher import worker_environ

        self.check_reachable()
        run = runs_db.get_run(run_id)
        token = write_sentinel(run_id)
        env = {**worker_environ(current().settings), SENTINEL_VARIABLE: token}
        submission_id = f"wbc-run{run_id}-{secrets.token_hex(4)}"
        try:
            self._client().submit_job(entrypoint="python " + " ".join(entrypoint(run_id)),
                                      submission_id=submission_id, runtime_env={"env_vars": env},
                                      metadata={"wbc_run_id": str(run_id), "wbc_kind": run.kind},
                                      **self.resources(run))
        except ExecutorError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client raises RuntimeError/ConnectionError with its reason
            raise ExecutorError(f"the Ray cluster at {self.address} refused run {run_id}: {exc}") from None
        runs_db.set_executor(run_id, "ray", submission_id)
        return 0

    def status(self, external_id: str | None) -> str | None:
        """The Ray job's status word (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED); None when unknown."""
        if not external_id:
            return None
        try:
            return str(self._client().get_job_status(external_id).value)
        except Exception:  # noqa: BLE001 - unreachable cluster or unknown job: the heartbeat decides
            return None

    def stop(self, external_id: str | None) -> None:
        if external_id:
            with contextlib.suppress(Exception):  # best effort: the job may have ended meanwhile
                self._client().stop_job(external_id)

    def log_tail(self, external_id: str | None) -> str:
        if not external_id:
            return ""
        try:
            return str(self._client().get_job_logs(external_id))[-LOG_TAIL_CHARS:]
        except Exception:  # noqa: BLE001
            return ""


def executor_for(settings: Settings | None = None, executor: str | None = None,
                 kind: str | None = None) -> LocalExecutor | RayExecutor:
    """The executor of these settings (Ray when ray_address is set, except for LOCAL_KINDS), or of a stored run's
    executor column."""
    settings = settings or current().settings
    if executor == "local" or kind in LOCAL_KINDS or (executor is None and not settings.ray_address):
        return LocalExecutor()
    if not settings.ray_address:
        raise ExecutorError("this run was sent to a Ray cluster, but no Ray address (WBC_RAY_ADDRESS) is set here")
    return RayExecutor(settings.ray_address)


def check_ready(settings: Settings | None = None, kind: str | None = None) -> None:
    """Refuse before anything is queued when the configured job engine cannot take a job (ExecutorError)."""
    chosen = executor_for(settings, kind=kind)
    if isinstance(chosen, RayExecutor):
        chosen.check_reachable()


# -- the shared home --------------------------------------------------------------------------------------------
def sentinel_path(home: Path, run_id: int) -> Path:
    return home / "runs" / f"run_{run_id:05d}" / SENTINEL_FILE


def write_sentinel(run_id: int) -> str:
    """Write a fresh random token into the run's folder; the worker must read the same one (WBC_SENTINEL)."""
    token = secrets.token_hex(16)
    path = sentinel_path(current().home, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    return token


def check_shared_home(settings: Settings, run_id: int) -> str | None:
    """In the worker, before anything else: None when the home is the app's, else the plain error."""
    if not settings.sentinel_token:
        return None
    try:
        seen = sentinel_path(settings.home, run_id).read_text().strip()
    except OSError:
        seen = None
    if seen == settings.sentinel_token:
        return None
    return (f"the worker on {socket.gethostname()} cannot see WBC_HOME {settings.home}: mount the shared folder at "
            "the same path")
