"""Pieces every page shares: schema check, the sidebar (dataset and reviewer), and small renderers."""

from __future__ import annotations

import streamlit as st

from db.datasets import DatasetInfo, list_datasets
from db.migrate import ensure_schema

DEMO_BANNER = "Demo data: procedurally drawn cell-like images, **not real cells**. Import real cells on the Data page."


@st.cache_resource
def _schema_ready() -> bool:
    ensure_schema()
    return True


def ensure_ready() -> None:
    """Apply database migrations once per server process."""
    _schema_ready()


def sidebar() -> None:
    """Shared sidebar: the active dataset and the reviewer's name."""
    datasets = list_datasets()
    with st.sidebar:
        if datasets:
            names = [d.name for d in datasets]
            current = st.session_state.get("dataset_name")
            st.selectbox("Dataset", names, index=names.index(current) if current in names else 0, key="dataset_name")
        else:
            st.caption("No dataset yet: import one or create the demo on the Data page.")
        st.text_input("Reviewer", key="reviewer", placeholder="your name", help="recorded with every decision")


def current_dataset() -> DatasetInfo | None:
    """The dataset chosen in the sidebar, else the newest one; None when there is none."""
    ensure_ready()
    datasets = list_datasets()
    if not datasets:
        return None
    chosen = st.session_state.get("dataset_name")
    for d in datasets:
        if d.name == chosen:
            return d
    return datasets[0]


def require_dataset() -> DatasetInfo:
    """The active dataset, or stop the page with a hint when there is none."""
    info = current_dataset()
    if info is None:
        st.info("No dataset yet. Go to **Data** to import cells or create the demo dataset.")
        st.stop()
    if info.kind == "demo":
        st.warning(DEMO_BANNER, icon="⚠️")
    return info


def show_error(exc: Exception, what_next: str = "") -> None:
    """An error in plain words, with what to do next."""
    st.error(f"{exc}" + (f"\n\n{what_next}" if what_next else ""), icon="🚫")
