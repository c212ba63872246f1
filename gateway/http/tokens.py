"""API tokens and the audit log in the store (both backends, portable SQL through ``Store.transaction``
and ``Store.query``): no FastAPI here, so ``ticketmx token …`` imports only this.

A token is ``tmx_`` + 43 URL-safe characters (256 random bits); only its SHA-256 is stored, so a copy
of the database does not hand out access (the token is printed once, at creation). A 256-bit secret
needs no slow hash: nothing can be guessed from the digest.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

ROLES = ("viewer", "agent", "admin")  # ascending rights
TOKEN_PREFIX = "tmx_"


@dataclass(frozen=True, slots=True)
class TokenRow:
    name: str
    role: str
    queues: tuple[str, ...]
    created: float
    created_by: str
    last_used: float | None
    revoked: float | None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _row(r: Any) -> TokenRow:
    return TokenRow(name=r["name"], role=r["role"], queues=tuple(json.loads(r["queues"] or "[]")),
                    created=r["created"], created_by=r["created_by"], last_used=r["last_used"],
                    revoked=r["revoked"])


class TokenExists(Exception):
    """A token of that name exists (revoked ones too: names stay unique for the audit log)."""


async def create(store: Any, name: str, role: str, queues: tuple[str, ...], created_by: str,
                 client: str = "local") -> str:
    """A new token (returned, never stored) and its audit row, in one transaction."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = new_token()
    now = time.time()

    def fn(conn: Any) -> None:
        if conn.execute("SELECT 1 FROM api_tokens WHERE name=?", (name,)).fetchone() is not None:
            raise TokenExists(name)
        conn.execute("INSERT INTO api_tokens (name, token_sha256, role, queues, created, created_by)"
                     " VALUES (?,?,?,?,?,?)", (name, token_digest(token), role, json.dumps(list(queues)), now,
                                              created_by))
        write_audit(conn, now, created_by, "", "token.create", name, {"role": role, "queues": list(queues)},
                    client)
    await store.transaction(fn)
    return token


async def revoke(store: Any, name: str, actor: str, client: str = "local") -> bool:
    """Revoke at once (the next request with it gets 401); False when there is no active token ``name``."""
    now = time.time()

    def fn(conn: Any) -> bool:
        done = conn.execute("UPDATE api_tokens SET revoked=? WHERE name=? AND revoked IS NULL",
                            (now, name)).rowcount == 1
        if done:
            write_audit(conn, now, actor, "", "token.revoke", name, {}, client)
        return done
    return await store.transaction(fn)


async def list_tokens(store: Any) -> list[TokenRow]:
    return [_row(r) for r in await store.query(
        "SELECT name, role, queues, created, created_by, last_used, revoked FROM api_tokens ORDER BY name")]


async def lookup(store: Any, token: str) -> TokenRow | None:
    """The active token ``token`` is, or None (unknown or revoked)."""
    rows = await store.query("SELECT name, role, queues, created, created_by, last_used, revoked FROM api_tokens"
                             " WHERE token_sha256=? AND revoked IS NULL", (token_digest(token),))
    return _row(rows[0]) if rows else None


async def touch(store: Any, name: str, when: float) -> None:
    """Record ``last_used`` (the caller calls this at most once a minute per token: it is a write)."""
    def fn(conn: Any) -> None:
        conn.execute("UPDATE api_tokens SET last_used=? WHERE name=?", (when, name))
    await store.transaction(fn, durable=False)


def write_audit(conn: Any, at: float, actor: str, role: str, action: str, target: str, detail: dict[str, Any],
                client: str) -> None:
    """One audit row inside the caller's transaction (so the row and the change commit together)."""
    conn.execute("INSERT INTO audit_log (at, actor, role, action, target, detail, client) VALUES (?,?,?,?,?,?,?)",
                 (at, actor, role, action, target, json.dumps(detail, ensure_ascii=False, default=str), client))


async def audit(store: Any, actor: str, role: str, action: str, target: str, detail: dict[str, Any],
                client: str) -> None:
    now = time.time()
    await store.transaction(lambda conn: write_audit(conn, now, actor, role, action, target, detail, client))


async def audit_list(store: Any, *, actor: str = "", action: str = "", target: str = "", since: float | None = None,
                     until: float | None = None, before_id: int | None = None, limit: int = 100
                     ) -> list[dict[str, Any]]:
    """Audit rows newest first, filtered; ``before_id`` pages back (the last row's id)."""
    where, params = [], []
    for col, val in (("actor", actor), ("action", action), ("target", target)):
        if val:
            where.append(f"{col}=?")
            params.append(val)
    if since is not None:
        where.append("at>=?")
        params.append(since)
    if until is not None:
        where.append("at<?")
        params.append(until)
    if before_id is not None:
        where.append("id<?")
        params.append(before_id)
    sql = ("SELECT id, at, actor, role, action, target, detail, client FROM audit_log"
           + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY id DESC LIMIT {int(limit)}")
    return [{"id": r["id"], "at": r["at"], "actor": r["actor"], "role": r["role"], "action": r["action"],
             "target": r["target"], "detail": json.loads(r["detail"] or "{}"), "client": r["client"]}
            for r in await store.query(sql, tuple(params))]
