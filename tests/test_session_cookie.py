"""Kept sign-ins: signed, expiring session tokens (wbc_core.auth) and the sign-in cookie of the pages.

The browser keeps a token from auth.issue_session in a cookie; auth.session_user accepts it until it expires, is
signed out, its account is disabled or gets a new password, and refuses anything tampered with or signed under
another secret. The browser itself (a reload keeps the sign-in, a sign-out ends it) is tests/e2e/test_signin_journey.py.
"""

from __future__ import annotations

import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from support import account

from wbc_core import auth
from wbc_core.context import Settings, current

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse"
TIMEOUT = 60

pytestmark = pytest.mark.databases("sqlite", "postgresql")


@pytest.fixture()
def clock(monkeypatch) -> list[datetime]:
    """The sign-in clock, moved by hand: clock[0] is now (no sleeping, no timing in the assertions)."""
    now = [datetime(2026, 1, 5, 9, 0, 0)]
    monkeypatch.setattr(auth, "_now", lambda: now[0])
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    return now


@pytest.fixture()
def ann(wbc_home, clock):  # noqa: ANN201 - a wbc_core.auth.User
    auth.create_user("ann", PASSWORD, "reviewer", user=account())
    return auth.authenticate("ann", PASSWORD)


def test_a_token_keeps_its_user_signed_in_until_it_expires(ann, clock):
    token = auth.issue_session(ann, hours=2)
    assert auth.session_user(token) == ann
    clock[0] += timedelta(hours=1, minutes=59)
    assert auth.session_user(token) == ann
    clock[0] += timedelta(minutes=1)
    assert auth.session_user(token) is None


def test_the_default_lifetime_is_the_setting(ann, clock):
    assert current().settings.session_hours == 12
    token = auth.issue_session(ann)
    clock[0] += timedelta(hours=11, minutes=59)
    assert auth.session_user(token) == ann
    clock[0] += timedelta(minutes=2)
    assert auth.session_user(token) is None


def test_the_user_comes_back_fresh_from_the_database(ann):
    token = auth.issue_session(ann)
    auth.set_role("ann", "viewer", user=account())
    assert auth.session_user(token).role == "viewer"


def _with(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


def test_tampered_tokens_are_refused(ann):
    token = auth.issue_session(ann, hours=1)
    other = auth.issue_session(ann, hours=1)
    version, session_id, expires, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for bad in [_with(token, 1, str(int(session_id) + 1)),  # another session's id under this signature
                _with(token, 1, other.split(".")[1]),
                _with(token, 2, str(int(expires) + 3600)),  # a longer life
                _with(token, 3, flipped), _with(token, 0, "v2"), token + ".x", token[:-1], "", None, "garbage",
                "v1.1.2", "v1.-1.5.abc", "v1." + "9" * 40 + ".1.abc"]:
        assert auth.session_user(bad) is None, bad
    assert auth.session_user(token) == ann  # the real one still works


def test_a_token_signed_under_another_secret_is_refused(ann):
    token = auth.issue_session(ann, hours=1)
    _, session_id, expires, _ = token.split(".")
    _, stored = __import__("db.users", fromlist=["get_credentials"]).get_credentials("ann")
    forged = auth._signature(b"\x01" * 32, int(session_id), ann.id, int(expires), stored)
    assert auth.session_user(_with(token, 3, forged)) is None
    right = auth._signature(auth._session_secret(), int(session_id), ann.id, int(expires), stored)
    assert auth.session_user(_with(token, 3, right)) == ann  # the same recipe under the real secret passes


def test_signing_out_ends_that_browser_only_and_everywhere_ends_all(ann):
    here, there = auth.issue_session(ann), auth.issue_session(ann)
    assert auth.revoke_session(here) is True
    assert auth.session_user(here) is None
    assert auth.session_user(there) == ann
    assert auth.revoke_session(here) is False  # already ended
    assert auth.revoke_sessions("ann", user=ann) == 1
    assert auth.session_user(there) is None


def test_a_forged_token_cannot_sign_someone_else_out(ann):
    token = auth.issue_session(ann)
    assert auth.revoke_session(_with(token, 3, "A" * 43)) is False
    assert auth.session_user(token) == ann


def test_only_admins_sign_other_people_out_everywhere(ann):
    auth.create_user("bob", PASSWORD, "reviewer", user=account())
    bob = auth.authenticate("bob", PASSWORD)
    token = auth.issue_session(bob)
    with pytest.raises(auth.PermissionDenied):
        auth.revoke_sessions("bob", user=ann)
    assert auth.session_user(token) == bob
    assert auth.revoke_sessions("bob", user=account()) == 1
    assert auth.session_user(token) is None


def test_disabling_the_account_ends_its_tokens_for_good(ann):
    token = auth.issue_session(ann)
    auth.disable_user("ann", user=account())
    assert auth.session_user(token) is None
    auth.disable_user("ann", disabled=False, user=account())
    assert auth.session_user(token) is None  # re-enabling does not bring old sign-ins back
    assert auth.session_user(auth.issue_session(auth.authenticate("ann", PASSWORD))) is not None
    auth.disable_user("ann", user=account())
    with pytest.raises(auth.PermissionDenied, match="disabled"):
        auth.issue_session(ann)


def test_a_new_password_ends_the_old_tokens(ann):
    token = auth.issue_session(ann)
    auth.set_password("ann", "another horse", user=ann)
    assert auth.session_user(token) is None
    assert auth.session_user(auth.issue_session(auth.authenticate("ann", "another horse"))) is not None


def test_the_secret_is_made_once_readable_by_the_owner_only(wbc_home, tmp_path):
    path = tmp_path / "secret_home" / auth.SESSION_SECRET_FILE
    first = auth.load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.load_or_create_secret(path) == first
    assert auth.load_or_create_secret(tmp_path / "elsewhere" / auth.SESSION_SECRET_FILE) != first
    path.chmod(0o644)
    assert auth.load_or_create_secret(path) == first and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("abcd")
    with pytest.raises(ValueError, match="damaged"):
        auth.load_or_create_secret(path)
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary file left behind
    # The context's home holds the app's own secret.
    auth._session_secret()
    assert stat.S_IMODE((current().home / auth.SESSION_SECRET_FILE).stat().st_mode) == 0o600


@pytest.mark.databases("sqlite")
@pytest.mark.parametrize(("text", "hours"), [(None, 12.0), ("", 12.0), ("0.5", 0.5), (" 48 ", 48.0)])
def test_session_hours_setting(tmp_path, text, hours):
    env = {} if text is None else {"WBC_SESSION_HOURS": text}
    assert Settings.from_environ(env, home=tmp_path).session_hours == hours


@pytest.mark.databases("sqlite")
@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "100000"])
def test_session_hours_out_of_range_are_refused_plainly(tmp_path, text):
    with pytest.raises(ValueError, match="WBC_SESSION_HOURS must be a number above 0 and at most 2,160"):
        Settings.from_environ({"WBC_SESSION_HOURS": text}, home=tmp_path)


