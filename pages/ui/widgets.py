"""Small renderers the pages share."""

from __future__ import annotations

import streamlit as st


def show_error(exc: Exception, what_next: str = "") -> None:
    """An error in plain words, with what to do next."""
    st.error(f"{exc}" + (f"\n\n{what_next}" if what_next else ""), icon="🚫")
