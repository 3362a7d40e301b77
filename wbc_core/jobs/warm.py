"""The warm starter: a process that has already imported torch and forks each job's worker from there.

A job process used to spend about 5 of its first 6-7 s importing (torch 2 s, torch._dynamo 1.6 s, scikit-learn's
metrics 1.4 s on the 2-core EPYC), before it did any work: an acceptance-model retrain, a scoring pass or a tiny
run waited on that every time. A long-lived process (the Streamlit server, a test or bench session) now keeps one
warm starter beside it: `python -m wbc_core.warm_starter` imports those libraries once, then forks a child per job.
The child detaches (its own session, as a cold worker), takes the job's environment, log and arguments, and runs
`python -m wbc_core.worker RUN_ID` in place, so the pid, cancel, kill and reconcile work as before.

Forking is only safe while the starter has started no Python thread and not touched CUDA: it checks both after its
imports (the second with a probe child that asks torch) and refuses to serve otherwise (the launcher then starts
workers cold, as before). Variables that libraries read while importing (OMP_*, MKL_*, CUDA_*, PYTHON*, ...) must
be the job's own: a job whose values differ from the starter's is started cold and a new starter is made for them
(`import_environ`).

Protocol, one JSON line each way on the starter's stdin/stdout: first the starter writes
{"ready": bool, "why": str, "seconds": float}; then for each request {"module", "args", "env", "log", "cwd"} it
answers {"pid": int} (or {"error": str}).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# What a job imports before it works, in the order a worker meets them (the job bodies import the rest lazily).
PRELOAD = ("numpy", "PIL.Image", "sqlalchemy", "torch", "torch._dynamo", "torchvision", "sklearn.metrics")
# Variable prefixes that a library may read at import (libgomp's OMP_WAIT_POLICY when it loads, torch's flags):
# a job whose values differ from the starter's would silently run with the starter's, so it is started cold.
IMPORT_TIME_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_",
                        "CUBLAS", "LD_", "PYTHON", "TMP", "TEMP")
WARM_LOG_LINE = "forked by the warm starter"
ANSWER_TIMEOUT_SECONDS = 10.0  # how long a launch waits for the starter's pid before starting the job cold


def import_environ(env: Mapping[str, str]) -> dict[str, str]:
    """The part of an environment that libraries may read while the starter imports them."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)}


# -- the starter process -------------------------------------------------------------------------------------------

def fork_safety() -> str:
    """Why forking this process would be unsafe now ('' when it is safe).

    A Python thread would leave the child with locks (the import lock, logging's) held by a thread that does not
    exist there. Native pools are fine: numpy's and scipy's OpenBLAS and jemalloc's background thread start while
    importing (three threads here) and take fork in hand with their own atfork handlers, as every
    multiprocessing "fork" child of a numpy process relies on; the OpenMP pools start on first use, never here."""
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.current_thread())
        return f"the imports started Python threads ({names}); a forked child would inherit their locks half-held"
    torch = sys.modules.get("torch")
    if torch is not None and (torch.cuda.is_initialized() or _probe_child_in_bad_fork()):
        # torch.cuda.is_available() alone does it (it asks the driver), even on a machine without a GPU.
        return "CUDA was touched while importing; a forked child could not use the GPU"
    return ""


