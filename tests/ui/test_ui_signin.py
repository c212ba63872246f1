"""Signing in and out in a real browser, and what the server answers around it."""
from __future__ import annotations

from .conftest import Ui


async def test_sign_in_shows_the_queue_and_sign_out_ends_the_session(ui: Ui) -> None:
    await ui.user("agent@example.test", "agent")
    page = await ui.page()
    await page.goto("/ui/tickets")
    assert "/ui/signin" in page.url                     # not signed in: sent to the sign-in page
    resp = await page.goto("/ui/signin")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    await ui.signin(page, "agent@example.test")
    assert page.url.endswith("/ui/tickets")
    await page.get_by_role("heading", name="Tickets").wait_for()
    cookie = next(c for c in await page.context.cookies() if c["name"] == "tmx_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/ui/"
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_text("You are signed out.").wait_for()
    await page.goto("/ui/tickets")
    assert "/ui/signin" in page.url
    assert not ui.guard.blocked and not ui.guard.csp_reports() and not ui.guard.errors, ui.guard.__dict__


async def test_wrong_password_is_refused(ui: Ui) -> None:
    await ui.user("agent@example.test", "agent")
    page = await ui.page()
    await ui.signin(page, "agent@example.test", "not the password")
    await page.get_by_text("Wrong email address or password.").wait_for()
    assert "/ui/signin" in page.url
