"""OAuth authorisation of a Graph source from the sources page, in a real browser, against the Graph
EMULATOR's identity endpoints (tests/sources/graph_emulator.py: a local stand-in for Microsoft's identity
platform and Graph, not Microsoft's service). The emulator serves plain HTTP on 127.0.0.1 here (no
``tls_dir``), so the browser needs no ``ignore_https_errors``, and the Guard keeps every request the
browser makes on 127.0.0.1.

Covered: "Authorise" (authorization code + PKCE): the browser goes to the emulator's authorize endpoint
and back to the callback, the refresh token file is written 0600 with the emulator's token, the source,
made active by the documented reload, pulls a mail of the emulator's mailbox into a ticket; a reused
state is refused. Refusals, each writing nothing and no audit row: the provider declines, a forged
state, a state from another browser session, a code the token endpoint refuses, no ``http.public_url``.
"Authorise with a code" (device grant) with ``approve_device``, polled by htmx, with a ``slow_down``.
"""
from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ..conftest import BASE_CONFIG, ROOT, free_port, merge, simple_message, toml_dump
from ..sources.graph_emulator import GraphEmulator
from .conftest import Ui

USER = "support@example.test"
ADMIN = "admin@example.test"


@pytest.fixture
def emu() -> Iterator[GraphEmulator]:
    with GraphEmulator() as e:
        yield e


def graph_source(emu: GraphEmulator, tmp_path: Path, **over: Any) -> dict[str, Any]:
    t = {"name": "m365", "kind": "graph", "status": "draft", "mailbox": USER, "tenant": emu.tenant, "user": USER,
         "endpoint": emu.base, "authority": emu.base, "oauth_client_id": emu.client_id,
         "oauth_refresh_token_file": str(tmp_path / "m365.refresh"), "poll_interval": "1s", "timeout": "10s"}
    t.update(over)
    return t


async def start(start_ui: Any, emu: GraphEmulator, tmp_path: Path, public: bool = True) -> tuple[Ui, dict[str, Any]]:
    port = free_port()
    http = {"listen": f"127.0.0.1:{port}", **({"public_url": f"http://127.0.0.1:{port}"} if public else {})}
    sections = {"http": http, "source": [graph_source(emu, tmp_path)]}
    ui = await start_ui(**sections)
    await ui.user(ADMIN, "admin")
    return ui, sections


async def signed_in(ui: Ui, path: str = "/ui/admin/sources") -> Any:
    page = await ui.page()
    await ui.signin(page, ADMIN, next_path=path)
    return page


async def audits(ui: Ui) -> list[tuple[str, str]]:
    rows = await ui.store.query("SELECT actor, action FROM audit_log WHERE action='source.authorize' ORDER BY id")
    return [tuple(r) for r in rows]


def clean(ui: Ui) -> None:
    g = ui.guard
    assert not g.blocked and not g.attempted and not g.csp_reports() and not g.errors and not g.dialogs, g.__dict__


async def stop_at_provider(page: Any) -> dict[str, str]:
    """Authorise in this browser session (its cookies, the form's CSRF token) but stop at the provider's
    door: the 303's authorize URL (with our state) is returned, not followed. (A route cannot hold it:
    Playwright routes only the first URL of a redirect chain.)"""
    form = page.locator("form[action='/ui/admin/sources/m365/authorize']")
    csrf = await form.locator("input[name=csrf]").get_attribute("value")
    r = await page.request.post("/ui/admin/sources/m365/authorize", form={"csrf": csrf}, max_redirects=0)
    assert r.status == 303, await r.text()
    url = r.headers["location"]
    seen = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    seen["url"] = url
    assert seen.get("state"), seen
    return seen


