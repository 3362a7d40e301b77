"""The server process's context, built once (st.cache_resource) and shared by every session."""

from __future__ import annotations

import streamlit as st

from wbc_core import context, jobs


@st.cache_resource
def _build_once() -> bool:
    context.activate(context.build("app"))
    jobs.prestart()  # the warm starter imports torch now, so the first job a user starts does not wait on it
    return True


def ensure_ready() -> context.Context:
    """This server process's context (home, database with migrations applied, caches), built on first use.

    A context that is already current (tests build their own) is used as it is.
    """
    if not context.is_current():
        _build_once()
    return context.current()
