"""The warm starter: jobs of a long-lived process are forked from a process that has already imported torch, and
behave exactly as cold workers do (own session, niceness, cancel, kill, crash, exit codes, logs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import account, wait_for

from db import runs
from wbc_core import context, jobs, retrain
from wbc_core.importing import import_folder
from wbc_core.jobs import launcher, warm
from wbc_core.jobs.worker import JOB_NICENESS

pytestmark = pytest.mark.databases("sqlite", "postgresql")


@pytest.fixture()
def starter(wbc_home) -> warm.WarmStarter:
    """This test process's starter, serving (made once per process; its imports take seconds)."""
    made = launcher.warm_starter()
    assert made is not None, "a test process keeps a warm starter"
    assert made.poll_ready(timeout=180), made.why
    return made


def _start(config: dict) -> int:
    run_id = runs.create_run("selftest", None, config, seed=0)
    jobs.launch(run_id)
    return run_id


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _running(run_id: int) -> runs.RunInfo:
    return wait_for(lambda: (info := runs.get_run(run_id)).status == "running" and info, what="the run running")


def test_a_job_is_forked_by_the_starter_in_its_own_session_below_the_server(starter):
    run_id = _start({"steps": 200, "sleep": 0.02})
    pid = _running(run_id).pid
    assert _parent(pid) == starter.proc.pid  # forked, not a cold `python -m wbc_core.worker`
    assert os.getsid(pid) == pid  # detached: Ctrl-C on the server does not reach it, kill() stops its group
    assert os.getpriority(os.PRIO_PROCESS, pid) >= JOB_NICENESS  # it yields the CPU to the page server
    assert jobs.request_stop(run_id, "system:test")
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "cancelled" and 0 < info.result["steps_done"] < 200
    log = (jobs.run_dir(run_id) / "worker.log").read_text()
    assert f"{warm.WARM_LOG_LINE} (pid {starter.proc.pid})" in log
    assert f"run {run_id} (selftest) started, pid {pid}" in log and f"run {run_id} cancelled" in log
    wait_for(lambda: not jobs.pid_alive(pid), what="the ended job reaped")  # no zombie answers kill -0


def test_a_failing_and_a_dying_job_end_as_cold_ones_and_the_starter_serves_on(starter):
    failing = _start({"steps": 5, "sleep": 0.01, "raise_at": 2})
    assert jobs.wait(failing, timeout=60).status == "failed"
    dying = _start({"steps": 5, "sleep": 0.01, "die_at": 2})
    info = jobs.wait(dying, timeout=60)
    assert info.status == "failed" and "stopped without reporting back" in info.error
    after = _start({"steps": 2, "sleep": 0.01})
    pid = runs.get_run(after).pid
    assert jobs.wait(after, timeout=60).status == "succeeded"
    assert starter.alive() and launcher.warm_starter() is starter
    assert pid != os.getpid()
    for run_id in (failing, dying):  # neither child fell back into the starter's loop: both end
        gone = runs.get_run(run_id).pid
        wait_for(lambda gone=gone: not jobs.pid_alive(gone), what=f"process {gone} gone")


def test_kill_stops_a_forked_job_and_reconcile_marks_it(starter):
    run_id = _start({"steps": 1000, "sleep": 0.05})
    pid = _running(run_id).pid
    assert _parent(pid) == starter.proc.pid
    jobs.kill(run_id)
    info = jobs.wait(run_id, timeout=60)
    assert info.status == "failed" and "killed or crashed" in info.error
    assert starter.alive()


def test_a_torch_job_trains_from_the_starter(starter, tiny_folder):
    dataset_id = import_folder(tiny_folder, "tiny", size=32, user=account()).dataset_id
    config = {"model": "small_cnn", "epochs": 1, "batch_size": 8, "num_threads": 2, "device": "cpu"}
    run_id = retrain.start_classifier_run(dataset_id, "real", config, user=account())
    info = jobs.wait(run_id, timeout=240)
    assert info.status == "succeeded", info.error
    assert 0.0 <= info.result["val"]["accuracy"] <= 1.0
    assert (jobs.run_dir(run_id).parent.parent / info.result["model_path"]).is_file()
    assert starter.alive() and launcher.warm_starter() is starter


