"""The relay's OAuth 2.0 token client: gateway/runtime/oauth.py, shared with the pull sources."""
from __future__ import annotations

from gateway.runtime.oauth import (HttpResponse, OAuthError, TokenProvider, error_code, http_post_form,
                                   write_secret)

__all__ = ["TokenProvider", "OAuthError", "http_post_form", "HttpResponse", "error_code", "write_secret"]
