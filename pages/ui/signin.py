"""Sign-in and roles for the pages.

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

import secrets

import streamlit as st

from pages.ui.app_context import ensure_ready
from pages.ui.widgets import plain
from wbc_core import auth
from wbc_core.auth import User
from wbc_core.vocabulary import ROLE_ORDER

USER_KEY = "user"  # the signed-in wbc_core.auth.User
AUTH_ENV = "WBC_AUTH"  # "off": no sign-in, everyone is the local admin WBC_USER
_NOTICE_KEY = "_auth_notice"  # why someone was signed out, shown on the sign-in form


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
    return auth.get_user(name) or auth.ensure_local_admin(name)


def sign_out(notice: str | None = None) -> None:
    st.session_state.pop(USER_KEY, None)
    if notice:
        st.session_state[_NOTICE_KEY] = notice


def signed_in_user() -> User | None:
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
        sign_out(f"The account {user.username!r} is disabled or gone; ask an admin.")
        return None
    st.session_state[USER_KEY] = fresh
    return fresh


def current_user() -> User | None:
    """The signed-in user (fresh from the database) or None; draws nothing."""
    return signed_in_user()


def require_user() -> User:
    """The signed-in user; otherwise draw the sign-in form and stop the page."""
    user = signed_in_user()
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

    Use it around action widgets: `if signin.require_permission("train"): <the form>`. The domain call still
    gets `user=` where it takes one, so a stale page cannot act either.
    """
    if can(permission):
        return True
    user = st.session_state.get(USER_KEY)
    who = f"{user.role} '{plain(user.username)}'" if user is not None else "Nobody signed in"
    st.info(f"{who} cannot {what or permission.replace('_', ' ')}: that needs the "
            f"**{needed_role(permission)}** role. Ask an admin.", icon="🔒")
    return False


def _client_key() -> str:
    """Who is trying, for the per-client back-off: the browser's address where Streamlit knows it, else the
    browser session (a new tab starts a new count, but the per-account lock still holds)."""
    address = getattr(st.context, "ip_address", None)
    if address:
        return f"ip:{address}"
    return "session:" + st.session_state.setdefault("_client_id", secrets.token_hex(8))


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
            user = auth.authenticate(username, password, client=_client_key())
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
