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
from dataclasses import dataclass
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


class NotAuthorizable(Exception):
    """A source the grant cannot be run for; the message names the dotted config key (or the source)."""

    def __init__(self, message: str, code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    """One source's grant: what the CLI and the web UI both need to run it."""

    sc: Any                 # the SourceConfig
    key: str                # "source[i]" for error messages
    url: str                # the device endpoint, or the authorization endpoint
    scope: str
    login_hint: str


def target(cfg: Any, name: str, loopback: bool) -> Target:
    """Source ``name``'s grant (``loopback``: authorization code + PKCE, else the device grant), or
    :class:`NotAuthorizable` naming the key to fix."""
    found = [(i, s) for i, s in enumerate(cfg.sources) if s.name == name]
    if not found:
        raise NotAuthorizable(f"no [[source]] named {name!r} (`ticketmx source list` shows them)")
    i, sc = found[0]
    key = f"source[{i}]"
    oauth = sc.oauth
    if sc.auth != "xoauth2" or oauth is None:
        raise NotAuthorizable(f"config error: {key}.auth: source {name} uses auth = \"{sc.auth}\"; `source authorize`"
                              " is for OAuth sources (auth = \"xoauth2\", every graph source)")
    if not oauth.refresh_token_file:
        raise NotAuthorizable(f"config error: {key}.oauth_refresh_token_file: required: the file the refresh token"
                              " is written to (mode 0600)")
    derived = endpoints_for(oauth.token_url)
    if loopback:
        url, url_key = sc.oauth_authorize_url or derived.authorize_url, "oauth_authorize_url"
    else:
        url, url_key = sc.oauth_device_url or derived.device_url, "oauth_device_url"
    if not url:
        raise NotAuthorizable(f"config error: {key}.{url_key}: required: it cannot be derived from oauth_token_url"
                              f" {oauth.token_url}")
    # Graph's ".default" = the app's configured permissions; Microsoft adds a refresh token only with offline_access
    return Target(sc, key, url, delegated_scope(oauth.scope, oauth.token_url), sc.user or sc.username)


def save_refresh_token(sc: Any, ans: dict[str, Any]) -> str:
    """Write the token endpoint's refresh token to ``oauth_refresh_token_file`` (0600, replaced atomically:
    gateway/runtime/oauth.py ``write_secret``); returns the path. :class:`NotAuthorizable` (code 1) when
    the answer has none or the file cannot be written. Blocking (a file and an fsync): run it off the loop."""
    refresh = ans.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise NotAuthorizable("the token endpoint gave no refresh token (the scope needs offline_access; Google:"
                              " a consent with access_type=offline)", EX_FAIL)
    path = sc.oauth.refresh_token_file
    try:
        write_secret(path, refresh)
    except OSError as exc:
        raise NotAuthorizable(f"cannot write {path}: {exc.strerror or exc}", EX_FAIL) from None
    return path


def next_step(sc: Any) -> str:
    """What the admin does after the token is written (docs/sources.md, "Authorising from the web UI")."""
    if sc.status == "draft":
        return (f"Set status = \"active\" in the [[source]] named {sc.name} and reload (SIGHUP) to start"
                " fetching.")
    return "The running gateway uses it at the source's next token request."


async def authorize(cfg: Any, name: str, loopback: bool = False, *, timeout: float = 900.0, port: int = 0,
                    login_hint: str = "", out: Callable[[str], None] = _say,
                    err: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> int:
    """Run one grant for source ``name`` of config ``cfg``; 0 when the refresh token is written."""
    try:
        t = target(cfg, name, loopback)
    except NotAuthorizable as exc:
        err(f"ticketmx: {exc}")
        return exc.code
    oauth = t.sc.oauth
    out(f"source {name}: authorizing client {oauth.client_id} for scope {t.scope!r}")
    try:
        if loopback:
            ans = await loopback_grant(oauth, t.url, t.scope, out, timeout=timeout, port=port,
                                       login_hint=login_hint or t.login_hint)
        else:
            ans = await device_grant(oauth, t.url, t.scope, out, max_wait=timeout)
        path = save_refresh_token(t.sc, ans)
    except (OAuthError, NotAuthorizable) as exc:
        err(f"ticketmx: source {name}: {exc}")
        return getattr(exc, "code", EX_FAIL)
    out(f"source {name}: refresh token written to {path} (mode 0600). {next_step(t.sc)}")
    return EX_OK


__all__ = ["register", "authorize", "target", "Target", "NotAuthorizable", "save_refresh_token", "next_step"]
