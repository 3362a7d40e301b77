"""Jobs on a real local Ray cluster (tests/ray_support.py starts it once per session): the Ray executor end to end.

Where Ray is not installed the cluster tests skip with the reason (CI=true fails instead). The wrong-address and
shared-home tests need no cluster and always run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg_support import free_port
from ray_support import RayCluster, is_loopback
from support import account

from db import runs
from wbc_core import context, jobs
from wbc_core.jobs import executors

ROOT = Path(__file__).resolve().parents[1]
# A GAN that trains in a few seconds on one CPU: 32 px, width 8, a full checkpoint every 10 steps.
TINY_GAN = {"steps": 240, "batch_size": 8, "g_width": 8, "d_width": 8, "z_dim": 16, "log_every": 10,
            "sample_every": 120, "checkpoint_every": 10, "grid_per_class": 2, "ema_start": 2,
            "bn_refresh_batches": 1, "device": "cpu", "num_threads": 1, "aux_weight": 0.0}


@pytest.fixture()
def ray_home(wbc_home: Path, ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    """wbc_home with WBC_RAY_ADDRESS pointing at the session's cluster (the context, and CLI subprocesses)."""
    monkeypatch.setenv("WBC_RAY_ADDRESS", ray_cluster.address)
    with context.using(context.with_settings(context.current(), ray_address=ray_cluster.address)):
        yield wbc_home


def _wait_for(predicate, timeout: float = 90.0, what: str = "condition"):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _tiny_dataset(folder: Path) -> int:
    from wbc_core.importing import import_folder

    return import_folder(folder, "tiny", size=32, user=account()).dataset_id


