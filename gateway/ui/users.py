"""Users of the web UI and their sessions in the store (both backends, portable SQL through
``Store.transaction`` / ``Store.query``). No FastAPI here: ``ticketmx user …`` imports only this.

Passwords are argon2id hashes (argon2-cffi, RFC 9106's low-memory profile: 64 MiB, 3 passes): memory-hard,
so a stolen table is slow to guess from even on GPUs. Hashing and verifying cost ~50 ms of CPU each,
so the HTTP side runs them in the gateway's bounded executor, never on the event loop.

A session id is 256 random bits; the store keeps its SHA-256 only (a copy of the database signs no one in).
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.http.tokens import write_audit

ROLES = ("viewer", "agent", "admin")  # as API tokens (gateway/http/tokens.py)
MIN_PASSWORD = 10
MAX_SIGNATURE = 2000                  # characters of a reply signature
MAX_PASSWORD = 1024                   # argon2 takes any length; a bound keeps a request's cost bounded
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}$")
_hasher = PasswordHasher()            # argon2id, 64 MiB, t=3, p=4 (argon2-cffi's RFC 9106 low-memory default)
# A hash of a random password: verified against when the email is unknown, so a wrong address costs
# as long as a wrong password and the timing does not tell which addresses exist.
_DUMMY = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    name: str
    role: str
    queues: tuple[str, ...]
    created: float
    created_by: str
    last_login: float | None
    disabled: float | None
    signature: str = ""           # plain text added under "-- " to the user's replies (migration 0022)

    @property
    def active(self) -> bool:
        return self.disabled is None


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: the user and the session's CSRF token."""

    key: str             # SHA-256 of the session id (the row's key)
    user: User
    csrf: str
    created: float
    last_seen: float
    expires: float


class UserError(Exception):
    """A refused user command; the message says why and what to do."""


_COLS = ("u.id, u.email, u.name, u.role, u.queues, u.created, u.created_by, u.last_login, u.disabled,"
         " u.signature")


def _user(r: Any) -> User:
    return User(id=r["id"], email=r["email"], name=r["name"], role=r["role"],
                queues=tuple(json.loads(r["queues"] or "[]")), created=r["created"], created_by=r["created_by"],
                last_login=r["last_login"], disabled=r["disabled"], signature=r["signature"])


def normalise_email(email: str) -> str:
    e = email.strip().lower()
    if not EMAIL.match(e):
        raise UserError(f"{email!r} is not an email address")
    return e


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"the password must have at most {MAX_PASSWORD} characters")


def hash_password(password: str) -> str:
    """CPU- and memory-heavy: call it in an executor from async code."""
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """CPU- and memory-heavy: call it in an executor. ``stored`` None: the email is unknown (the dummy
    hash is verified anyway so the answer takes as long)."""
    try:
        return _hasher.verify(stored or _DUMMY, password[:MAX_PASSWORD]) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def create(store: Any, email: str, role: str, queues: tuple[str, ...], password_hash: str, name: str = "",
                 created_by: str = "", client: str = "local") -> User:
    """A new user and its audit row (``user.add``) in one transaction."""
    if role not in ROLES:
        raise UserError(f"--role must be one of {', '.join(ROLES)}")
    email = normalise_email(email)
    now = time.time()

    def fn(conn: Any) -> None:
        if conn.execute("SELECT 1 FROM users WHERE email=?", (email,)).fetchone() is not None:
            raise UserError(f"a user {email!r} exists (disabled ones too); `ticketmx user passwd {email}` sets a "
                            "new password")
        conn.execute("INSERT INTO users (email, name, role, queues, password_hash, created, created_by,"
                     " password_changed) VALUES (?,?,?,?,?,?,?,?)",
                     (email, name, role, json.dumps(list(queues)), password_hash, now, created_by, now))
        write_audit(conn, now, created_by, "", "user.add", email, {"role": role, "queues": list(queues)}, client)
    await store.transaction(fn)
    got = await get(store, email)
    assert got is not None
    return got


async def get(store: Any, email: str) -> User | None:
    rows = await store.query(f"SELECT {_COLS} FROM users u WHERE u.email=?", (email.strip().lower(),))
    return _user(rows[0]) if rows else None


async def list_users(store: Any) -> list[User]:
    return [_user(r) for r in await store.query(f"SELECT {_COLS} FROM users u ORDER BY u.email")]


async def password_hash_of(store: Any, email: str) -> tuple[User | None, str | None]:
    """The active user and its stored hash, or (None, None)."""
    rows = await store.query(f"SELECT {_COLS}, u.password_hash FROM users u WHERE u.email=? AND u.disabled IS NULL",
                             (email.strip().lower(),))
    return (_user(rows[0]), rows[0]["password_hash"]) if rows else (None, None)


async def disable(store: Any, email: str, actor: str, client: str = "local") -> bool:
    """Disable at once: every session of the user ends. False when there is no active user ``email``."""
    now = time.time()
    email = email.strip().lower()

    def fn(conn: Any) -> bool:
        row = conn.execute("SELECT id FROM users WHERE email=? AND disabled IS NULL", (email,)).fetchone()
        if row is None:
            return False
        conn.execute("UPDATE users SET disabled=? WHERE id=?", (now, row[0]))
        n = conn.execute("DELETE FROM ui_sessions WHERE user_id=?", (row[0],)).rowcount
        write_audit(conn, now, actor, "", "user.disable", email, {"sessions_ended": n}, client)
        return True
    return await store.transaction(fn)


