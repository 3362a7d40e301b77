"""The app frame: page config, sign-in gate, navigation over the pages, the shared sidebar and the active dataset."""

from __future__ import annotations

import streamlit as st

from pages.ui.app_context import ensure_ready
from pages.ui.signin import (
    AUTH_ENV,
    USER_KEY,
    auth_off,
    login_page,
    oidc_configured,
    require_user,
    sign_out,
    signed_in_user,
)
from pages.ui.widgets import plain
from wbc_core import auth, catalog, jobs
from wbc_core.auth import User
from wbc_core.catalog import DatasetInfo

DEMO_BANNER = "Demo data: procedurally drawn cell-like images, **not real cells**. Import real cells on the Data page."


def _sections(admin: bool) -> dict[str, list]:
    sections = {
        "Data": [st.Page("pages/data.py", title="Data", icon="🗂️", default=True)],
        "Synthetic cells": [st.Page("pages/generate.py", title="Generate", icon="🧪")],
        "Review": [
            st.Page("pages/review.py", title="Review", icon="✅"),
            st.Page("pages/agreement.py", title="Agreement", icon="🤝"),
        ],
        "Classifier": [
            st.Page("pages/train.py", title="Train", icon="🏋️"),
            st.Page("pages/dashboard.py", title="Dashboard", icon="📈"),
        ],
    }
    if admin:
        sections["Admin"] = [st.Page("pages/admin.py", title="Admin", icon="🛠️")]
    return sections


def run_frame() -> None:
    """The app frame: page config, schema check, sign-in, navigation over the pages, shared sidebar; runs the page."""
    st.set_page_config(page_title="wbc-curate", page_icon="🩸", layout="wide")
    ensure_ready()
    jobs.reconcile_if_due()  # the one periodic place that marks runs of dead workers failed (views only read)
    user = signed_in_user()
    if user is None:
        # Every page is known (hidden), so a deep link such as /review survives sign-in, but none runs: the
        # sign-in form takes their place, and after it the same URL opens its page.
        st.navigation(_sections(admin=True), position="hidden")
        login_page()
        return
    navigation = st.navigation(_sections(admin=auth.can(user, "manage_users")))
    sidebar(user)
    navigation.run()


def _legacy_pages_mode() -> bool:
    """Whether Streamlit is treating this app as an old-style `pages/` folder app right now.

    Our page scripts live in a folder named `pages/` next to app.py. Until st.navigation has run once in
    the server process, Streamlit (1.67) runs the URL's file from that folder *directly*, without app.py:
    a first visit to /review after a server start showed a raw file list (app, common, dashboard, ...) and
    no sidebar. AppTest resets this flag before every run, so its second run of app.py hits the same path.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # internal module moved: assume the modern behaviour
        return False
    return bool(getattr(PagesManager, "uses_pages_directory", False))


def ensure_frame() -> User:
    """First call in every page: if Streamlit ran this page without app.py, run the frame (which runs the
    page inside it, with the sidebar) and stop this outer run. Then make sure someone is signed in (else draw
    the sign-in form and stop) and return that user."""
    if _legacy_pages_mode():
        run_frame()
        st.stop()
    return require_user()


DATASET_KEY = "dataset_name"  # the sidebar's dataset selectbox
_PENDING_DATASET_KEY = "_select_dataset"  # a dataset to select on the next run (see select_dataset)


def sidebar(user: User | None = None) -> None:
    """Shared sidebar: who is signed in (with sign-out) and the active dataset."""
    datasets = catalog.list_datasets()
    with st.sidebar:
        user = user or st.session_state.get(USER_KEY)
        if user is not None:
            if auth_off():
                st.caption(f"Sign-in is off ({AUTH_ENV}=off): acting as **{plain(user.label)}** ({user.role}).")
            else:
                st.caption(f"Signed in as **{plain(user.label)}** · {user.role}")
                if st.button("Sign out", key="logout", icon=":material/logout:"):
                    sign_out()
                    if oidc_configured():
                        st.logout()
                    st.rerun()
        if datasets:
            names = [d.name for d in datasets]
            pending = st.session_state.pop(_PENDING_DATASET_KEY, None)
            # Session state of a widget key may only be written before the widget exists in this run.
            if pending in names:
                st.session_state[DATASET_KEY] = pending
            elif st.session_state.get(DATASET_KEY) not in names:
                st.session_state[DATASET_KEY] = names[0]
            st.selectbox("Dataset", names, key=DATASET_KEY)
        else:
            st.caption("No dataset yet: import one or create the demo on the Data page.")


def select_dataset(name: str) -> None:
    """Make a dataset the active one from the next run on (pages call st.rerun() after this).

    Pages must not assign the sidebar's widget key directly: the sidebar has already drawn its selectbox
    by the time a page runs, and Streamlit raises StreamlitWidgetAlreadyInstantiatedError.
    """
    st.session_state[_PENDING_DATASET_KEY] = name


def dataset_names() -> list[str]:
    """Names of all datasets, newest first."""
    return [d.name for d in catalog.list_datasets()]


def current_dataset() -> DatasetInfo | None:
    """The dataset chosen in the sidebar, else the newest one; None when there is none."""
    ensure_ready()
    datasets = catalog.list_datasets()
    if not datasets:
        return None
    chosen = st.session_state.get(_PENDING_DATASET_KEY) or st.session_state.get(DATASET_KEY)
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