def consent(authorize_url: str) -> str:
    """What the emulator's authorize endpoint redirects to (the callback URL with code and state)."""
    r = httpx.get(authorize_url, follow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    return r.headers["location"]


async def test_authorise_code_flow_writes_the_token_and_the_source_then_fetches(start_ui, emu, tmp_path: Path,
                                                                                 dns_server) -> None:
    ui, sections = await start(start_ui, emu, tmp_path)
    token_file = tmp_path / "m365.refresh"
    page = await signed_in(ui)
    row = page.get_by_role("row").filter(has_text="m365")
    assert "Not authorised yet" in await row.inner_text()
    for crafted in ("/ui/admin/sources?authorized=m365", "/ui/admin/sources?authorized=m365&proof=00"):
        await page.goto(crafted)                                   # a link someone else made: no false notice
        assert await page.get_by_text("m365: authorised").count() == 0
    csp = (await page.request.get("/ui/admin/sources")).headers["content-security-policy"]
    assert f"form-action 'self' {emu.base}" in csp, csp          # the 303 to the provider is a form's target
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if "/oauth/callback" in r.url else None)
    await page.get_by_role("button", name="Authorise m365", exact=True).click()
    await page.get_by_text("m365: authorised").wait_for()
    assert urlsplit(page.url).path == "/ui/admin/sources" and "code=" not in page.url
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    refresh = token_file.read_text().strip()
    assert emu.refresh_tokens[refresh] == USER                    # login_hint = the source's user
    grant = [t for t in emu.token_requests if t.get("grant_type") == "authorization_code"]
    assert len(grant) == 1 and grant[0]["redirect_uri"] == f"{ui.base}/ui/admin/sources/oauth/callback"
    assert len(grant[0]["code_verifier"]) == 86
    text = await page.get_by_role("row").filter(has_text="m365").inner_text()
    assert "set status = \"active\"" in text and "reload" in text
    assert refresh not in await page.content()
    assert await audits(ui) == [(ADMIN, "source.authorize")]
    rows = await ui.store.query("SELECT COUNT(*) AS n FROM ui_oauth_pending")
    assert rows[0]["n"] == 0                                      # used up: the verifier is gone
    # Test Connection before the reload: the draft's token request picks the new file up, and says so
    await page.get_by_role("row").filter(has_text="m365").get_by_role("button", name="Test Connection").click()
    await page.get_by_text("Test Connection: m365 — passed").wait_for()
    steps = await page.locator("main").inner_text()
    assert "grant=refresh_token" in steps and "grant=client_credentials" not in steps, steps

    # the same callback again (browser history, a replay): refused, nothing changes
    assert len(callbacks) == 1
    before = (token_file.read_bytes(), os.stat(token_file).st_mtime_ns)
    resp = await page.goto(callbacks[0])
    assert resp.status == 400
    await page.get_by_text("unknown, expired or already used").wait_for()
    assert (token_file.read_bytes(), os.stat(token_file).st_mtime_ns) == before
    assert len([t for t in emu.token_requests if t.get("grant_type") == "authorization_code"]) == 1

    # the next step the page names: status = "active" and a reload; then a mail of the mailbox becomes a ticket
    emu.deliver(USER, simple_message("Printer via Graph", message_id="graph-oauth-1@customer.test"))
    store_url = getattr(ui.store, "url", None) or f"sqlite:///{tmp_path}/ticketmx.db"   # PostgreSQL (tests/pg)
    cfg = merge(BASE_CONFIG, {"store": {"url": store_url},
                              "dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": "1s"},
                              **sections, "source": [graph_source(emu, tmp_path, status="active")]})
    path = tmp_path / "active.toml"
    path.write_text(toml_dump(cfg))
    assert ui.api.gw.gw.reload(str(path))
    tickets: list[Any] = []
    for _ in range(200):
        tickets = [t for t in await ui.store.tickets_list() if t["subject"] == "Printer via Graph"]
        if tickets:
            break
        await asyncio.sleep(0.1)
    assert tickets, "the authorised source imported nothing"
    await page.goto("/ui/admin/sources")
    text = await page.get_by_role("row").filter(has_text="m365").inner_text()
    assert "Active" in text and "next token request" in text
    clean(ui)


