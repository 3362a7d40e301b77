"""Pieces every page shares: schema check, sign-in and roles, the sidebar (dataset, who is signed in), and
small renderers.

Sign-in, in this order:
- `WBC_AUTH=off` (local single-user use, some tests): nobody signs in; everyone acts as the admin account named
  by `WBC_USER` (default "local"), created on first use without a password.
- an `[auth]` section in Streamlit's secrets: OpenID Connect through `st.login`; the first OIDC user of an
  installation becomes admin, later ones viewers (wbc_core.auth.ensure_oidc_user).
- otherwise local accounts (wbc_core.auth.authenticate); with no user at all, a first-run form creates the admin.
The signed-in wbc_core.auth.User lives in st.session_state["user"] and is re-read on every run, so a role
change or a disabled account applies at once. Tests may set that key directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from db import users as users_db
from db.datasets import DatasetInfo, list_datasets
from wbc_core import auth, context, jobs
from wbc_core.auth import User
from wbc_core.vocabulary import ROLE_ORDER

DEMO_BANNER = "Demo data: procedurally drawn cell-like images, **not real cells**. Import real cells on the Data page."
USER_KEY = "user"  # the signed-in wbc_core.auth.User
AUTH_ENV = "WBC_AUTH"  # "off": no sign-in, everyone is the local admin WBC_USER
USER_ENV = "WBC_USER"
_NOTICE_KEY = "_auth_notice"  # why someone was signed out, shown on the sign-in form


def ensure_ready() -> context.Context:
    """This server process's context (home, database with migrations applied, caches), built on first use."""
    if not context.is_current():
        context.current("app")
    return context.current()


# -- shared, recently computed values --------------------------------------------------------------------------


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


# -- sign-in ----------------------------------------------------------------------------------------------------


def auth_off() -> bool:
    """Whether sign-in is switched off (WBC_AUTH=off): local single-user use."""
    return ensure_ready().settings.auth_off


