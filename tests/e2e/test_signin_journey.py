"""A local sign-in kept across reloads, in a real browser against `streamlit run app.py` with sign-in on: sign in,
reload, still signed in (the cookie carries a signed token); sign out, reload, the sign-in form again (the cookie
is gone and its token ended on the server)."""

from __future__ import annotations

import time

from playwright.sync_api import Page, expect
from support import account

from wbc_core import auth

PASSWORD = "s3cret-password"


def _main(page: Page):  # noqa: ANN201
    return page.get_by_test_id("stMain")


def _session_cookie(page: Page) -> dict | None:
    return next((c for c in page.context.cookies() if c["name"] == "wbc_session"), None)


def test_a_sign_in_survives_a_reload_and_a_sign_out_does_not(e2e_home, start_streamlit, browser_page: Page):
    auth.create_user("rita", PASSWORD, "reviewer", user=account())
    server = start_streamlit(WBC_SESSION_HOURS="2")
    page = browser_page
    page.goto(server.url)
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    _main(page).get_by_role("textbox", name="User name").fill("rita")
    _main(page).get_by_role("textbox", name="Password").fill(PASSWORD)
    _main(page).get_by_role("button", name="Sign in").click()
    signed_in = page.get_by_test_id("stSidebar").get_by_text("Signed in as rita")
    expect(signed_in).to_be_visible()
    page.wait_for_function("document.cookie.includes('wbc_session=v1.')")
    cookie = _session_cookie(page)
    assert cookie is not None and cookie["sameSite"] == "Strict"
    assert 1.9 * 3600 < cookie["expires"] - time.time() <= 2 * 3600 + 60  # WBC_SESSION_HOURS=2
    assert auth.session_user(cookie["value"]).username == "rita"

    page.reload()
    expect(signed_in).to_be_visible()
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_have_count(0)

    page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    page.wait_for_function("!document.cookie.includes('wbc_session=')")
    assert auth.session_user(cookie["value"]) is None  # ended on the server, not only forgotten by the browser

    page.reload()
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    expect(_main(page).get_by_role("textbox", name="User name")).to_be_visible()
    expect(page.get_by_text("Signed in as rita")).to_have_count(0)

    # A stolen copy of the old cookie brought back by hand opens nothing either.
    page.context.add_cookies([{"name": "wbc_session", "value": cookie["value"], "url": server.url}])
    page.reload()
    expect(_main(page).get_by_role("textbox", name="User name")).to_be_visible()
    expect(page.get_by_text("Signed in as rita")).to_have_count(0)
