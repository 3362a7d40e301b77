"""Small renderers the pages share."""

from __future__ import annotations

import re

import streamlit as st

# Every ASCII punctuation character Markdown (or Streamlit's extensions: :emoji:, :color[...], $math$) may act on.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&\"'=^])")


def plain(text: object) -> str:
    """Text as itself inside Markdown: a dataset, class or user name is shown, never interpreted (no links,
    bold, emoji or colours from a name such as `[x](javascript:...)`)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def show_error(exc: Exception, what_next: str = "") -> None:
    """An error in plain words, with what to do next (the message is shown as text: it may quote names)."""
    st.error(plain(exc) + (f"\n\n{what_next}" if what_next else ""), icon="🚫")
