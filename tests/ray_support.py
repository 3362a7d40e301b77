"""A throw-away local Ray cluster for the tests: `ray start --head` on 127.0.0.1 once per session, stopped at the end.

The head runs with 2 CPUs, no GPU, its own temporary folder (`--temp-dir`) and free ports for the dashboard (the
Jobs API lives there), the dashboard agent and the Ray Client server, so it can run beside another cluster.
Ray swaps a node address of 127.0.0.1 for the machine's outward address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
(ray/_private/services.py, resolve_ip_for_localhost); with it, every port Ray 2.60 opens binds to the loopback
(`listening()` reads them from `ss -ltnp`, and test_ray checks it).

Every process of the cluster inherits a marker variable from `ray start`; `stop()` ends exactly those processes (by
pid, found through /proc/<pid>/environ), not every Ray process of the machine as `ray stop` would.

Where Ray is not installed the Ray tests are skipped with the reason, except under CI=true: there it is an error.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ci_support import skip_unless_ci
from pg_support import free_port

MARKER = "WBC_TEST_RAY_CLUSTER"


def unavailable(reason: str) -> None:
    """Skip the calling test saying why Ray is missing; under CI fail loudly instead."""
    skip_unless_ci(f"Ray tests skipped: {reason} (pip install -r requirements-scale.txt to run them)",
                   f"CI runs the Ray tests on a real local cluster, but {reason}")


def ray_command() -> Path | None:
    """The `ray` script of this interpreter's environment, if Ray is installed there."""
    path = Path(sys.executable).parent / "ray"
    return path if path.exists() else None


class RayCluster:
    """One local head node: its address (the dashboard URL that WBC_RAY_ADDRESS takes) and its processes."""

    def __init__(self, ray: Path) -> None:
        self.ray = ray
        # Short: Ray puts Unix sockets under it, and socket paths are limited to about 107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="wbcray-", dir="/tmp"))
        self.token = secrets.token_hex(8)
        self.dashboard_port = 0
        self.address = ""
        self.running = False
        self.startup_s = 0.0
        self.output = ""

    def environ(self) -> dict[str, str]:
        """The environment the head (and so every job's entrypoint) runs in: this venv's python first on PATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("WBC_")}
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
        env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", MARKER: self.token,
                    "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"})
        return env

    def start(self) -> RayCluster:
        started = time.monotonic()
        self.dashboard_port = free_port()
        command = [str(self.ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                   "--num-cpus", "2", "--num-gpus", "0", "--disable-usage-stats", "--include-dashboard=true",
                   "--port", "0", "--dashboard-port", str(self.dashboard_port),
                   "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                   "--temp-dir", str(self.root)]
        out = subprocess.run(command, env=self.environ(), capture_output=True, text=True, timeout=180)
        self.output = out.stdout + out.stderr
        if out.returncode:
            self.stop()
            raise RuntimeError(f"`ray start --head` failed (exit {out.returncode}):\n{self.output[-3000:]}")
        self.running = True
        atexit.register(self.stop)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self._wait_for_jobs_api()
        self.startup_s = time.monotonic() - started
        return self

    def _wait_for_jobs_api(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):  # noqa: S310
                    return
            except OSError:
                if time.monotonic() > deadline:
                    message = f"the Ray dashboard at {self.address} did not answer in {timeout:.0f} s"
                    raise RuntimeError(message) from None
                time.sleep(0.5)

    def pids(self) -> list[int]:
        """The processes of this cluster: those that inherited its marker variable."""
        needle = f"{MARKER}={self.token}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def listening(self) -> list[tuple[str, int, str]]:
        """(address, port, process name) of each TCP socket this cluster's processes listen on (from `ss -ltnp`)."""
        ours = set(self.pids())
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
        sockets = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 6:
                continue
            local = fields[3]
            for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
                if int(pid) in ours:
                    host, _, port = local.rpartition(":")
                    sockets.append((host.strip("[]"), int(port), name))
        return sorted(set(sockets))

    def stop(self) -> None:
        """End this cluster's processes (TERM, then KILL after 5 s) and remove its folder (idempotent)."""
        if self.running:
            self.running = False
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):  # gcs_server and raylet may ignore TERM
                for pid in self.pids():
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + wait
                while self.pids() and time.monotonic() < deadline:
                    time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.") or host == "::ffff:127.0.0.1"


def start_cluster() -> RayCluster:
    """A running local head node, or skip (fail under CI) saying why there is none."""
    script = ray_command()
    if script is None:
        unavailable(f"Ray is not installed in {Path(sys.executable).parent.parent}")
    try:
        from ray.job_submission import JobSubmissionClient  # noqa: F401
    except ImportError as exc:
        unavailable(f"the Ray Jobs API does not import ({exc}); install ray[default]")
    cluster = RayCluster(script)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        unavailable(f"a local Ray head node would not start: {exc}")
    return cluster
