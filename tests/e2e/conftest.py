"""Fixtures for browser tests: a real `streamlit run app.py` on a free port with its own WBC_HOME,
and a headless Chromium page driven by Playwright (the system Chromium; nothing is downloaded)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 60
UI_TIMEOUT_MS = 20_000  # one script run (an import, a rerun) on a busy 2-core CI box; runs get longer waits


@dataclass(frozen=True)
class Server:
    url: str
    home: Path
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture()
def e2e_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The WBC_HOME the server uses; this test process has a context on it too, to check the database."""
    from support import active_home

    with active_home(tmp_path / "wbc_home", monkeypatch) as home:
        yield home
        _stop_leftover_runs()


def _stop_leftover_runs() -> None:
    """Workers run in their own sessions and outlive the server: stop any a failed test left behind."""
    from db import runs as runs_db
    from wbc_core import jobs

    for run in runs_db.active_runs():
        jobs.request_stop(run.id, by="system:test-cleanup")
        if jobs.wait(run.id, timeout=30).active:
            jobs.kill(run.id)
    for run in runs_db.list_runs():
        deadline = time.monotonic() + 30
        while run.pid and jobs.pid_alive(run.pid) and time.monotonic() < deadline:
            time.sleep(0.2)


def _serve(home: Path, log: Path, env_overrides: dict[str, str]) -> tuple[Server, subprocess.Popen]:
    """Start `streamlit run app.py` on a free port and wait until /_stcore/health answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "WBC_HOME": str(home), "PYTHONUNBUFFERED": "1", **env_overrides}
    env.pop("WBC_DB_URL", None)
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(url):
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode} before it was healthy:\n{log.read_text()}")
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"streamlit not healthy after {START_TIMEOUT_S} s:\n{log.read_text()}")
        time.sleep(0.25)
    return Server(url, home, log), proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture()
def streamlit_server(e2e_home: Path, tmp_path: Path) -> Iterator[Server]:
    """`streamlit run app.py` in a subprocess, ready once /_stcore/health answers; stopped afterwards.

    Sign-in is off (WBC_AUTH=off): the expert journey runs as the single local user 'eve'.
    """
    server, proc = _serve(e2e_home, tmp_path / "streamlit.log", {"WBC_AUTH": "off", "WBC_USER": "eve"})
    try:
        yield server
    finally:
        _stop(proc)


@pytest.fixture()
def start_streamlit(e2e_home: Path, tmp_path: Path) -> Iterator:
    """A function that starts `streamlit run app.py` with sign-in on (after the test has prepared users and data)
    and returns its Server; every server it started is stopped afterwards. Keyword arguments are extra env vars."""
    procs: list[subprocess.Popen] = []

    def start(**env: str) -> Server:
        server, proc = _serve(e2e_home, tmp_path / f"streamlit_{len(procs)}.log",
                              {"WBC_AUTH": "on", "WBC_USER": "", **env})
        procs.append(proc)
        return server

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


@pytest.fixture()
def browser_page():  # noqa: ANN201
    """A Playwright page in the system's headless Chromium; fails (never skips) when it is missing."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"end-to-end tests need Chromium at {CHROMIUM} (Debian package 'chromium'); it is missing. "
                    "Install it with apt; `playwright install` is not used by this project.")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(30_000)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            yield page
            context.close()
        finally:
            browser.close()
