"""OAuth authorisations of a ``[[source]]`` started on the sources page and not finished yet (table
``ui_oauth_pending``, migration 0023), and what the page says about a source's authorisation.

The HTTP server may be several processes and the steps of a grant are separate requests (the button,
the provider's redirect back, the device grant's polls), so the pending state lives in the store:
the SHA-256 of the ``state`` (or of a handle), never the value; the session that started it (only that
browser may finish it); the PKCE verifier or the device code, kept at most 10 minutes and deleted
when used, refused or expired. Portable SQL through ``Store.transaction`` / ``Store.query`` (both
backends), like gateway/ui/users.py. No FastAPI here.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from gateway.ingress.sources.authorize import NotAuthorizable, target

PENDING_TTL = 600.0                              # seconds a started authorisation may take
CALLBACK_PATH = "/ui/admin/sources/oauth/callback"   # the one redirect URI to register
CODE, DEVICE = "code", "device"
_COLS = ("id_sha256, kind, source, session_sha256, user_email, secret, redirect_uri, user_code, verification_uri,"
         " poll_interval, next_poll, created, expires")


@dataclass(frozen=True, slots=True)
class Pending:
    key: str                  # SHA-256 of the state / handle
    kind: str                 # code | device
    source: str
    session: str              # ui_sessions.id_sha256 of the browser that started it
    user_email: str
    secret: str               # PKCE verifier (code) or device_code (device)
    redirect_uri: str
    user_code: str
    verification_uri: str
    poll_interval: float
    next_poll: float
    created: float
    expires: float


def key_of(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def _row(r: Any) -> Pending:
    return Pending(r["id_sha256"], r["kind"], r["source"], r["session_sha256"], r["user_email"], r["secret"],
                   r["redirect_uri"], r["user_code"], r["verification_uri"], float(r["poll_interval"]),
                   float(r["next_poll"]), float(r["created"]), float(r["expires"]))


async def add(store: Any, kind: str, source: str, session: str, user_email: str, secret: str, *,
              ttl: float = PENDING_TTL, redirect_uri: str = "", user_code: str = "", verification_uri: str = "",
              poll_interval: float = 0.0) -> str:
    """A new pending authorisation; returns its random handle (the code grant's ``state``), of which
    the store keeps only the SHA-256. A device grant replaces this session's earlier one for the source."""
    handle = secrets.token_urlsafe(32)
    now = time.time()

    def fn(conn: Any) -> None:
        conn.execute("DELETE FROM ui_oauth_pending WHERE expires<?", (now,))
        if kind == DEVICE:
            conn.execute("DELETE FROM ui_oauth_pending WHERE session_sha256=? AND source=? AND kind=?",
                         (session, source, DEVICE))
        conn.execute(f"INSERT INTO ui_oauth_pending ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     (key_of(handle), kind, source, session, user_email, secret, redirect_uri, user_code,
                      verification_uri, poll_interval, now + poll_interval, now, now + min(ttl, PENDING_TTL)))
    await store.transaction(fn)
    return handle


async def get(store: Any, key: str) -> Pending | None:
    rows = await store.query(f"SELECT {_COLS} FROM ui_oauth_pending WHERE id_sha256=?", (key,))
    return _row(rows[0]) if rows else None


async def session_live(store: Any, session: str) -> bool:
    """Whether the UI session ``session`` (its id's SHA-256) still exists and has not expired."""
    rows = await store.query("SELECT expires FROM ui_sessions WHERE id_sha256=?", (session,))
    return bool(rows) and float(rows[0][0]) > time.time()


async def take(store: Any, key: str, session: str) -> bool:
    """Use it up: True for the one request that deleted it (single use, also across processes and nodes)."""
    def fn(conn: Any) -> int:
        return conn.execute("DELETE FROM ui_oauth_pending WHERE id_sha256=? AND session_sha256=?",
                            (key, session)).rowcount
    return await store.transaction(fn) == 1


async def devices(store: Any, session: str) -> dict[str, Pending]:
    """This session's device grants still waiting, by source."""
    rows = await store.query(f"SELECT {_COLS} FROM ui_oauth_pending WHERE session_sha256=? AND kind=? AND expires>?"
                             " ORDER BY created", (session, DEVICE, time.time()))
    return {r["source"]: _row(r) for r in rows}


