"""Users and sessions over real HTTP (httpx against the running gateway; the browser tests cover the pages):
``ticketmx user add|list|disable|passwd``, sign-in rate limits per account and per client address, sign-out
everywhere, CSRF and Origin checks, disabled users and new passwords ending sessions."""
from __future__ import annotations

import json
import re

import httpx

from .conftest import PASSWORD, Ui, user_cli


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


async def signin(c: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    r = await c.get("/ui/signin")
    return await c.post("/ui/signin", data={"email": email, "password": password, "csrf": _csrf(r.text),
                                            "next": "/ui/tickets"})


def client(ui: Ui) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=ui.base, timeout=20)


async def test_user_commands(ui: Ui) -> None:
    cfg = ui.api.config
    await ui.user("Ann@Staff.test", "agent", "IT", "Billing")
    code, _o, err = await user_cli(cfg, "add", "--email", "ann@staff.test", "--role", "viewer",
                                   stdin=PASSWORD + "\n", check=False)
    assert code == 1 and "exists" in err
    code, _o, err = await user_cli(cfg, "add", "--email", "bob@staff.test", "--role", "agent", stdin="short\n",
                                   check=False)
    assert code == 1 and "at least 10 characters" in err
    code, _o, err = await user_cli(cfg, "add", "--email", "root@staff.test", "--role", "admin", "--queue", "IT",
                                   stdin=PASSWORD + "\n", check=False)
    assert code == 1 and "admin sees every queue" in err
    code, _o, err = await user_cli(cfg, "add", "--email", "not-an-address", "--role", "agent",
                                   stdin=PASSWORD + "\n", check=False)
    assert code == 1 and "is not an email address" in err
    _c, out, _e = await user_cli(cfg, "list", "--json")
    users = json.loads(out)
    assert [(u["email"], u["role"], u["queues"], u["disabled"]) for u in users] == [
        ("ann@staff.test", "agent", ["IT", "Billing"], None)]
    rows = await ui.store.query("SELECT password_hash FROM users")
    assert rows[0][0].startswith("$argon2id$") and PASSWORD not in rows[0][0]
    audit = [tuple(r) for r in await ui.store.query("SELECT action, target FROM audit_log")]
    assert ("user.add", "ann@staff.test") in audit


async def test_signin_rate_limits_per_account_and_per_address(start_ui) -> None:
    ui = await start_ui(ui={"signin_rate_per_account": "3/15m", "signin_rate_per_ip": "5/15m"})
    await ui.user("ann@staff.test", "agent")
    await ui.user("bob@staff.test", "agent")
    async with client(ui) as c:
        for _ in range(3):
            assert (await signin(c, "ann@staff.test", "wrong password!")).status_code == 401
        r = await signin(c, "ann@staff.test")                 # the right password, but the account is held
        assert r.status_code == 429 and "Too many failed sign-ins for this account" in r.text
        assert int(r.headers["retry-after"]) > 0
        r = await signin(c, "bob@staff.test")                 # another account from the same address still works
        assert r.status_code == 303 and r.headers["location"] == "/ui/tickets"
    async with client(ui) as c:
        for _ in range(2):                                    # 3 + 2 failures from 127.0.0.1: the address is held
            assert (await signin(c, "nobody@staff.test", "wrong password!")).status_code == 401
        r = await signin(c, "bob@staff.test")
        assert r.status_code == 429 and "for your address" in r.text


async def test_signin_limits_hold_across_http_processes(start_ui) -> None:
    """The failures are counted in the store: with two HTTP processes (connections spread over both by
    the kernel) the account is held after its 3 failures whichever process answers, and the table holds
    only failures (a good sign-in writes none)."""
    ui = await start_ui(http={"processes": 2}, ui={"signin_rate_per_account": "3/15m", "signin_rate_per_ip": "50/15m"})
    await ui.user("ann@staff.test", "agent")
    await ui.user("bob@staff.test", "agent")
    for _ in range(3):
        async with client(ui) as c:                       # a new connection each time
            assert (await signin(c, "ann@staff.test", "wrong password!")).status_code == 401
    for _ in range(8):
        async with client(ui) as c:
            r = await signin(c, "ann@staff.test")
            assert r.status_code == 429 and "for this account" in r.text, r.status_code
    async with client(ui) as c:
        assert (await signin(c, "bob@staff.test")).status_code == 303
    rows = await ui.store.query("SELECT kind, key FROM signin_failures ORDER BY kind, key")
    assert sorted((r[0], r[1]) for r in rows) == [("account", "ann@staff.test")] * 3 + [("ip", "127.0.0.1")] * 3


async def test_sign_out_everywhere_disable_and_passwd_end_sessions(ui: Ui) -> None:
    await ui.user("ann@staff.test", "agent")
    async with client(ui) as a, client(ui) as b:
        assert (await signin(a, "ann@staff.test")).status_code == 303
        assert (await signin(b, "ann@staff.test")).status_code == 303
        page = await a.get("/ui/account")
        assert page.status_code == 200
        token = _csrf(page.text)
        # unsafe requests need the session's CSRF token, and a browser's Origin must be this site
        assert (await a.post("/ui/signout/everywhere")).status_code == 403
        assert (await a.post("/ui/signout/everywhere", data={"csrf": "forged"})).status_code == 403
        r = await a.post("/ui/signout/everywhere", data={"csrf": token}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        assert (await b.get("/ui/tickets")).status_code == 200
        r = await a.post("/ui/signout/everywhere", headers={"X-CSRF-Token": token})   # as htmx sends it
        assert r.status_code == 303
        for c in (a, b):
            r = await c.get("/ui/tickets")
            assert r.status_code == 303 and r.headers["location"].startswith("/ui/signin")
        assert (await signin(a, "ann@staff.test")).status_code == 303
        await user_cli(ui.api.config, "passwd", "ann@staff.test", stdin="a new password 2\n")
        assert (await a.get("/ui/tickets")).status_code == 303       # the new password ended the session
        assert (await signin(a, "ann@staff.test")).status_code == 401
        assert (await signin(a, "ann@staff.test", "a new password 2")).status_code == 303
        await user_cli(ui.api.config, "disable", "ann@staff.test")
        assert (await a.get("/ui/tickets")).status_code == 303
        assert (await signin(a, "ann@staff.test", "a new password 2")).status_code == 401
    audit = [r[0] for r in await ui.store.query("SELECT action FROM audit_log ORDER BY id")]
    assert {"user.signin", "user.signout_everywhere", "user.passwd", "user.disable"} <= set(audit)


async def test_cookie_is_secure_behind_https_public_url(start_ui) -> None:
    ui = await start_ui(http={"public_url": "https://helpdesk.example.test"})
    await ui.user("ann@staff.test", "agent")
    async with client(ui) as c:
        r = await c.get("/ui/signin")
        cookie = r.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/ui/" in cookie
        r = await c.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
