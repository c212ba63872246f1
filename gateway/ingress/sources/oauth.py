"""OAuth 2.0 access tokens for the sources (IMAP/POP3 XOAUTH2, Graph): the relay's token client, shared.

gateway/runtime/oauth.py does the work (client credentials or refresh token, a rotated refresh token written
back to ``oauth_refresh_token_file``, secret-free errors); this adds the name the kinds call
(``access_token``) and what the manager exports: ``expires_at`` (ticketmx_source_token_expiry_timestamp_seconds)
and ``failed_total`` (ticketmx_source_token_refresh_failures_total). ``ticketmx source authorize`` gets the
first refresh token (gateway/ingress/sources/authorize.py).
"""
from __future__ import annotations

from typing import Any

from gateway.runtime.oauth import OAuthError, TokenProvider


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


def token_provider(cfg: Any) -> SourceTokens | None:
    """The token provider of an ``auth = "xoauth2"`` source (every graph source); None otherwise."""
    if getattr(cfg, "auth", "") != "xoauth2" or getattr(cfg, "oauth", None) is None:
        return None
    return SourceTokens(cfg.oauth)


__all__ = ["SourceTokens", "token_provider", "OAuthError"]