# -- the pages: the sign-in form issues a token and writes it; a session that brings it is signed in --------------

def _app(monkeypatch, cookie: str | None = None) -> AppTest:
    from pages.ui import signin

    monkeypatch.setattr(signin, "_browser_token", lambda: cookie)  # AppTest has no browser cookies
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _cookie_scripts(at: AppTest) -> list[str]:
    """The bodies of the st.html elements of this run that write the cookie."""
    return [e.proto.body for e in at.get("html") if "document.cookie" in e.proto.body]


@pytest.fixture()
def sign_in_on(monkeypatch):
    monkeypatch.setenv("WBC_AUTH", "on")
    monkeypatch.delenv("WBC_USER", raising=False)


@pytest.mark.databases("sqlite")
def test_the_form_keeps_the_sign_in_and_a_reload_with_the_cookie_is_signed_in(sign_in_on, ann, monkeypatch):
    from pages.ui import signin

    at = _app(monkeypatch)
    at.text_input(key="login_username").set_value("ann")
    at.text_input(key="login_password").set_value(PASSWORD)
    at.button(key="FormSubmitter:login-Sign in").click().run()
    assert not at.exception, at.exception
    token = at.session_state[signin._TOKEN_KEY]
    assert auth.session_user(token) == ann
    scripts = _cookie_scripts(at)
    assert len(scripts) == 1 and f"wbc_session={token}" in scripts[0] and "Max-Age=43200" in scripts[0]
    assert "SameSite=Strict" in scripts[0]

    reload = _app(monkeypatch, cookie=token)  # a new browser session that brings the cookie
    assert "Signed in as **ann** · reviewer" in "\n".join(c.value for c in reload.sidebar.caption)
    assert "login_username" not in [t.key for t in reload.text_input]  # no sign-in form
    reload.sidebar.button(key="logout").click().run()
    assert auth.session_user(token) is None  # ended on the server
    removal = _cookie_scripts(reload)
    assert len(removal) == 1 and "wbc_session=" in removal[0] and "Max-Age=0" in removal[0]
    assert [t.key for t in reload.text_input] == ["login_username", "login_password"]

    again = _app(monkeypatch, cookie=token)  # the old cookie, had the browser kept it: the form, and it is removed
    assert [t.key for t in again.text_input] == ["login_username", "login_password"]
    assert "Max-Age=0" in _cookie_scripts(again)[0]


@pytest.mark.databases("sqlite")
def test_signing_out_elsewhere_ends_this_session_at_its_next_run(sign_in_on, ann, monkeypatch):
    token = auth.issue_session(ann)
    at = _app(monkeypatch, cookie=token)
    assert "Signed in as **ann** · reviewer" in "\n".join(c.value for c in at.sidebar.caption)
    auth.revoke_session(token)  # another tab signed out
    at.run()
    assert [t.key for t in at.text_input] == ["login_username", "login_password"]
    assert "Your sign-in has ended" in "\n".join(w.value for w in at.warning)


@pytest.fixture()
def sign_in_off(monkeypatch):
    monkeypatch.setenv("WBC_AUTH", "off")


@pytest.mark.databases("sqlite")
def test_sign_in_off_writes_no_cookie(sign_in_off, wbc_home, monkeypatch):
    at = _app(monkeypatch, cookie=None)
    assert "Sign-in is off" in "\n".join(c.value for c in at.sidebar.caption)
    assert not _cookie_scripts(at)