def test_another_import_environment_starts_cold_and_gets_a_starter_of_its_own(starter, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by libgomp when torch loads: the old starter cannot honour it
    run_id = _start({"steps": 100, "sleep": 0.02})
    pid = _running(run_id).pid
    assert _parent(pid) == os.getpid()  # cold, as before the starter existed
    assert warm.WARM_LOG_LINE not in (jobs.run_dir(run_id) / "worker.log").read_text()
    jobs.request_stop(run_id, "system:test")
    assert jobs.wait(run_id, timeout=60).status == "cancelled"
    replaced = launcher.warm_starter()
    assert replaced is not starter and not starter.alive()
    assert replaced.fits(launcher.job_environ(context.current().settings, {}))
    assert replaced.poll_ready(timeout=180), replaced.why
    monkeypatch.delenv("OMP_NUM_THREADS")


def test_switched_off_or_short_lived_processes_start_cold(wbc_home, monkeypatch):
    ctx = context.current()
    with context.using(context.with_settings(ctx, warm_jobs=False)):
        assert launcher.warm_starter() is None
    with context.using(context.Context(ctx.settings, "cli", ctx.database)):
        assert launcher.warm_starter() is None  # one job, then the command ends: a starter would double the imports
    assert context.Settings.from_environ({"WBC_WARM_JOBS": "0"}).warm_jobs is False
    assert context.Settings.from_environ({}).warm_jobs is True


def test_a_dead_starter_is_replaced_and_the_launch_goes_cold(starter):
    starter.proc.kill()
    starter.proc.wait()
    run_id = _start({"steps": 100, "sleep": 0.02})
    pid = _running(run_id).pid
    assert _parent(pid) == os.getpid()
    jobs.request_stop(run_id, "system:test")
    assert jobs.wait(run_id, timeout=60).status == "cancelled"
    assert launcher.warm_starter() is not starter


def test_a_refused_request_leaves_the_starter_serving(starter, tmp_path):
    env = {**os.environ, **launcher.worker_environ(context.current().settings)}
    assert starter.start("wbc_core.worker", ["1"], env, tmp_path / "no" / "such" / "folder" / "worker.log") is None
    assert "No such file or directory" in starter.why
    assert starter.poll_ready() and starter.alive()


def test_jobs_forked_before_the_starter_ends_run_on(starter):
    run_id = _start({"steps": 40, "sleep": 0.05})
    _running(run_id)
    starter.close()  # as when the server stops: stdin closes, the starter exits
    assert starter.proc.returncode == 0
    assert jobs.wait(run_id, timeout=60).status == "succeeded"


def test_a_python_thread_makes_forking_unsafe():
    assert warm.fork_safety() == "" or "thread" in warm.fork_safety()  # whatever this test process already runs
    release = threading.Event()
    helper = threading.Thread(target=release.wait, name="helper-thread")
    helper.start()
    try:
        assert "helper-thread" in warm.fork_safety()
    finally:
        release.set()
        helper.join()


def test_a_child_ends_as_the_interpreter_would(tmp_path):
    # Its non-daemon threads finish and its atexit handlers run before it exits, with the interpreter's exit code.
    code = (f"import atexit, threading, time\n"
            f"from wbc_core.jobs.warm import _exit\n"
            f"atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, 'w').write('ran'))\n"
            f"threading.Thread(target=lambda: (time.sleep(0.5), open({str(tmp_path / 'thread')!r}, 'w').write('done')))"
            f".start()\n"
            f"_exit('the job says why it failed')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=launcher.PROJECT_ROOT)
    assert done.returncode == 1 and "the job says why it failed" in done.stderr
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"


def test_import_environ_keeps_only_what_libraries_read_while_importing():
    env = {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": "/x", "WBC_HOME": "/h",
           "MLFLOW_TRACKING_URI": "file:/m", "PATH": "/bin"}
    assert warm.import_environ(env) == {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": "/x"}


@pytest.mark.parametrize(("leftover", "why"), [
    ("import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
     "Python threads"),
    ("import torch\ntorch.cuda.is_available()\n", "CUDA was touched"),  # asks the driver: poisons fork, GPU or not
])
def test_the_starter_refuses_to_serve_when_its_imports_leave_something_unsafe(tmp_path, leftover, why):
    # As if a library did it while the starter imports: it says why and exits; the launcher then starts jobs cold.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(leftover)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(launcher.PROJECT_ROOT)])}
    made = warm.WarmStarter(env, launcher.PROJECT_ROOT)
    try:
        assert not made.poll_ready(timeout=180)
        assert why in made.why
        assert made.start("wbc_core.worker", ["1"], env, tmp_path / "worker.log") is None
    finally:
        made.close()
    assert made.proc.returncode == 1


def test_a_refusing_starter_is_not_asked_again_and_jobs_start_cold(wbc_home, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import threading, time\n"
                                           "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    monkeypatch.setenv("PYTHONPATH", str(site))  # this process's environment: the jobs' and a new starter's too
    refusing = launcher.warm_starter()
    assert not refusing.poll_ready(timeout=180) and refusing.refused and "Python threads" in refusing.why
    for _ in range(2):
        run_id = _start({"steps": 2, "sleep": 0.01})
        assert jobs.wait(run_id, timeout=60).status == "succeeded"
        assert warm.WARM_LOG_LINE not in (jobs.run_dir(run_id) / "worker.log").read_text()
    assert launcher.warm_starter() is None and launcher._warm is refusing  # no new starter, no new imports
