"""``kind = "pop3"``: a POP3 maildrop (RFC 1939), keys ``pop3:<UIDL>``.

POP3 has no folders and no flags, so there is nothing to move: ``settle`` deletes the message (DELE)
only when ``delete_after_import = true``, else leaves it, and our state table (not the server) is what
keeps it from being imported twice. ``success_folder``/``failure_folder``/``exclusion_folder`` are
configuration errors for pop3 (the parser names the key). A DELE takes effect at QUIT: each round is one
session (``keys`` logs in, ``wait_for_new`` quits, which also lets the server show new mail: a POP3
session sees the maildrop as it was at login); a session that dies before its QUIT deletes nothing and
the message is listed again, already known.

TLS: ``implicit`` (995) or ``starttls`` (STLS, refused if the server does not offer it). Auth: USER/PASS,
or ``auth = "xoauth2"``: SASL XOAUTH2 (RFC 5034 AUTH with an initial response) when CAPA lists it.

Client: the standard library's poplib, run in a small shared thread pool (``POOL_SIZE`` threads for all
POP3 sources: the event loop never blocks and a hundred sources do not make a hundred threads). No
maintained asyncio POP3 library exists (aiopop3 is a server, unmaintained clients are tiny wrappers of
the same protocol). poplib caps a line at 2048 bytes; mail has longer ones, so ``_Pop3``/``_Pop3Ssl``
read lines up to ``MAX_LINE``.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import poplib
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from gateway.ingress.sources.base import Fetched, SourceError, Step
from gateway.ingress.sources.oauth import SourceTokens
from gateway.runtime.httpclient import shared_ssl_context
from gateway.runtime.oauth import OAuthError

log = logging.getLogger(__name__)

POOL_SIZE = 8
MAX_LINE = 1 << 20
MAX_MESSAGE = 64 << 20
_POOL = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="ticketmx-pop3")
T = TypeVar("T")


class _LongLines:
    def _getline(self) -> tuple[bytes, int]:  # poplib.POP3._getline with a larger line limit
        line = self.file.readline(MAX_LINE + 1)  # type: ignore[attr-defined]
        if len(line) > MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets


class _Pop3(_LongLines, poplib.POP3):
    pass


class _Pop3Ssl(_LongLines, poplib.POP3_SSL):
    pass


def ssl_context(cfg: Any) -> ssl.SSLContext:
    return shared_ssl_context(bool(getattr(cfg, "verify_cert", True)), getattr(cfg, "ca_file", None))


def xoauth2(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's format), base64."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def _text(resp: bytes | str) -> str:
    s = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
    return s[:200]


def _cert_summary(sock: Any) -> str:
    try:
        cert = sock.getpeercert()
    except (AttributeError, ValueError):
        return ""
    if not cert:
        return "certificate not verified (verify_cert = false)"
    subject = dict(x[0] for x in cert.get("subject", ()))
    issuer = dict(x[0] for x in cert.get("issuer", ()))
    names = ",".join(v for _, v in cert.get("subjectAltName", ()))
    return (f"certificate CN={subject.get('commonName', '-')} SAN={names or '-'}"
            f" issuer={issuer.get('commonName') or issuer.get('organizationName', '?')}"
            f" valid until {cert.get('notAfter', '?')}")


class Pop3Source:
    """One ``[[source]]`` with ``kind = "pop3"``; see the module docstring."""

    def __init__(self, cfg: Any, token: SourceTokens | None = None) -> None:
        self.cfg = cfg
        self.token = token
        if cfg.auth == "xoauth2" and token is None:
            if cfg.oauth is None:
                raise SourceError("token", f"source {cfg.name}: auth = \"xoauth2\" needs the oauth_* keys", temporary=False)
            self.token = SourceTokens(cfg.oauth)
        self._pop: poplib.POP3 | None = None
        self._uids: dict[str, int] = {}     # UIDL -> message number in the current session
        self._sizes: dict[int, int] = {}
        self._lock = asyncio.Lock()          # one command at a time on the session
        self.deleted = 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_POOL, fn, *args)

    # ------------------------------------------------------------------ session (in the pool's threads)
    def _open(self, token: str | None, trace: list[Step] | None = None) -> poplib.POP3:
        c = self.cfg
        timeout = float(getattr(c, "timeout", 30.0) or 30.0)

        def step(name: str, ok: bool, detail: str) -> None:
            if trace is not None:
                trace.append(Step(name, ok, detail))
        try:
            if c.tls == "implicit":
                pop: poplib.POP3 = _Pop3Ssl(c.host, c.port, timeout=timeout, context=ssl_context(c))
                step("tls", True, f"implicit TLS {pop.sock.version()}; {_cert_summary(pop.sock)}")
            else:
                pop = _Pop3(c.host, c.port, timeout=timeout)
            step("tcp", True, f"connected to {c.host}:{c.port}")
        except ssl.SSLError as exc:
            raise SourceError("tls", f"{c.host}:{c.port}: TLS failed: {exc.reason or exc}") from None
        except (OSError, poplib.error_proto) as exc:
            raise SourceError("connect", f"{c.host}:{c.port}: {type(exc).__name__}: {exc}") from None
        try:
            step("greeting", True, _text(pop.getwelcome()))
            try:
                capa = pop.capa()
            except poplib.error_proto:
                capa = {}
            step("capa", True, " ".join(sorted(capa)) or "(no CAPA)")
            if c.tls == "starttls":
                if "STLS" not in capa:
                    raise SourceError("tls", f"{c.host}:{c.port} does not offer STLS (tls = \"starttls\")")
                resp = pop.stls(ssl_context(c))
                step("stls", True, f"{_text(resp)}; {pop.sock.version()}; {_cert_summary(pop.sock)}")
                try:
                    capa = pop.capa()
                except poplib.error_proto:
                    capa = {}
            sasl = [m.upper() for m in capa.get("SASL", [])]
            if c.auth == "xoauth2":
                if "XOAUTH2" not in sasl:
                    raise SourceError("auth", f"{c.host} does not offer SASL XOAUTH2 (offers: {' '.join(sasl) or 'none'})")
                step("auth", True, "SASL XOAUTH2")
                assert token is not None
                resp = pop._shortcmd("AUTH XOAUTH2 " + xoauth2(c.username, token))  # type: ignore[attr-defined]
                if not resp.startswith(b"+OK"):
                    # a "+ <base64 JSON>" challenge carries the error: answer it empty, then read the -ERR
                    pop._putcmd("")  # type: ignore[attr-defined]
                    pop._getresp()   # type: ignore[attr-defined]
                    raise poplib.error_proto(b"-ERR XOAUTH2 refused")
            else:
                step("auth", True, "USER/PASS" + (" (server also offers SASL " + " ".join(sasl) + ")" if sasl else ""))
                pop.user(c.username)
                resp = pop.pass_(c.password)
            step("login", True, f"{c.username}: {_text(resp)}")
        except poplib.error_proto as exc:
            _quietly_close(pop)
            msg = _text(exc.args[0] if exc.args else b"")
            raise SourceError("auth", f"{c.host}: login as {c.username} refused: {msg}") from None
        except SourceError:
            _quietly_close(pop)
            raise
        except (OSError, ssl.SSLError) as exc:
            _quietly_close(pop)
            raise SourceError("connect", f"{c.host}:{c.port}: {type(exc).__name__}: {exc}") from None
        return pop

    def _list(self, pop: poplib.POP3) -> tuple[dict[str, int], dict[int, int]]:
        _, lines, _ = pop.uidl()
        uids: dict[str, int] = {}
        for line in lines:
            num, _, uid = line.decode("ascii", "replace").partition(" ")
            uids[uid.strip()] = int(num)
        _, lines, _ = pop.list()
        sizes = {int(a): int(b) for a, b in (line.split()[:2] for line in lines)}
        return uids, sizes

    # ------------------------------------------------------------------ Source
    async def _token(self) -> str | None:
        if self.token is None:
            return None
        try:
            return await self.token.access_token()
        except OAuthError as exc:
            raise SourceError("token", str(exc)) from None

    async def connect(self) -> None:
        async with self._lock:
            if self._pop is None:
                token = await self._token()
                try:
                    self._pop = await self._run(self._open, token)
                except SourceError as exc:
                    if exc.kind == "auth" and self.token is not None:
                        self.token.invalidate()   # a revoked or expired token: a new one next time
                    raise
                self._uids, self._sizes = {}, {}

    async def close(self) -> None:
        """QUIT (commits this session's DELEs)."""
        async with self._lock:
            pop, self._pop = self._pop, None
            self._uids, self._sizes = {}, {}   # message numbers are valid in one session only
            if pop is not None:
                try:
                    await self._run(pop.quit)
                except (OSError, poplib.error_proto) as exc:
                    log.info("source %s: QUIT failed (%s); deletions of this session not done", self.cfg.name, exc)
                    _quietly_close(pop)

    async def _session(self) -> poplib.POP3:
        await self.connect()
        assert self._pop is not None
        return self._pop

    async def keys(self) -> list[str]:
        pop = await self._session()
        async with self._lock:
            try:
                self._uids, self._sizes = await self._run(self._list, pop)
            except (OSError, poplib.error_proto) as exc:
                self._drop()
                raise SourceError("protocol", f"UIDL: {exc}") from None
        return [f"pop3:{u}" for u in self._uids]

    def _drop(self) -> None:
        pop, self._pop = self._pop, None
        self._uids, self._sizes = {}, {}
        if pop is not None:
            _quietly_close(pop)

    async def _num(self, key: str) -> int | None:
        if not key.startswith("pop3:"):
            raise SourceError("protocol", f"not a pop3 key: {key[:40]!r}")
        await self._session()
        if not self._uids:
            await self.keys()
        return self._uids.get(key[5:])

    async def fetch(self, key: str) -> Fetched:
        num = await self._num(key)
        if num is None:
            raise SourceError("fetch", f"{key} is no longer in the maildrop", temporary=False)
        if self._sizes.get(num, 0) > MAX_MESSAGE:   # max_size is the manager's (a quarantine with its reason)
            raise SourceError("fetch", f"{key}: {self._sizes[num]} bytes (more than {MAX_MESSAGE})", temporary=False)
        pop = await self._session()
        async with self._lock:
            try:
                _, lines, _ = await self._run(pop.retr, num)
            except (OSError, poplib.error_proto) as exc:
                self._drop()
                raise SourceError("fetch", f"RETR {num}: {exc}") from None
        return Fetched(key=key, raw=b"\r\n".join(lines) + b"\r\n", folder="INBOX", received=None)

    async def settle(self, key: str, outcome: str) -> None:
        """DELE when ``delete_after_import``; it takes effect at the session's QUIT (``wait_for_new``)."""
        if not getattr(self.cfg, "delete_after_import", False):
            return
        num = await self._num(key)
        if num is None:
            return  # gone already
        pop = await self._session()
        async with self._lock:
            try:
                await self._run(pop.dele, num)
                self.deleted += 1
            except (OSError, poplib.error_proto) as exc:
                self._drop()
                raise SourceError("settle", f"DELE {num}: {exc}") from None

    async def wait_for_new(self, timeout: float) -> None:
        """POP3 has no push: end the session (QUIT commits the deletions) and sleep ``timeout``."""
        await self.close()
        await asyncio.sleep(timeout)

    async def test(self) -> list[Step]:
        c = self.cfg
        steps: list[Step] = []
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(c.host, c.port, type=socket.SOCK_STREAM)
            steps.append(Step("dns", True, f"{c.host} -> {', '.join(sorted({i[4][0] for i in infos}))}"))
        except OSError as exc:
            steps.append(Step("dns", False, f"{c.host}: {exc}"))
            return steps
        token = None
        if self.token is not None:
            try:
                token = await self.token.access_token()
                steps.append(Step("token", True, f"{c.oauth.token_url} grant={self.token.grant}: access token"
                                  f" <{len(token)} chars, masked>, expires in {self.token.expires_at - time.time():.0f}s"))
            except OAuthError as exc:
                steps.append(Step("token", False, str(exc)))
                return steps
        trace: list[Step] = []
        try:
            pop = await self._run(self._open, token, trace)
        except SourceError as exc:
            return steps + trace + [Step("login" if exc.kind == "auth" else exc.kind, False, str(exc))]
        steps += trace
        try:
            count, size = await self._run(pop.stat)
            steps.append(Step("stat", True, f"{count} messages, {size} bytes"))
            steps.append(Step("folders", True, "POP3 has no folders: " + (
                "messages are deleted after import (delete_after_import = true)"
                if getattr(c, "delete_after_import", False) else "messages are left on the server")))
        except (OSError, poplib.error_proto) as exc:
            steps.append(Step("stat", False, str(exc)))
        finally:
            try:
                await self._run(pop.quit)
            except (OSError, poplib.error_proto):
                _quietly_close(pop)
        return steps


def _quietly_close(pop: poplib.POP3) -> None:
    try:
        pop.close()
    except OSError:
        pass


__all__ = ["Pop3Source", "xoauth2"]