def _probe_child_in_bad_fork() -> bool:
    """Fork a probe that asks torch whether CUDA is unusable in a child of this process (torch's own verdict)."""
    pid = os.fork()
    if pid == 0:
        os._exit(3 if sys.modules["torch"].cuda._is_in_bad_fork() else 0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _become_job(request: dict[str, Any]) -> None:
    """In the forked child: detach, take the job's streams, environment and arguments, run its module; never
    returns (it exits with the module's exit code, atexit handlers run, as a cold worker's)."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the starter ignores it; a job's own subprocess.run needs it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()  # as start_new_session: Ctrl-C on the UI does not reach it, and kill() stops its group
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = [request["module"], *request["args"]]
        print(f"{WARM_LOG_LINE} (pid {os.getppid()})", flush=True)  # in the job's log: how this process began
    except BaseException:  # noqa: BLE001 - a child must never fall back into the starter's loop
        traceback.print_exc()
        os._exit(70)
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code: Any = 0
    except SystemExit as done:
        code = done.code
    except BaseException:  # noqa: BLE001 - as an uncaught exception in a cold process: traceback, exit 1
        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code: Any) -> None:  # noqa: ANN401 - a SystemExit code: None, a number or a message
    """End the child as the interpreter would (non-daemon threads joined, atexit handlers run, streams flushed),
    but without tearing down every module: with torch loaded that took 2 s of CPU after a torch-free job's end."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined] - as multiprocessing's own children end
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve() -> int:
    """The starter's main loop: import, check, answer ready, then fork a child per request until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the server's terminal: the server ends, stdin closes
    # Its imports run at the server's own priority: niced to 19 under a busy machine (the test suite's workers) they
    # took minutes, and every job started cold meanwhile. Each job lowers its own priority (wbc_core.worker).
    started = time.monotonic()
    try:
        for module in PRELOAD:
            importlib.import_module(module)
        from wbc_core.jobs.kinds import KINDS

        for kind in KINDS.values():  # the job bodies' own modules (cheap: they import torch lazily)
            importlib.import_module(kind.body.partition(":")[0])
        why = fork_safety()
    except Exception as exc:  # noqa: BLE001 - reported to the launcher, which then starts jobs cold
        why = f"preloading failed: {type(exc).__name__}: {exc}"
    _answer({"ready": not why, "why": why, "seconds": round(time.monotonic() - started, 2)})
    if why:
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps ended jobs: no zombie answers kill -0
    for line in sys.stdin:
        try:
            request = json.loads(line)
            open(request["log"], "ab").close()  # a log the job cannot write is this launch's error, not the child's
        except (ValueError, KeyError, OSError) as exc:
            _answer({"error": f"{type(exc).__name__}: {exc}"})
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become_job(request)
        _answer({"pid": pid})
    # Stdin closed: the server has ended. Tearing down torch's modules would hold its exit up by 2 s (close() waits).
    os._exit(0)


# -- the launcher's side -------------------------------------------------------------------------------------------

class WarmStarter:
    """One starter process and the pipe to it (the launcher holds one per long-lived process)."""

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self.import_env = import_environ(env)
        self.cwd = cwd
        self.ready: bool | None = None  # None until the starter has said whether it serves
        self.refused = False  # it said it cannot serve (or died importing): asking again would get the same answer
        self.why = ""
        self.preload_seconds: float | None = None
        self._lock = threading.Lock()
        # stderr is inherited: a crash of the starter shows in the server's log.
        self.proc = subprocess.Popen([sys.executable, "-m", "wbc_core.warm_starter"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=dict(env), cwd=str(cwd), bufsize=0)

    def fits(self, env: Mapping[str, str]) -> bool:
        """Whether a job with this environment may be forked from this starter."""
        return import_environ(env) == self.import_env

    def alive(self) -> bool:
        return self.proc.poll() is None

    def poll_ready(self, timeout: float = 0.0) -> bool:
        """Whether the starter serves; reads its first line when it has come (waits at most timeout s for it)."""
        with self._lock:
            if self.ready is None and self._readable(timeout):
                hello = self._read()
                self.ready = bool(hello and hello.get("ready"))
                self.refused = not self.ready
                self.why = (hello or {}).get("why") or ("" if hello else "the starter ended before it was ready")
                self.preload_seconds = (hello or {}).get("seconds")
            return bool(self.ready) and self.alive()

    def start(self, module: str, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> int | None:
        """Fork `python -m module args` with env from the starter; its pid, or None when the job must start cold."""
        if not self.fits(env) or not self.poll_ready():
            return None
        request = {"module": module, "args": [str(a) for a in args], "env": dict(env), "log": str(log_path),
                   "cwd": str(self.cwd)}
        with self._lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                answer = self._read() if self._readable(ANSWER_TIMEOUT_SECONDS) else None
            except (OSError, ValueError):
                answer = None
            if answer and "pid" in answer:
                return int(answer["pid"])
            if answer:  # the starter refused this request (e.g. an unwritable log) and serves on
                self.why = str(answer.get("error"))
                return None
            self.why = "the starter did not answer"
            self.ready = False  # never used again; the launcher makes a new one
            return None

    def close(self) -> None:
        """End the starter (its forked jobs run on: they have their own sessions)."""
        with self._lock:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _readable(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        return bool(select.select([self.proc.stdout], [], [], timeout)[0])

    def _read(self) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # unbuffered pipe: select() above sees exactly what is unread
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None
