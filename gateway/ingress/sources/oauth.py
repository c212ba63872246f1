"""OAuth 2.0 access tokens for the sources (IMAP/POP3 XOAUTH2, Graph): the relay's token client, shared.

gateway/runtime/oauth.py does the work (client credentials or refresh token, a rotated refresh token written
back to ``oauth_refresh_token_file``, secret-free errors); this adds the name the kinds call
(``access_token``) and what the manager exports: ``expires_at`` (ticketmx_source_token_expiry_timestamp_seconds)
and ``failed_total`` (ticketmx_source_token_refresh_failures_total). ``ticketmx source authorize`` gets the
first refresh token (gateway/ingress/sources/authorize.py), from the CLI or the web UI's "Authorise".

A new authorisation replaces ``oauth_refresh_token_file`` while the gateway runs (often in another
process: the HTTP server's). Before each token request the provider reads that file again and takes a
refresh token it does not hold, so the source uses the new authorisation at its next token request
(when its access token expires, or at once while token requests fail) without a reload. The check is
inside the provider's lock, so it never races the provider's own write of a rotated token; and that write
happens only while the file still holds the token just used, so a new authorisation written during a
token request is not overwritten (left: the microseconds between that check and the rename).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.runtime.oauth import OAuthError, TokenProvider, write_secret

log = logging.getLogger(__name__)


class SourceTokens(TokenProvider):
    """A source's cached access token; ``failed_total`` counts every failed token request."""

    def __init__(self, cfg: Any, **kw: Any) -> None:
        kw.setdefault("user_agent", "ticketmx-source")
        super().__init__(cfg, **kw)
        self.failed_total = 0

    async def access_token(self) -> str:
        try:
            return await self.token()
        except OAuthError:
            self.failed_total += 1
            raise

    async def _fetch(self) -> None:
        await self._pick_up_file()
        await super()._fetch()

    async def _pick_up_file(self) -> None:
        """A refresh token written to the file since we read it (``source authorize``, the web UI)."""
        path = self.cfg.refresh_token_file
        if not path:
            return
        try:
            value = await asyncio.to_thread(_read, path)
        except (OSError, UnicodeDecodeError):
            return   # not written yet (a draft), or unreadable: the request reports what happens
        if value and value != self._refresh_token:
            self._refresh_token = value
            log.info("OAuth: a new refresh token in %s is used from now on", path)


    async def _keep_rotated(self, path: str, used: str, new: str) -> None:
        """Write the rotated token back only while the file still holds the one just used: a refresh token
        written meanwhile by a new authorisation (the CLI, the web UI) is not overwritten, and is taken
        at the next token request."""
        def cas() -> bool:
            try:
                on_disk = _read(path)
            except (OSError, UnicodeDecodeError):
                on_disk = ""
            if on_disk and on_disk != used:
                return False
            write_secret(path, new)
            return True
        if not await asyncio.to_thread(cas):
            log.info("OAuth: %s was replaced by a new authorisation while a token request ran; it is used next", path)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read(65536).strip()


def token_provider(cfg: Any) -> SourceTokens | None:
    """The token provider of an ``auth = "xoauth2"`` source (every graph source); None otherwise."""
    if getattr(cfg, "auth", "") != "xoauth2" or getattr(cfg, "oauth", None) is None:
        return None
    return SourceTokens(cfg.oauth)


__all__ = ["SourceTokens", "token_provider", "OAuthError"]
