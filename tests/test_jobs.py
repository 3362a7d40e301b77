"""The job runner: real worker processes, heartbeats, cancel, and crashed jobs marked failed."""

from __future__ import annotations

import os
import time

import pytest
from support import account

from db import runs
from wbc_core import jobs
from wbc_core.jobs.worker import JOB_NICENESS

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def _start(config: dict) -> int:
    run_id = runs.create_run("selftest", None, config, seed=0)
    jobs.launch(run_id)
    return run_id


def test_job_runs_in_its_own_process_and_reports_progress(wbc_home):
    run_id = _start({"steps": 4, "sleep": 0.01})
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "succeeded", info.error
    assert info.pid and info.pid != os.getpid()
    values = [m["value"] for m in runs.metrics([run_id], ["value"])]
    assert values == [1.0, 2.0, 3.0, 4.0]
    assert info.result["steps_done"] == 4
    assert info.result["niceness"] >= JOB_NICENESS > os.nice(0)  # it yields the CPU to the page server
    assert info.progress_fraction == 1.0


def test_cancel_stops_a_running_job(wbc_home):
    run_id = _start({"steps": 400, "sleep": 0.05})
    deadline = time.monotonic() + 30
    while runs.get_run(run_id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert jobs.cancel(run_id, account())
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "cancelled"
    assert info.result["steps_done"] < 400


def test_cancel_of_a_queued_run_cancels_it_at_once(wbc_home):
    run_id = runs.create_run("selftest", None, {}, seed=0)
    assert jobs.cancel(run_id, account())
    assert runs.get_run(run_id).status == "cancelled"
    assert not jobs.cancel(run_id, account())  # already ended: nothing to do


def test_exception_in_job_marks_it_failed_with_the_error(wbc_home):
    run_id = _start({"steps": 5, "sleep": 0.01, "raise_at": 2})
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "failed"
    assert "selftest asked to fail at step 2" in info.error


def test_crashed_process_is_marked_failed_by_reconcile(wbc_home):
    run_id = _start({"steps": 5, "sleep": 0.01, "die_at": 2})
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "failed"
    assert "stopped without reporting back" in info.error


def test_killed_process_is_marked_failed(wbc_home):
    run_id = _start({"steps": 1000, "sleep": 0.05})
    deadline = time.monotonic() + 30
    while runs.get_run(run_id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    jobs.kill(run_id)
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "failed"
    assert "killed or crashed" in info.error


def test_stale_heartbeat_counts_as_dead_even_if_pid_lives(wbc_home, monkeypatch):
    run_id = runs.create_run("selftest", None, {}, seed=0)
    runs.mark_started(run_id, pid=1, hostname="another-host")  # a pid we cannot judge from here
    monkeypatch.setattr(jobs.state, "STALE_SECONDS", -1.0)
    assert jobs.reconcile() == [run_id]
    assert runs.get_run(run_id).status == "failed"


def test_finished_run_is_never_overwritten(wbc_home):
    run_id = runs.create_run("selftest", None, {}, seed=0)
    runs.mark_started(run_id, pid=1, hostname="h")
    assert runs.finish_run(run_id, "succeeded", result={"x": 1})
    assert not runs.finish_run(run_id, "failed", error="late")
    assert runs.get_run(run_id).status == "succeeded"