async def test_refusals_write_nothing(start_ui, emu, tmp_path: Path) -> None:
    ui, _ = await start(start_ui, emu, tmp_path)
    token_file = tmp_path / "m365.refresh"
    page = await signed_in(ui)

    # no CSRF token: refused before anything is stored or sent
    r = await page.request.post("/ui/admin/sources/m365/authorize", form={"csrf": "wrong"}, max_redirects=0)
    assert r.status == 403 and not emu.requests and not emu.token_requests

    # the provider declines (error=access_denied back to the callback)
    emu.deny_authorize = True
    await page.get_by_role("button", name="Authorise m365", exact=True).click()
    await page.get_by_text("error=access_denied").wait_for()
    assert "nothing was written" in await page.locator("p.error").inner_text()
    emu.deny_authorize = False

    # a forged state, and none at all
    for query in ("state=forged-state&code=AC-anything", "code=AC-anything"):
        resp = await page.goto(f"/ui/admin/sources/oauth/callback?{query}")
        assert resp.status == 400
        await page.get_by_text("unknown, expired or already used").wait_for()

    # a state started in this browser, brought back by another browser session (same admin, second context)
    await page.goto("/ui/admin/sources")
    held = await stop_at_provider(page)
    assert held["code_challenge_method"] == "S256" and held["redirect_uri"].endswith("/ui/admin/sources/oauth/callback")
    back = consent(held["url"])
    other = await signed_in(ui)
    resp = await other.goto(back)
    assert resp.status == 403
    await other.get_by_text("started in another browser session").wait_for()
    assert not token_file.exists()

    # a code the token endpoint refuses (our state, a made-up code): the state is used up, nothing written
    await page.goto("/ui/admin/sources")
    held2 = await stop_at_provider(page)
    resp = await page.goto(f"/ui/admin/sources/oauth/callback?state={held2['state']}&code=AC-made-up")
    assert resp.status == 400
    await page.get_by_text("error=invalid_grant").wait_for()
    assert not token_file.exists() and await audits(ui) == []
    # an agent may not start one
    await ui.user("agent@example.test", "agent", "IT")
    agent = await ui.page()
    await ui.signin(agent, "agent@example.test", next_path="/ui/tickets")
    token = json.loads(await agent.locator("body").get_attribute("hx-headers"))["X-CSRF-Token"]
    r = await agent.request.post("/ui/admin/sources/m365/authorize", form={"csrf": token}, max_redirects=0)
    assert r.status == 403 and "admin role" in await r.text()

    # the first browser may still finish its own authorisation (the other session did not use it up)
    await page.goto(back)
    await page.get_by_text("m365: authorised").wait_for()
    assert token_file.exists() and await audits(ui) == [(ADMIN, "source.authorize")]

    # the admin's session ends while at the provider (signed out, or expired) and they sign in again:
    # still refused (the state belonged to the ended session), but the page says what happened
    token_file.unlink()
    await page.goto("/ui/admin/sources")
    held3 = await stop_at_provider(page)
    back3 = consent(held3["url"])
    await page.get_by_role("button", name="Sign out", exact=True).click()
    await ui.signin(page, ADMIN, next_path="/ui/admin/sources")
    resp = await page.goto(back3)
    assert resp.status == 403
    await page.get_by_text("your session ended while you were at the provider").wait_for()
    assert not token_file.exists() and await audits(ui) == [(ADMIN, "source.authorize")]
    clean(ui)


async def test_without_public_url_the_page_names_the_key(start_ui, emu, tmp_path: Path) -> None:
    ui, _ = await start(start_ui, emu, tmp_path, public=False)
    page = await signed_in(ui)
    await page.get_by_role("button", name="Authorise m365", exact=True).click()
    err = await page.locator("p.error").inner_text()
    assert "http.public_url" in err and "Host header" in err
    assert not any("/authorize" in r for r in ui.guard.requests if ":%d/" % emu.port in r)
    assert not (tmp_path / "m365.refresh").exists()
    clean(ui)


async def test_authorise_with_a_code_device_grant(start_ui, emu, tmp_path: Path) -> None:
    ui, _ = await start(start_ui, emu, tmp_path)
    token_file = tmp_path / "m365.refresh"
    page = await signed_in(ui)
    emu.slow_down_next = 1
    await page.get_by_role("button", name="Authorise m365 with a code").click()
    code = (await page.locator("[data-user-code]").inner_text()).strip()
    assert len(code) == 8 and f"{emu.base}/devicelogin" in await page.locator("#device-m365").inner_text()
    # htmx polls every 1 s (the emulator's interval); its slow_down makes it 6 s
    await page.get_by_text("checks every 6 s").wait_for(timeout=10_000)
    shots = Path(os.environ.get("TICKETMX_SCREENSHOTS") or tmp_path)   # docs/ui.md shows this one
    shots = shots if shots.is_absolute() else ROOT / shots
    await page.screenshot(path=str(shots / "admin-sources-oauth.png"), full_page=True)
    polls = len([t for t in emu.token_requests if t.get("grant_type", "").endswith("device_code")])
    # "Check now" within the interval makes no token request
    await page.get_by_role("button", name="Check now whether m365 was approved").click()
    await page.get_by_text("checks every 6 s").wait_for()
    assert len([t for t in emu.token_requests if t.get("grant_type", "").endswith("device_code")]) == polls
    assert not token_file.exists()
    emu.approve_device(code, USER)
    await page.get_by_text("m365: authorised").wait_for(timeout=15_000)
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert emu.refresh_tokens[token_file.read_text().strip()] == USER
    assert await audits(ui) == [(ADMIN, "source.authorize")]
    detail = (await ui.store.query("SELECT detail FROM audit_log WHERE action='source.authorize'"))[0]["detail"]
    assert "device_code" in detail and token_file.read_text().strip() not in detail

    # declined at the verification page: the panel says so and stops polling; nothing more is written
    before = token_file.read_bytes()
    await page.get_by_role("button", name="Authorise m365 with a code").click()
    code = (await page.locator("[data-user-code]").inner_text()).strip()
    emu.approve_device(code, USER, deny=True)
    await page.get_by_text("declined at the verification page").wait_for(timeout=10_000)
    assert token_file.read_bytes() == before and len(await audits(ui)) == 1
    clean(ui)
