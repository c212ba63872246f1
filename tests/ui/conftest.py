"""The web UI in a real browser: Debian's headless Chromium driven by Playwright (async API, on the test's
own event loop beside the gateway). ``ui`` starts a gateway with ``[http] listen`` (tests/api/conftest.py),
adds users with the real ``ticketmx user add``, and opens pages whose every request is routed through
:class:`Guard`: only 127.0.0.1 may be reached (anything else is aborted and recorded), console messages
and dialogs are recorded, so a test can assert that nothing left and nothing ran."""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import pytest

from ..api.conftest import Api, start_api  # noqa: F401 - fixtures used here
from ..conftest import ROOT

CHROMIUM = os.environ.get("TICKETMX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "correct horse battery"
TIMEOUT_MS = 15_000


def _playwright() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (scripts/test installs it)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/test installs Debian's chromium)")
    return async_playwright


async def user_cli(config: Path, *args: str, stdin: str = "", check: bool = True) -> tuple[int, str, str]:
    """``ticketmx user ARGS`` as a subprocess with ``stdin`` (the password), off the gateway's loop."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "user", *args, "--config",
                                                str(config), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    if check and proc.returncode != 0:
        raise AssertionError(f"ticketmx user {' '.join(args)} exited {proc.returncode}: {err.decode()}")
    return proc.returncode or 0, out.decode(), err.decode()


class Guard:
    """What a browser context did: requests to other hosts (aborted), console messages, dialogs, page errors."""

    def __init__(self) -> None:
        self.blocked: list[str] = []      # requests for another host that reached the network layer (aborted)
        self.attempted: list[str] = []    # requests for another host the page made, CSP-stopped ones included
        self.requests: list[str] = []
        self.console: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []

    async def route(self, route: Any) -> None:
        url = route.request.url
        self.requests.append(url)
        if urlsplit(url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            self.blocked.append(url)
            await route.abort("blockedbyclient")

    def watch(self, page: Any) -> None:
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", self._request)

    def _request(self, req: Any) -> None:
        # Chromium reports a request the page's CSP stopped before any network use too: those are
        # ``attempted`` (the route above sees only requests that would really leave, ``blocked``).
        host = urlsplit(req.url).hostname
        if req.url.startswith(("http:", "https:", "ws:", "wss:")) and host != "127.0.0.1":
            self.attempted.append(req.url)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        asyncio.get_running_loop().create_task(dialog.dismiss())

    def csp_reports(self) -> list[str]:
        return [c for c in self.console if "Content Security Policy" in c]


class Ui:
    """A gateway with its HTTP server, a browser, and helpers to add users and sign in."""

    def __init__(self, api: Api, browser: Any) -> None:
        self.api = api
        self.browser = browser
        self.base = api.base
        self.guard = Guard()
        self._contexts: list[Any] = []

    @property
    def store(self) -> Any:
        return self.api.store

    async def user(self, email: str, role: str = "agent", *queues: str, password: str = PASSWORD) -> str:
        args = ["add", "--email", email, "--role", role]
        for q in queues:
            args += ["--queue", q]
        await user_cli(self.api.config, *args, stdin=password + "\n")
        return email

    async def page(self, guard: Guard | None = None, **context_kw: Any) -> Any:
        """A new page in its own browser context (own cookies), guarded."""
        g = guard or self.guard
        ctx = await self.browser.new_context(base_url=self.base, **context_kw)
        ctx.set_default_timeout(TIMEOUT_MS)
        await ctx.route("**/*", g.route)
        self._contexts.append(ctx)
        page = await ctx.new_page()
        g.watch(page)
        return page

    async def signin(self, page: Any, email: str, password: str = PASSWORD, next_path: str = "/ui/") -> None:
        await page.goto(next_path)
        await page.get_by_label("Email address").fill(email)
        await page.get_by_label("Password").fill(password)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_load_state()

    async def close(self) -> None:
        for ctx in self._contexts:
            await ctx.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium (Debian's), closed at the end of the test whatever happened."""
    async_playwright = _playwright()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, timeout=30_000,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def start_ui(start_api: Callable[..., Any], browser: Any) -> AsyncIterator[Callable[..., Any]]:
    made: list[Ui] = []

    async def start(**sections: Any) -> Ui:
        ui = Ui(await start_api(**sections), browser)
        made.append(ui)
        return ui
    yield start
    for ui in made:
        await ui.close()


@pytest.fixture
async def ui(start_ui: Callable[..., Any]) -> Ui:
    return await start_ui()
