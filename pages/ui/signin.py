"""Sign-in and roles for the pages.

Sign-in, in this order:
- `WBC_AUTH=off` (local single-user use, some tests): nobody signs in; everyone acts as the admin account named
  by `WBC_USER` (default "local"), created on first use without a password.
- an `[auth]` section in Streamlit's secrets: OpenID Connect through `st.login`; the first OIDC user of an
  installation becomes admin, later ones viewers (wbc_core.auth.ensure_oidc_user).
- otherwise local accounts (wbc_core.auth.authenticate); with no user at all, a first-run form creates the admin.
The signed-in wbc_core.auth.User lives in st.session_state["user"] and is re-read on every run, so a role
change or a disabled account applies at once. Tests may set that key directly.

A local sign-in is kept across reloads for WBC_SESSION_HOURS (default 12): the sign-in stores a signed, expiring
token (wbc_core.auth.issue_session) in the cookie `wbc_session`, written by a one-line script on the next run
(Streamlit can read cookies, st.context.cookies, but has no call that sets one). A new browser session that
brings a valid token is signed in again (auth.session_user, re-checked on every run, so signing out in one tab
ends the others at their next run too); sign-out ends the token on the server and removes the cookie.
"""

from __future__ import annotations

import json
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
COOKIE_NAME = "wbc_session"  # the browser's kept sign-in (a token from auth.issue_session)
_TOKEN_KEY = "_session_token"  # this browser session's token, ended on sign-out
_COOKIE_WRITE_KEY = "_session_cookie_write"  # a token to write into the cookie on the next run; "" removes it
_COOKIE_TRIED_KEY = "_session_cookie_tried"  # the cookie value this session already tried (tried once only)
_COOKIE_BOX = "wbc_session_cookie"  # the hidden container of the cookie script


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
    """Sign this browser out: its kept sign-in ends on the server and its cookie is removed on the next run."""
    st.session_state.pop(USER_KEY, None)
    token = st.session_state.pop(_TOKEN_KEY, None)
    if token:
        auth.revoke_session(token)
    if token or _browser_token():
        st.session_state[_COOKIE_WRITE_KEY] = ""
    if notice:
        st.session_state[_NOTICE_KEY] = notice


def _browser_token() -> str | None:
    """The kept sign-in the browser sent when this session connected (None in AppTest, which has no cookies)."""
    try:
        value = st.context.cookies.get(COOKIE_NAME)
    except Exception:  # no browser context (a bare script run)
        return None
    return value if isinstance(value, str) and value else None


def _keep_signed_in(user: User) -> None:
    """After a password check: a token that keeps the sign-in across reloads, written to the cookie next run."""
    token = auth.issue_session(user)
    st.session_state[_TOKEN_KEY] = token
    st.session_state[_COOKIE_WRITE_KEY] = token


def _write_cookie() -> None:
    """Write (or remove) the sign-in cookie when a sign-in, a sign-out or a stale cookie asked for it.

    A script in the page itself (st.html, not an iframe): the cookie belongs to the app's own origin, lives for
    the token's lifetime, is sent only by same-site requests, and only over HTTPS when the app is served so."""
    token = st.session_state.pop(_COOKIE_WRITE_KEY, None)
    if token is None:
        return
    max_age = int(ensure_ready().settings.session_hours * 3600) if token else 0
    script = (f"<style>.st-key-{_COOKIE_BOX}{{display:none}}</style>"
              "<script>(function(){var c=" + json.dumps(f"{COOKIE_NAME}={token}") +
              f"+'; Path=/; Max-Age={max_age}; SameSite=Strict'" +
              "+(window.location.protocol==='https:'?'; Secure':'');document.cookie=c;})();</script>")
    with st.container(key=_COOKIE_BOX):  # hidden: it only carries the script
        st.html(script, unsafe_allow_javascript=True)


def _restore_from_cookie() -> User | None:
    """The user a valid cookie keeps signed in (a reload, a new tab); each cookie value is tried once."""
    token = _browser_token()
    if not token or st.session_state.get(_COOKIE_TRIED_KEY) == token:
        return None
    st.session_state[_COOKIE_TRIED_KEY] = token
    user = auth.session_user(token)
    if user is None:
        st.session_state[_COOKIE_WRITE_KEY] = ""  # expired or signed out elsewhere: remove it
        return None
    st.session_state[_TOKEN_KEY] = token
    return user


def signed_in_user() -> User | None:
    """The signed-in user, re-read from the database; None when nobody is signed in (draws nothing but the
    invisible script that writes or removes the sign-in cookie after a sign-in or sign-out)."""
    ensure_ready()
    try:
        return _signed_in_user()
    finally:
        _write_cookie()  # once per call, after every decision above (a sign-in, a sign-out, a stale cookie)


def _signed_in_user() -> User | None:
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
    if user is None and not oidc:
        user = _restore_from_cookie()  # checked just now: fresh from the database
        if user is not None:
            st.session_state[USER_KEY] = user
        return user
    if user is None:
        return None
    token = None if oidc else st.session_state.get(_TOKEN_KEY)
    if token:
        fresh = auth.session_user(token)
        if fresh is None or fresh.id != user.id:
            sign_out("Your sign-in has ended (signed out elsewhere, expired, a new password, or the account was "
                     "disabled): sign in again, or ask an admin.")
            return None
        st.session_state[USER_KEY] = fresh
        return fresh
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
            _keep_signed_in(user)
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
    _keep_signed_in(user)
    st.rerun()