async def set_password(store: Any, email: str, password_hash: str, actor: str, client: str = "local",
                       keep_session: str = "") -> bool:
    """A new password; every session of the user ends (but ``keep_session``, the one that changed it)."""
    now = time.time()
    email = email.strip().lower()

    def fn(conn: Any) -> bool:
        row = conn.execute("SELECT id FROM users WHERE email=?", (email,)).fetchone()
        if row is None:
            return False
        conn.execute("UPDATE users SET password_hash=?, password_changed=? WHERE id=?", (password_hash, now, row[0]))
        n = conn.execute("DELETE FROM ui_sessions WHERE user_id=? AND id_sha256<>?", (row[0], keep_session)).rowcount
        write_audit(conn, now, actor, "", "user.passwd", email, {"sessions_ended": n}, client)
        return True
    return await store.transaction(fn)


_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # could reorder the reply's text


def clean_signature(text: str) -> str:
    """A signature as stored: LF line ends, no trailing blanks, no "-- " line of its own on top (the reply
    adds it), printable text only, at most :data:`MAX_SIGNATURE` characters. Refused with :class:`UserError`."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    if lines and lines[0] == "--":
        lines.pop(0)                      # written with its own delimiter: the reply adds one
    text = "\n".join(lines).strip("\n")
    if len(text) > MAX_SIGNATURE:
        raise UserError(f"the signature has {len(text):,} characters; at most {MAX_SIGNATURE:,} characters")
    if any((unicodedata.category(c) == "Cc" and c not in "\n\t") or c in _BIDI for c in text):
        raise UserError("the signature has control characters; plain text only")
    return text


async def set_signature(store: Any, email: str, signature: str, actor: str, role: str = "",
                        client: str = "local") -> bool:
    """Store a cleaned signature (:func:`clean_signature`) and its audit row (``user.signature``).
    False when there is no user ``email``."""
    now = time.time()
    email = email.strip().lower()

    def fn(conn: Any) -> bool:
        row = conn.execute("SELECT id, signature FROM users WHERE email=?", (email,)).fetchone()
        if row is None:
            return False
        conn.execute("UPDATE users SET signature=? WHERE id=?", (signature, row[0]))
        write_audit(conn, now, actor, role, "user.signature", email,
                    {"old_size": len(row[1] or ""), "size": len(signature)}, client)
        return True
    return await store.transaction(fn)


# -- sessions ---------------------------------------------------------------------------------------
def session_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


async def session_start(store: Any, user: User, lifetime: float, client: str) -> tuple[str, Session]:
    """A new session for ``user`` (its id, returned once, goes into the cookie) and the audit row ``user.signin``."""
    sid = secrets.token_urlsafe(32)
    key = session_key(sid)
    csrf = secrets.token_urlsafe(32)
    now = time.time()

    def fn(conn: Any) -> None:
        conn.execute("INSERT INTO ui_sessions (id_sha256, user_id, csrf, created, last_seen, expires, client)"
                     " VALUES (?,?,?,?,?,?,?)", (key, user.id, csrf, now, now, now + lifetime, client))
        conn.execute("UPDATE users SET last_login=? WHERE id=?", (now, user.id))
        write_audit(conn, now, user.email, user.role, "user.signin", user.email, {}, client)
    await store.transaction(fn)
    return sid, Session(key, user, csrf, now, now, now + lifetime)


async def session_get(store: Any, session_id: str, idle: float) -> Session | None:
    """The live session of ``session_id`` (its user active, not expired, used within ``idle`` seconds)."""
    now = time.time()
    rows = await store.query(
        f"SELECT {_COLS}, s.id_sha256, s.csrf, s.created AS s_created, s.last_seen, s.expires FROM ui_sessions s"
        " JOIN users u ON u.id = s.user_id WHERE s.id_sha256=? AND u.disabled IS NULL", (session_key(session_id),))
    if not rows:
        return None
    r = rows[0]
    if r["expires"] <= now or r["last_seen"] + idle <= now:
        return None
    return Session(r["id_sha256"], _user(r), r["csrf"], r["s_created"], r["last_seen"], r["expires"])


async def session_touch(store: Any, key: str, now: float) -> None:
    def fn(conn: Any) -> None:
        conn.execute("UPDATE ui_sessions SET last_seen=? WHERE id_sha256=?", (now, key))
    await store.transaction(fn, durable=False)


async def session_end(store: Any, session: Session, everywhere: bool, client: str) -> int:
    """Sign out this browser, or every browser of the user (``everywhere``); audited. Returns how many ended."""
    now = time.time()

    def fn(conn: Any) -> int:
        if everywhere:
            n = conn.execute("DELETE FROM ui_sessions WHERE user_id=?", (session.user.id,)).rowcount
        else:
            n = conn.execute("DELETE FROM ui_sessions WHERE id_sha256=?", (session.key,)).rowcount
        # expired rows of anyone go too: the table stays the size of the live sessions
        conn.execute("DELETE FROM ui_sessions WHERE expires<?", (now,))
        write_audit(conn, now, session.user.email, session.user.role,
                    "user.signout_everywhere" if everywhere else "user.signout", session.user.email,
                    {"sessions_ended": n}, client)
        return n
    return await store.transaction(fn)


async def cookie_key(store: Any) -> bytes:
    """The key cookies are signed with: made once per store (every node shares it) and kept in ``control``."""
    name = "ui.cookie_key"
    got = await store.control_get(name)
    if got:
        return got.encode()
    fresh = secrets.token_urlsafe(48)

    def fn(conn: Any) -> None:
        conn.execute("INSERT INTO control (key, value, updated_at) VALUES (?,?,?) ON CONFLICT (key) DO NOTHING",
                     (name, fresh, time.time()))
    await store.transaction(fn)
    got = await store.control_get(name)  # another node may have won the insert: use its key
    assert got
    return got.encode()