def _cli(*args: str, ok: bool = True, env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "WBC_USER": "admin", **(env or {})}  # the account that account() creates
    out = subprocess.run([sys.executable, "-m", "wbc_core", "--json", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert (out.returncode == 0) == ok, f"exit {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- without a cluster ------------------------------------------------------------------------------------------
def test_a_wrong_ray_address_is_refused_before_anything_is_queued(wbc_home):
    nowhere = f"http://127.0.0.1:{free_port()}"
    with context.using(context.with_settings(context.current(), ray_address=nowhere)):
        with pytest.raises(executors.ExecutorError, match="does not answer") as refused:
            jobs.submit("selftest", None, {"steps": 1})
        assert nowhere in str(refused.value) and "WBC_RAY_ADDRESS" in str(refused.value)
        assert runs.list_runs(kind="selftest") == []  # no row at all
        # A run created by a domain call before its launch (GAN, classifier) is closed, never left queued.
        run_id = runs.create_run("selftest", None, {}, seed=0)
        with pytest.raises(executors.ExecutorError):
            jobs.launch(run_id)
        info = runs.get_run(run_id)
        assert info.status == "failed" and "does not answer" in info.error
        assert runs.active_runs() == []


def test_cli_with_a_wrong_ray_address_says_so_and_queues_nothing(wbc_home, tiny_folder):
    _tiny_dataset(tiny_folder)
    nowhere = f"http://127.0.0.1:{free_port()}"
    out = _cli("train", "--dataset", "tiny", "--model", "small_cnn", "--epochs", "1", "--detach", ok=False,
               env={"WBC_RAY_ADDRESS": nowhere})
    assert "does not answer" in out["error"] and nowhere in out["error"]
    assert runs.active_runs() == []


def test_a_ray_client_address_is_refused_with_the_right_form(wbc_home):
    with pytest.raises(executors.ExecutorError, match="http://head:8265"):
        executors.RayExecutor("ray://head:10001")


@pytest.mark.databases("sqlite", "postgresql")
def test_a_worker_that_cannot_see_the_home_fails_in_plain_words(wbc_home):
    run_id = runs.create_run("selftest", None, {"steps": 1}, seed=0)
    executors.write_sentinel(run_id)  # the app's token; the worker below is given another one
    env = {**os.environ, "WBC_HOME": str(wbc_home), "WBC_SENTINEL": "not-the-token", "PYTHONPATH": str(ROOT)}
    if context.current().settings.db_url != f"sqlite:///{wbc_home / 'wbc.db'}":
        env["WBC_DB_URL"] = context.current().settings.db_url  # PostgreSQL: outside the home the worker cannot see
    done = subprocess.run([sys.executable, "-m", "wbc_core.worker", str(run_id)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    info = runs.get_run(run_id)
    assert info.status == "failed"
    assert info.error.startswith("the worker on ") and f"cannot see WBC_HOME {wbc_home}" in info.error
    assert "mount the shared folder at the same path" in info.error


def test_the_local_executor_stays_the_default(wbc_home):
    assert context.current().settings.ray_address is None
    assert isinstance(executors.executor_for(), executors.LocalExecutor)
    run_id = jobs.submit("selftest", None, {"steps": 2, "sleep": 0.01})
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "succeeded", info.error
    assert (info.executor, info.external_id) == ("local", None)


def test_imports_stay_local_and_cuda_training_asks_ray_for_a_gpu(wbc_home):
    settings = context.current().settings
    with_ray = context.with_settings(context.current(), ray_address="http://head:8265").settings
    assert isinstance(executors.executor_for(with_ray, kind="import"), executors.LocalExecutor)  # the host's folders
    ray = executors.executor_for(with_ray, kind="gan")
    assert isinstance(ray, executors.RayExecutor) and ray.address == "http://head:8265"
    assert isinstance(executors.executor_for(settings, kind="gan"), executors.LocalExecutor)
    needs = {}
    for kind, device in (("gan", "cuda"), ("classifier", "cuda:1"), ("gan", "cpu"), ("score", "cuda")):
        needs[kind, device] = ray.resources(runs.get_run(runs.create_run(kind, None, {"device": device}, seed=0)))
    assert needs["gan", "cuda"] == needs["classifier", "cuda:1"] == {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": 1}
    assert needs["gan", "cpu"] == needs["score", "cuda"] == {"entrypoint_num_cpus": 1}


# -- on the local cluster -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_cluster_listens_on_the_loopback_only(ray_cluster):
    sockets = ray_cluster.listening()
    assert any(port == ray_cluster.dashboard_port for _, port, _ in sockets), sockets
    outside = [s for s in sockets if not is_loopback(s[0].removeprefix("::ffff:"))]
    assert outside == [], f"Ray listens beyond the loopback: {outside}"


@pytest.mark.slow
@pytest.mark.databases("sqlite", "postgresql")
def test_a_selftest_job_runs_as_a_ray_job_and_reports_through_the_database(ray_home):
    run_id = jobs.submit("selftest", None, {"steps": 3, "sleep": 0.05}, started_by="admin")
    queued = runs.get_run(run_id)
    assert queued.executor == "ray" and queued.external_id.startswith(f"wbc-run{run_id}-")
    info = jobs.wait(run_id, timeout=120)
    assert info.status == "succeeded", info.error
    assert [m["value"] for m in runs.metrics([run_id], ["value"])] == [1.0, 2.0, 3.0]
    assert info.pid and info.pid != os.getpid()  # the Ray job's own worker process reported in
    assert run_id in [r.id for r in runs.list_runs(kind="selftest")]
    ray = executors.RayExecutor(context.current().settings.ray_address)
    _wait_for(lambda: ray.status(info.external_id) == "SUCCEEDED", 60, "the Ray job to end")
    assert f"run {run_id} (selftest) started" in ray.log_tail(info.external_id)


@pytest.mark.slow
def test_cancel_stops_a_ray_job_at_its_next_step(ray_home):
    run_id = jobs.submit("selftest", None, {"steps": 600, "sleep": 0.05})
    _wait_for(lambda: runs.get_run(run_id).status == "running", 120, "the Ray job to start")
    assert jobs.cancel(run_id, account())
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "cancelled"
    assert info.result["steps_done"] < 600
    ray = executors.RayExecutor(context.current().settings.ray_address)
    _wait_for(lambda: ray.status(info.external_id) in executors.RAY_ENDED, 60, "the Ray job to end")


@pytest.mark.slow
def test_a_cancelled_ray_job_that_does_not_stop_is_stopped_through_ray_after_the_grace(ray_home, monkeypatch):
    from wbc_core.jobs import state

    monkeypatch.setattr(state, "CANCEL_GRACE_SECONDS", 1.0)
    run_id = jobs.submit("selftest", None, {"steps": 2, "sleep": 60})  # deaf to cancel for a minute
    _wait_for(lambda: runs.get_run(run_id).status == "running", 120, "the Ray job to start")
    assert jobs.cancel(run_id, account())
    info = jobs.wait(run_id, timeout=45, poll=0.5)  # wait() reconciles: the grace passes, Ray stops the job
    assert info.status == "cancelled"
    assert f"its Ray job {info.external_id} was stopped" in info.error
    ray = executors.RayExecutor(context.current().settings.ray_address)
    _wait_for(lambda: ray.status(info.external_id) == "STOPPED", 60, "Ray to stop the job")


@pytest.mark.slow
def test_a_killed_ray_gan_worker_is_marked_failed_then_resumes_to_the_end(ray_home, tiny_folder):
    from wbc_core.gan_runs import resume_gan_run, start_gan_run

    _tiny_dataset(tiny_folder)
    run_id = start_gan_run("tiny", TINY_GAN, user=account())
    assert runs.get_run(run_id).executor == "ray"
    _wait_for(lambda: runs.checkpoints(run_id), 180, "the GAN's first checkpoint")
    pid = runs.get_run(run_id).pid
    os.kill(pid, signal.SIGKILL)  # the worker process that the Ray job started, mid-run
    info = jobs.wait(run_id, timeout=90)
    assert info.status == "failed"
    assert f"the Ray job {info.external_id} ended (FAILED)" in info.error
    assert info.result == {} and runs.checkpoints(run_id)

    resumed = resume_gan_run(run_id, user=account())
    done = jobs.wait(resumed, timeout=240)
    assert done.status == "succeeded", done.error
    assert done.executor == "ray" and done.external_id != info.external_id
    assert done.result["steps_done"] == TINY_GAN["steps"]
    assert done.config["resumed_from_run"] == run_id
    assert {run_id, resumed} <= {r.id for r in runs.list_runs(kind="gan")}


@pytest.mark.slow
def test_a_classifier_job_from_the_cli_runs_on_ray_and_is_listed(ray_home, tiny_folder):
    _tiny_dataset(tiny_folder)
    started = _cli("train", "--dataset", "tiny", "--model", "small_cnn", "--epochs", "1", "--batch", "16",
                   "--detach")
    run_id = started["run_id"]
    assert runs.get_run(run_id).executor == "ray"
    info = jobs.wait(run_id, timeout=240)
    assert info.status == "succeeded", info.error
    assert "accuracy" in info.result.get("test", {})
    listed = _cli("runs")
    assert run_id in [r["id"] for r in listed["runs"] if r["kind"] == "classifier" and r["status"] == "succeeded"]


# -- doctor -------------------------------------------------------------------------------------------------------
def test_doctor_on_this_machine_checks_the_database_and_a_local_probe_job(wbc_home):
    out = _cli("doctor")
    checks = {c["name"]: c for c in out["checks"]}
    assert out["status"] == "ok" and all(c["ok"] for c in checks.values()), out
    assert "migrated" in checks["database"]["detail"]
    assert checks["ray"].get("skipped") and "WBC_RAY_ADDRESS unset" in checks["ray"]["detail"]
    assert f"read the sentinel in {wbc_home}" in checks["shared folder"]["detail"]


def test_doctor_with_a_wrong_ray_address_fails_with_a_hint(wbc_home):
    nowhere = f"http://127.0.0.1:{free_port()}"
    out = _cli("doctor", ok=False, env={"WBC_RAY_ADDRESS": nowhere})
    checks = {c["name"]: c for c in out["checks"]}
    assert out["status"] == "failed" and checks["database"]["ok"]
    assert not checks["ray"]["ok"] and nowhere in checks["ray"]["detail"]
    assert "ray start --head" in checks["ray"]["hint"]
    assert not checks["shared folder"]["ok"] and checks["shared folder"]["hint"] == "fix the Ray check first"
    assert runs.active_runs() == []


@pytest.mark.slow
def test_doctor_on_the_ray_cluster_lists_its_nodes_and_probes_the_shared_folder(ray_home):
    out = _cli("doctor")
    checks = {c["name"]: c for c in out["checks"]}
    assert out["status"] == "ok", out
    assert checks["ray"]["gpus"] == 0 and [n["cpus"] for n in checks["ray"]["nodes"]] == [2]
    assert "no GPU in the cluster" in checks["ray"]["note"]
    assert checks["shared folder"]["detail"].startswith("a Ray worker on ")
    probe = runs.get_run(checks["shared folder"]["run_id"])
    assert probe.executor == "ray" and probe.status == "succeeded"
