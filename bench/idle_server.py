"""CPU share of an idle server with one open tab, started exactly as the README's Quickstart starts it.

The server is `streamlit run app.py` from the project folder (so `.streamlit/config.toml` applies), on a throw-away
WBC_HOME with the demo dataset and sign-in off, and one headless Chromium tab on the Data page. After the page has
loaded, nobody touches it for --seconds; the server's CPU time (user + system, its whole process tree) over that
window divided by the window is its share of one core. The reference, in the same run, is the same server with
Streamlit's default file watcher (`--server.fileWatcherType auto`), i.e. without our config's fix.
Goal: < 5% of a core.

Run: .venv/bin/python bench/idle_server.py [--seconds 60]
Prints and writes bench/results/idle_server.json and .md. Needs /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
GOAL_PERCENT = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (from /proc)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        pending.extend(int(c) for c in children)
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_home(home: Path) -> None:
    env = {**os.environ, "WBC_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "wbc_core", "demo", "--per-class", "10", "--size", "32"], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=300)


def measure(home: Path, seconds: float, extra_args: list[str]) -> dict:
    """Start the server, load one tab, stay idle for `seconds`; the server's CPU share over the idle window."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = {**os.environ, "WBC_HOME": str(home), "WBC_AUTH": "off"}
    # The README's command plus only what a headless benchmark needs (no browser to open, a free port).
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", *extra_args]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115 - outlives this block
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server did not start:\n{Path(log.name).read_text()[-2000:]}")
            time.sleep(0.25)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            page.get_by_role("heading", name="Data", level=1).wait_for(timeout=60_000)
            time.sleep(3)  # let the first run's follow-up work settle before the window opens
            cpu0, wall0 = _tree_cpu_seconds(proc.pid), time.monotonic()
            while time.monotonic() - wall0 < seconds:
                left = seconds - (time.monotonic() - wall0)
                print(f"  idle {seconds - left:4.0f}/{seconds:.0f} s (ETA {left:.0f} s)", end="\r", flush=True)
                time.sleep(min(5.0, max(left, 0.0)))
            cpu1, wall1 = _tree_cpu_seconds(proc.pid), time.monotonic()
            browser.close()
        print()
        text = Path(log.name).read_text(errors="replace")
        return {"cpu_seconds": round(cpu1 - cpu0, 3), "wall_seconds": round(wall1 - wall0, 1),
                "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 2),
                "inotify_overflow_lines": text.count("Inotify queue overflowed"), "args": extra_args}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        Path(log.name).unlink(missing_ok=True)


def markdown(result: dict) -> str:
    ours, ref = result["ours"], result["reference"]
    return "\n".join([
        "# Idle server CPU (one open tab, nobody touching it)", "",
        f"Machine: {result['machine']}; load average at start {result['load_at_start']}; window {result['seconds']} s.",
        "", "| server | CPU % of one core | CPU s | 'Inotify queue overflowed' lines |", "|---|---:|---:|---:|",
        f"| as the README starts it (.streamlit/config.toml) | {ours['cpu_percent_of_one_core']} | "
        f"{ours['cpu_seconds']} | {ours['inotify_overflow_lines']} |",
        f"| reference: Streamlit's default file watcher | {ref['cpu_percent_of_one_core']} | {ref['cpu_seconds']} | "
        f"{ref['inotify_overflow_lines']} |", "",
        f"Goal < {GOAL_PERCENT}% of a core: {'met' if result['goal_met'] else 'MISSED'}. "
        f"Reference / ours: {result['ratio']}x.", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wbc_idle_") as tmp:
        home = Path(tmp) / "home"
        _prepare_home(home)
        load = os.getloadavg()[0]
        print(f"server as the README starts it, {args.seconds:.0f} s idle (ETA {2 * args.seconds + 40:.0f} s in all)")
        ours = measure(home, args.seconds, [])
        print(f"  {ours['cpu_percent_of_one_core']}% of one core")
        print("reference: the default file watcher")
        reference = measure(home, args.seconds, ["--server.fileWatcherType", "auto"])
        print(f"  {reference['cpu_percent_of_one_core']}% of one core")
    ratio = reference["cpu_percent_of_one_core"] / max(ours["cpu_percent_of_one_core"], 0.01)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_at_start": round(load, 2), "seconds": args.seconds, "ours": ours, "reference": reference,
              "ratio": round(ratio, 1), "goal_percent": GOAL_PERCENT,
              "goal_met": ours["cpu_percent_of_one_core"] < GOAL_PERCENT}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "idle_server.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "idle_server.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
