"""Summaries shared by every session and refreshed in the background (e.g. the quota gauge at 100k candidates)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from pages.ui.app_context import ensure_ready


@st.cache_resource
def _recent_store() -> dict[str, Any]:
    return {"lock": threading.Lock(), "entries": {}}


def recent(name: str, compute: Callable[[], Any], max_age_s: float = 5.0) -> Any:
    """compute()'s value, shared by every session and at most about max_age_s old; never waits for a refresh.

    For summaries that cost too much to redo on every click (class_summary takes ~0.4 s at 100k candidates and
    20k decisions). The first call computes in line; later calls return the stored value at once and, when it
    is older than max_age_s, recompute it in a background thread (one at a time per name). Keyed by database
    as well, so tests with their own WBC_HOME never see each other's values.
    """
    store = _recent_store()
    key = (name, id(ensure_ready()))  # per context: tests with their own home never see each other's values
    with store["lock"]:
        entry = store["entries"].get(key)
        if entry is not None and not entry["busy"] and time.monotonic() - entry["at"] > max_age_s:
            entry["busy"] = True
            threading.Thread(target=_refresh, args=(store, key, compute), daemon=True).start()
    if entry is not None:
        return entry["value"]
    value = compute()
    with store["lock"]:
        store["entries"][key] = {"value": value, "at": time.monotonic(), "busy": False}
    return value


def _refresh(store: dict[str, Any], key: tuple, compute: Callable[[], Any]) -> None:
    try:
        value = compute()
    except Exception:  # keep the last good value; the next access tries again
        with store["lock"]:
            store["entries"][key]["busy"] = False
        return
    with store["lock"]:
        store["entries"][key] = {"value": value, "at": time.monotonic(), "busy": False}


def forget_recent() -> None:
    """Drop every value kept by recent() (after a change that must show at once, e.g. new quotas)."""
    store = _recent_store()
    with store["lock"]:
        store["entries"].clear()
