"""``ticketmx source authorize NAME [--loopback]``: the first refresh token of an OAuth source, on a headless server.

Default: the device authorization grant (RFC 8628): the command prints a URL and a code, the admin opens
the URL on any device, signs in as the mailbox (or an account with access to it) and enters the code, and
the command, polling meanwhile, writes the refresh token to ``oauth_refresh_token_file`` (mode 0600,
replaced atomically). ``--loopback``: the authorization code grant with PKCE and a redirect to
``http://127.0.0.1:PORT/`` on this machine (RFC 8252), for identity providers or app registrations without
the device flow; the browser must reach that port (ssh -L).

The endpoints are ``oauth_device_url`` / ``oauth_authorize_url``, derived from ``oauth_token_url`` for
Microsoft's identity platform (national clouds too) and Google. A source waiting for its first token is
``status = "draft"``: it may name a refresh token file that does not exist yet.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from gateway.runtime.oauth import OAuthError, write_secret
from gateway.runtime.oauth_authorize import delegated_scope, device_grant, endpoints_for, loopback_grant

EX_OK, EX_FAIL, EX_CONFIG = 0, 1, 78


def register(sub: Any, common: argparse.ArgumentParser, ssub: Any = None) -> Any:
    """Add ``source authorize`` to ``ssub`` (the ``source`` subcommands; made here when not given)."""
    if ssub is None:
        s = sub.add_parser("source", parents=[common], help="pulled mailboxes ([[source]])")
        ssub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = ssub.add_parser("authorize", parents=[common],
                        help="get a source's first OAuth refresh token (device code, or --loopback)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--loopback", action="store_true",
                   help="authorization code + PKCE with a redirect to 127.0.0.1 (RFC 8252) instead of a device code")
    a.add_argument("--port", type=int, default=0, help="--loopback: the local port (default: any free one)")
    a.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                   help="give up after this long (default 900)")
    a.add_argument("--login-hint", default="", metavar="ADDR", help="--loopback: the account to sign in as")
    return ssub


def _say(text: str) -> None:
    print(text, flush=True)


async def authorize(cfg: Any, name: str, loopback: bool = False, *, timeout: float = 900.0, port: int = 0,
                    login_hint: str = "", out: Callable[[str], None] = _say,
                    err: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> int:
    """Run one grant for source ``name`` of config ``cfg``; 0 when the refresh token is written."""
    found = [(i, s) for i, s in enumerate(cfg.sources) if s.name == name]
    if not found:
        err(f"ticketmx: no [[source]] named {name!r} (`ticketmx source list` shows them)")
        return EX_CONFIG
    i, sc = found[0]
    key = f"source[{i}]"
    oauth = sc.oauth
    if sc.auth != "xoauth2" or oauth is None:
        err(f"ticketmx: config error: {key}.auth: source {name} uses auth = \"{sc.auth}\"; `source authorize` is for"
            " OAuth sources (auth = \"xoauth2\", every graph source)")
        return EX_CONFIG
    if not oauth.refresh_token_file:
        err(f"ticketmx: config error: {key}.oauth_refresh_token_file: required: the file the refresh token is"
            " written to (mode 0600)")
        return EX_CONFIG
    derived = endpoints_for(oauth.token_url)
    if loopback:
        url = sc.oauth_authorize_url or derived.authorize_url
        url_key = "oauth_authorize_url"
    else:
        url = sc.oauth_device_url or derived.device_url
        url_key = "oauth_device_url"
    if not url:
        err(f"ticketmx: config error: {key}.{url_key}: required: it cannot be derived from oauth_token_url"
            f" {oauth.token_url}")
        return EX_CONFIG
    scope = delegated_scope(oauth.scope, oauth.token_url)   # Graph's ".default" = the app's configured permissions
    out(f"source {name}: authorizing client {oauth.client_id} for scope {scope!r}")
    try:
        if loopback:
            ans = await loopback_grant(oauth, url, scope, out, timeout=timeout, port=port,
                                       login_hint=login_hint or sc.user or sc.username)
        else:
            ans = await device_grant(oauth, url, scope, out, max_wait=timeout)
    except OAuthError as exc:
        err(f"ticketmx: source {name}: {exc}")
        return EX_FAIL
    refresh = ans.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        err(f"ticketmx: source {name}: the token endpoint gave no refresh token (the scope needs offline_access;"
            " Google: a consent with access_type=offline)")
        return EX_FAIL
    try:
        write_secret(oauth.refresh_token_file, refresh)
    except OSError as exc:
        err(f"ticketmx: source {name}: cannot write {oauth.refresh_token_file}: {exc.strerror or exc}")
        return EX_FAIL
    out(f"source {name}: refresh token written to {oauth.refresh_token_file} (mode 0600)."
        + (" Set status = \"active\" and reload (SIGHUP) to start fetching." if sc.status == "draft" else
           " Reload (SIGHUP) so the running gateway reads it."))
    return EX_OK


__all__ = ["register", "authorize"]