def oidc_configured() -> bool:
    """Whether Streamlit's secrets have an [auth] section (then sign-in goes through st.login)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all, or one that does not parse: no OIDC
        return False


def _oidc_providers() -> list[str | None]:
    """st.login arguments: None for a single provider configured directly under [auth], else the named ones."""
    try:
        section = st.secrets["auth"]
        if "client_id" in section:
            return [None]
        return [name for name, value in section.items() if hasattr(value, "keys") and "client_id" in value] or [None]
    except Exception:
        return [None]


def _local_user() -> User:
    """The implicit admin of WBC_AUTH=off, created (without a password) on first use."""
    name = auth.validate_username(ensure_ready().settings.local_user)
    # Read first: the insert takes the database's write lock, which no page view should need.
    return auth.get_user(name) or users_db.insert_first_admin_or(name, "admin", None, "local")


def _sign_out(notice: str | None = None) -> None:
    st.session_state.pop(USER_KEY, None)
    if notice:
        st.session_state[_NOTICE_KEY] = notice


def _signed_in_user() -> User | None:
    """The signed-in user, re-read from the database; None when nobody is signed in (no UI drawn)."""
    ensure_ready()
    if auth_off():
        user = _local_user()
        st.session_state[USER_KEY] = user
        return user
    oidc = oidc_configured()
    if oidc and not st.user.get("is_logged_in", False):
        st.session_state.pop(USER_KEY, None)
        return None
    user = st.session_state.get(USER_KEY)
    if oidc:
        email = str(st.user.get("email") or st.user.get("preferred_username") or st.user.get("sub") or "")
        if user is not None and user.username != email.strip().lower():
            user = None  # the identity provider now says someone else is signed in
    if user is None and oidc:
        try:
            user = auth.ensure_oidc_user(email, st.user.get("name"))
        except (auth.PermissionDenied, ValueError) as exc:
            st.session_state[_NOTICE_KEY] = str(exc)
            return None
    if user is None:
        return None
    fresh = auth.get_user(user.username)
    if fresh is None or fresh.disabled:
        _sign_out(f"The account {user.username!r} is disabled or gone; ask an admin.")
        return None
    st.session_state[USER_KEY] = fresh
    return fresh


def current_user() -> User | None:
    """The signed-in user (fresh from the database) or None; draws nothing."""
    return _signed_in_user()


def require_user() -> User:
    """The signed-in user; otherwise draw the sign-in form and stop the page."""
    user = _signed_in_user()
    if user is None:
        login_page()
        st.stop()
    return user


def can(permission: str) -> bool:
    """Whether the signed-in user may do this (for showing, hiding or disabling widgets)."""
    return auth.can(st.session_state.get(USER_KEY), permission)


def needed_role(permission: str) -> str:
    """The least privileged role that has a permission."""
    return next(r for r in ROLE_ORDER if r in auth.PERMISSIONS[permission])


def require_permission(permission: str, what: str | None = None) -> bool:
    """True if the signed-in user may do this; otherwise show a plain message (what they cannot do) and say False.

    Use it around action widgets: `if common.require_permission("train"): <the form>`. The domain call still
    gets `user=` where it takes one, so a stale page cannot act either.
    """
    if can(permission):
        return True
    user = st.session_state.get(USER_KEY)
    who = f"{user.role} '{user.username}'" if user is not None else "Nobody signed in"
    st.info(f"{who} cannot {what or permission.replace('_', ' ')}: that needs the "
            f"**{needed_role(permission)}** role. Ask an admin.", icon="🔒")
    return False


def login_page() -> None:
    """The sign-in screen: OIDC button, first-run admin form, or the local user/password form."""
    st.title("Sign in")
    notice = st.session_state.pop(_NOTICE_KEY, None)
    if notice:
        st.warning(notice)
    if oidc_configured():
        if st.user.get("is_logged_in", False):  # signed in at the provider, but refused here (e.g. disabled)
            if st.button("Sign out of the identity provider", key="oidc_logout"):
                st.logout()
            return
        for provider in _oidc_providers():
            label = f"Sign in with {provider}" if provider else "Sign in"
            if st.button(label, type="primary", key=f"oidc_{provider or 'default'}"):
                if provider:
                    st.login(provider)
                else:
                    st.login()
        st.caption("The first person to sign in becomes admin; later accounts start as viewers until an admin "
                   "gives them a role.")
        return
    if not auth.has_users():
        _first_admin_form()
        return
    with st.form("login"):
        username = st.text_input("User name", key="login_username")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            user = auth.authenticate(username, password)
        except auth.SignInLocked as exc:
            st.error(f"{str(exc).capitalize()}.", icon="🚫")
            return
        if user is None:
            st.error("Wrong user name or password (or the account is disabled).", icon="🚫")
        else:
            st.session_state[USER_KEY] = user
            st.rerun()


def _first_admin_form() -> None:
    st.info("No users yet: create the first account. It is the admin, who then adds reviewers and viewers.")
    with st.form("first_admin"):
        username = st.text_input("Admin user name", key="first_username")
        display = st.text_input("Display name (optional)", key="first_display")
        password = st.text_input(f"Password (at least {auth.MIN_PASSWORD_LENGTH} characters)", type="password",
                                 key="first_password")
        again = st.text_input("Password again", type="password", key="first_again")
        submitted = st.form_submit_button("Create admin and sign in", type="primary")
    if not submitted:
        return
    if password != again:
        st.error("The two passwords differ.", icon="🚫")
        return
    try:  # atomic: refused (AlreadySetUp) when someone else finished the first-run form meanwhile
        user = auth.create_first_admin(username, password, display or None)
    except ValueError as exc:
        st.error(str(exc), icon="🚫")
        return
    st.session_state[USER_KEY] = user
    st.rerun()


# -- frame -------------------------------------------------------------------------------------------------------


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
    user = _signed_in_user()
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
    datasets = list_datasets()
    with st.sidebar:
        user = user or st.session_state.get(USER_KEY)
        if user is not None:
            if auth_off():
                st.caption(f"Sign-in is off ({AUTH_ENV}=off): acting as **{user.label}** ({user.role}).")
            else:
                st.caption(f"Signed in as **{user.label}** · {user.role}")
                if st.button("Sign out", key="logout", icon=":material/logout:"):
                    _sign_out()
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
    return [d.name for d in list_datasets()]


def current_dataset() -> DatasetInfo | None:
    """The dataset chosen in the sidebar, else the newest one; None when there is none."""
    ensure_ready()
    datasets = list_datasets()
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


def show_error(exc: Exception, what_next: str = "") -> None:
    """An error in plain words, with what to do next."""
    st.error(f"{exc}" + (f"\n\n{what_next}" if what_next else ""), icon="🚫")