async def claim_poll(store: Any, key: str, now: float) -> bool:
    """The right to make the next token request of a device grant: at most one per ``poll_interval``,
    whichever process or browser tab asks (a "Check now" click between two polls makes none)."""
    def fn(conn: Any) -> int:
        return conn.execute("UPDATE ui_oauth_pending SET next_poll=?+poll_interval WHERE id_sha256=? AND"
                            " next_poll<=? AND expires>?", (now, key, now, now)).rowcount
    return await store.transaction(fn, durable=False) == 1


async def slow_down(store: Any, key: str, now: float) -> None:
    """RFC 8628 3.5: 5 s more between polls, for this and every later request."""
    def fn(conn: Any) -> None:
        conn.execute("UPDATE ui_oauth_pending SET poll_interval=poll_interval+5, next_poll=?+poll_interval+5"
                     " WHERE id_sha256=?", (now, key))
    await store.transaction(fn, durable=False)


async def drop(store: Any, key: str) -> None:
    def fn(conn: Any) -> None:
        conn.execute("DELETE FROM ui_oauth_pending WHERE id_sha256=?", (key,))
    await store.transaction(fn)


# -- what the page says -------------------------------------------------------------------------------
def panel(row: Pending) -> dict[str, Any]:
    """The device panel: the user code, the verification URI (a link only when http(s): it comes from
    the provider), the polling interval in whole seconds and the seconds left."""
    uri = row.verification_uri
    return {"source": row.source, "user_code": row.user_code, "uri": uri,
            "uri_link": uri.startswith(("https://", "http://")), "every": max(1, int(row.poll_interval + 0.999)),
            "left": max(0, int(row.expires - time.time()))}


def authorize_origins(cfg: Any) -> list[str]:
    """The origins of the configured OAuth sources' authorization endpoints: the sources page's
    ``form-action`` must allow them, since "Authorise" answers its POST with a redirect there."""
    out: list[str] = []
    for sc in getattr(cfg, "sources", ()):
        try:
            url = target(cfg, sc.name, True).url
        except NotAuthorizable:
            continue
        u = urlsplit(url)
        origin = f"{u.scheme}://{u.netloc}"
        if u.scheme in ("http", "https") and u.netloc and origin not in out:
            out.append(origin)
    return out


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def states(cfg: Any) -> dict[str, dict[str, Any]]:
    """Per OAuth source: where its refresh token goes, when it was last written, what to do next.
    Blocking (a stat per source): run it off the loop."""
    out: dict[str, dict[str, Any]] = {}
    for sc in getattr(cfg, "sources", ()):
        oauth = getattr(sc, "oauth", None)
        if sc.auth != "xoauth2" or oauth is None:
            continue
        path = oauth.refresh_token_file or ""
        written = _mtime(path) if path else None
        when = datetime.fromtimestamp(written, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if written else ""
        if not path:
            step = ("Client credentials: the app's own permissions, no person signs in (consent is given in the"
                    " identity provider). To authorise as a mailbox user instead, set oauth_refresh_token_file.")
        elif sc.status == "draft" and not written:
            step = "Not authorised yet: Authorise (you sign in with the identity provider) or Authorise with a code."
        elif sc.status == "draft":
            step = (f"Authorised ({when}). Next: set status = \"active\" in the [[source]] named {sc.name} and"
                    " reload the gateway (SIGHUP) to start fetching.")
        elif not written:
            step = "The refresh token file is missing: authorise again."
        else:
            step = (f"Authorised ({when}). Authorising again replaces the token; the running source uses the new"
                    " one at its next token request.")
        out[sc.name] = {"file": path, "written": when, "step": step, "can_authorize": bool(path)}
    return out


__all__ = ["Pending", "add", "get", "take", "devices", "claim_poll", "slow_down", "drop", "key_of", "states",
           "authorize_origins", "panel", "PENDING_TTL", "CALLBACK_PATH", "CODE", "DEVICE"]
