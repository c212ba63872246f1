"""IMAP source on aioimaplib (asyncio: IDLE holds one connection per source, no thread per mailbox).

Keys are ``imap:<UIDVALIDITY>:<UID>`` of ``cfg.folder``: a UID is stable within one UIDVALIDITY (RFC 3501
2.3.1.1), and a new UIDVALIDITY makes new keys, which the manager matches by the SHA-256 of the bytes
against what this source already imported (docs/sources.md, "UIDVALIDITY"). Messages are read with
``BODY.PEEK[]`` (never setting \\Seen: what another client marked read is still new to us), listed with
``UID SEARCH ALL`` (or ``SINCE <date>``), and settled with ``UID MOVE`` (RFC 6851), else ``UID COPY`` +
``\\Deleted`` + ``UID EXPUNGE`` (RFC 4315) or, without UIDPLUS, leaving the copy flagged \\Deleted \\Seen.
A target folder that does not exist is created on the first ``[TRYCREATE]``.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import socket
import ssl
import time
from typing import Any

import aioimaplib

from gateway.config.sources import SourceConfig
from gateway.ingress.sources.base import FETCH_BUDGET, Fetched, SourceError, Step

log = logging.getLogger(__name__)

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS")
_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_FETCH_UID = re.compile(rb"\bUID (\d+)\b")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)\b")
IDLE_MAX = 29 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def quote(name: str) -> str:
    """An IMAP quoted string (folder names with spaces, quotes or backslashes)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_date(epoch: float) -> str:
    t = time.gmtime(epoch)
    return f"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year}"


def tls_context(cfg: SourceConfig) -> ssl.SSLContext:
    """Shared by every source with the same settings (a context holds the CA bundle: ~1.5 MB each)."""
    from gateway.runtime.httpclient import shared_ssl_context
    return shared_ssl_context(cfg.verify_cert, cfg.ca_file)


def _text(resp: Any) -> str:
    """The server's last line (its status text), printable and short."""
    lines = [bytes(x) for x in getattr(resp, "lines", []) if isinstance(x, (bytes, bytearray))]
    last = lines[-1] if lines else b""
    return last.decode("utf-8", "replace")[:200]


class ImapSource:
    """One ``[[source]]`` with ``kind = "imap"``."""

    def __init__(self, cfg: SourceConfig, token: Any = None) -> None:
        self.cfg = cfg
        self.token = token            # an OAuth token provider (H8): ``await token.access_token()``
        self.client: aioimaplib.IMAP4 | None = None
        self.uidvalidity = ""
        self.exists = 0
        self._dirty = False           # an EXISTS arrived after the last listing: skip the next IDLE
        self._created: set[str] = set()
        self.greeting = ""

    # -- connection -----------------------------------------------------------------------------------
    async def connect(self) -> None:
        await self.close()
        cfg = self.cfg
        try:
            if cfg.tls == "implicit":
                client = aioimaplib.IMAP4_SSL(cfg.host, cfg.port, timeout=cfg.timeout, ssl_context=tls_context(cfg))
            else:
                client = aioimaplib.IMAP4(cfg.host, cfg.port, timeout=cfg.timeout)
            self.client = client
            await client.wait_hello_from_server()
        except ssl.SSLError as exc:
            await self.close()
            raise SourceError("tls", f"TLS with {cfg.host}:{cfg.port} failed: {exc}") from None
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            await self.close()
            raise SourceError("connect", f"cannot connect to {cfg.host}:{cfg.port}: {_why(exc)}") from None
        if cfg.tls == "starttls":
            await self._starttls()
        await self._login()
        await self._select()

    async def _starttls(self) -> None:
        client = self._client()
        if not client.has_capability("STARTTLS"):
            raise SourceError("tls", f"{self.cfg.host} does not offer STARTTLS (tls = \"starttls\")", temporary=False)
        proto = client.protocol
        try:
            resp = await asyncio.wait_for(proto.simple_command("STARTTLS"), self.cfg.timeout)
            if resp.result != "OK":
                raise SourceError("tls", f"STARTTLS refused: {_text(resp)}")
            loop = asyncio.get_running_loop()
            transport = await asyncio.wait_for(loop.start_tls(proto.transport, proto, tls_context(self.cfg),
                                                              server_hostname=self.cfg.host), self.cfg.timeout)
            proto.transport = transport
            await asyncio.wait_for(proto.capability(), self.cfg.timeout)  # RFC 3501 6.2.1: ask again after TLS
        except ssl.SSLError as exc:
            raise SourceError("tls", f"TLS with {self.cfg.host}:{self.cfg.port} failed: {exc}") from None
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            raise SourceError("tls", f"STARTTLS failed: {_why(exc)}") from None

    async def _login(self) -> None:
        client = self._client()
        cfg = self.cfg
        try:
            if cfg.auth == "xoauth2":
                if self.token is None:
                    raise SourceError("token", "auth = \"xoauth2\" needs an OAuth token provider", temporary=False)
                token = await self.token.access_token()
                resp = await client.xoauth2(cfg.username, token)
                if resp.result == "OK":  # aioimaplib keeps the pre-login list after AUTHENTICATE: MOVE, UIDPLUS
                    await asyncio.wait_for(client.protocol.capability(), cfg.timeout)  # appear only now
            else:
                if "LOGINDISABLED" in client.protocol.capabilities:
                    raise SourceError("auth", f"{cfg.host} refuses LOGIN here (LOGINDISABLED): use TLS",
                                      temporary=False)
                resp = await client.login(cfg.username, cfg.password)
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            raise SourceError("auth", f"login failed: {_why(exc)}") from None
        if resp.result != "OK":
            if cfg.auth == "xoauth2" and self.token is not None:
                self.token.invalidate()  # expired or revoked: the next try asks the token endpoint again
            raise SourceError("auth", f"login as {cfg.username} refused: {_text(resp)}")

    async def _select(self) -> None:
        client = self._client()
        try:
            resp = await client.select(quote(self.cfg.folder))
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            raise SourceError("folder", f"SELECT {self.cfg.folder} failed: {_why(exc)}") from None
        if resp.result != "OK":
            raise SourceError("folder", f"SELECT {self.cfg.folder} refused: {_text(resp)}")
        self.uidvalidity, self.exists = "", 0
        for line in resp.lines:
            if not isinstance(line, (bytes, bytearray)):
                continue
            if m := _UIDVALIDITY.search(line):
                self.uidvalidity = m.group(1).decode()
            if m := _EXISTS.match(bytes(line)):
                self.exists = int(m.group(1))
        if not self.uidvalidity:
            raise SourceError("protocol", f"SELECT {self.cfg.folder}: the server sent no UIDVALIDITY")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if client.has_pending_idle():
                client.idle_done()
            if client.get_state() in ("AUTH", "SELECTED", "NONAUTH"):
                await asyncio.wait_for(client.logout(), 2.0)
        except Exception:  # noqa: BLE001 - closing: nothing to report
            pass
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()

    def _client(self) -> aioimaplib.IMAP4:
        if self.client is None:
            raise SourceError("connect", "not connected")
        return self.client

    def _watch(self, resp: Any) -> Any:
        """Note new mail announced in any response (an untagged EXISTS), so the next wait does not idle."""
        for line in getattr(resp, "lines", ()):
            if isinstance(line, (bytes, bytearray)) and (m := _EXISTS.match(bytes(line))):
                n = int(m.group(1))
                if n > self.exists:
                    self._dirty = True
                self.exists = n
        return resp

    # -- the interface ------------------------------------------------------------------------------------
    async def keys(self) -> list[str]:
        client = self._client()
        criteria = ("SINCE", imap_date(self.cfg.since)) if self.cfg.since else ("ALL",)
        try:
            resp = self._watch(await client.uid_search(*criteria, charset=None))
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            raise SourceError("protocol", f"UID SEARCH failed: {_why(exc)}") from None
        if resp.result != "OK":
            raise SourceError("protocol", f"UID SEARCH refused: {_text(resp)}")
        self._dirty = False
        return [f"imap:{self.uidvalidity}:{u}" for u in _search_uids(resp)]

    def _uid(self, key: str) -> str:
        kind, validity, uid = key.split(":", 2)
        if kind != "imap" or not uid.isdigit():
            raise SourceError("protocol", f"not an IMAP key: {key!r}", temporary=False)
        if validity != self.uidvalidity:
            raise SourceError("uidvalidity", f"{key}: the folder's UIDVALIDITY is now {self.uidvalidity}")
        return uid

    async def fetch(self, key: str) -> Fetched:
        uid = self._uid(key)
        client = self._client()
        try:
            resp = self._watch(await client.uid("fetch", uid, "(UID INTERNALDATE BODY.PEEK[])"))
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            raise SourceError("protocol", f"UID FETCH {uid} failed: {_why(exc)}") from None
        if resp.result != "OK":
            raise SourceError("fetch", f"UID FETCH {uid} refused: {_text(resp)}")
        raw: bytes | None = None
        received = None
        lines = resp.lines
        for i, line in enumerate(lines):
            if isinstance(line, bytes) and b"FETCH" in line and (m := _FETCH_UID.search(line)) and m.group(1) == uid.encode():
                if (d := _INTERNALDATE.search(line)) is not None:
                    received = _internaldate(d.group(1).decode("ascii", "replace"))
                if i + 1 < len(lines) and isinstance(lines[i + 1], bytearray):
                    raw = bytes(lines[i + 1])
                break
        if raw is None:
            raise SourceError("fetch", f"UID {uid} is gone from {self.cfg.folder} (or the server sent no body)")
        return Fetched(key=key, raw=raw, folder=self.cfg.folder, received=received)

    async def fetch_many(self, keys: list[str]) -> dict[str, Fetched | SourceError]:
        """One ``UID FETCH`` for many messages (a round trip per message made an initial sync wait on the
        network): their sizes first, then the bodies of a prefix within FETCH_BUDGET bytes."""
        uids = [self._uid(k) for k in keys]
        client = self._client()
        try:
            sizes: dict[str, int] = {}
            resp = self._watch(await client.uid("fetch", ",".join(uids), "(UID RFC822.SIZE)"))
            if resp.result != "OK":
                raise SourceError("fetch", f"UID FETCH (RFC822.SIZE) refused: {_text(resp)}")
            for line in resp.lines:
                if isinstance(line, bytes) and (u := _FETCH_UID.search(line)) and (z := _SIZE.search(line)):
                    sizes[u.group(1).decode()] = int(z.group(1))
            take, total = [], 0
            for uid in uids:
                take.append(uid)
                total += sizes.get(uid, 0)
                if total >= FETCH_BUDGET:
                    break
            resp = self._watch(await client.uid("fetch", ",".join(take), "(UID INTERNALDATE BODY.PEEK[])"))
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            raise SourceError("protocol", f"UID FETCH of {len(uids)} failed: {_why(exc)}") from None
        if resp.result != "OK":
            raise SourceError("fetch", f"UID FETCH of {len(uids)} refused: {_text(resp)}")
        got: dict[str, tuple[bytes, float | None]] = {}
        lines = resp.lines
        for i, line in enumerate(lines):
            if isinstance(line, bytes) and b"FETCH" in line and (m := _FETCH_UID.search(line)) \
                    and i + 1 < len(lines) and isinstance(lines[i + 1], bytearray):
                d = _INTERNALDATE.search(line)
                got[m.group(1).decode()] = (bytes(lines[i + 1]),
                                            _internaldate(d.group(1).decode("ascii", "replace")) if d else None)
        out: dict[str, Fetched | SourceError] = {}
        for key, uid in zip(keys, take):
            if uid in got:
                out[key] = Fetched(key=key, raw=got[uid][0], folder=self.cfg.folder, received=got[uid][1])
            else:
                out[key] = SourceError("fetch", f"UID {uid} is gone from {self.cfg.folder} (or the server sent"
                                                " no body)")
        return out

    async def settle_many(self, keys: list[str], outcome: str) -> None:
        """One ``UID MOVE`` (or STORE) for many messages with the same outcome: a Maildir move costs
        Dovecot about 6 ms one by one and 0.05 ms per message in a set. Keys of an older UIDVALIDITY are
        done already (their messages have new keys)."""
        uids = [k.split(":", 2)[2] for k in keys if k.split(":", 2)[1] == self.uidvalidity]
        for i in range(0, len(uids), 500):
            await self.settle_uids(uids[i:i + 500], outcome)

    async def settle_uids(self, uids: list[str], outcome: str) -> None:
        uid = ",".join(uids)
        target = self.cfg.target(outcome)
        client = self._client()
        try:
            if not target:
                resp = self._watch(await client.uid("store", uid, "+FLAGS.SILENT", r"(\Seen)"))
                if resp.result != "OK":
                    raise SourceError("settle", f"UID STORE {uid[:60]} \\Seen refused: {_text(resp)}")
                return
            await self._move(client, uid, target)
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            raise SourceError("settle", f"moving UID {uid[:60]} to {target!r} failed: {_why(exc)}") from None

    async def settle(self, key: str, outcome: str) -> None:
        await self.settle_uids([self._uid(key)], outcome)

    async def _move(self, client: aioimaplib.IMAP4, uid: str, target: str) -> None:
        for attempt in (1, 2):
            if client.has_capability("MOVE"):
                resp = self._watch(await client.uid("move", uid, quote(target)))
            else:
                resp = self._watch(await client.uid("copy", uid, quote(target)))
            if resp.result == "OK":
                break
            if attempt == 1 and (b"TRYCREATE" in b" ".join(bytes(x) for x in resp.lines if isinstance(x, (bytes, bytearray)))
                                 or target not in self._created):
                await self.ensure_folder(target)
                continue
            raise SourceError("settle", f"moving UID {uid[:60]} to {target!r} refused: {_text(resp)}")
        if client.has_capability("MOVE"):
            return
        resp = self._watch(await client.uid("store", uid, "+FLAGS.SILENT", r"(\Deleted \Seen)"))
        if resp.result != "OK":
            raise SourceError("settle", f"UID STORE {uid} \\Deleted refused: {_text(resp)}")
        if client.has_capability("UIDPLUS"):
            await client.uid("expunge", uid)

    async def ensure_folder(self, name: str) -> bool:
        """Create ``name`` unless it exists; True when it was created."""
        client = self._client()
        resp = await client.create(quote(name))
        self._created.add(name)
        if resp.result == "OK":
            log.info("source %s: created folder %r", self.cfg.name, name)
            return True
        if b"ALREADYEXISTS" in b" ".join(bytes(x) for x in resp.lines if isinstance(x, (bytes, bytearray))) \
                or "exists" in _text(resp).lower():
            return False
        raise SourceError("folder", f"CREATE {name!r} refused: {_text(resp)}")

    async def wait_for_new(self, timeout: float) -> None:
        client = self.client
        if self._dirty or client is None:
            self._dirty = False
            if client is None:
                await asyncio.sleep(timeout)
            return
        if not (self.cfg.idle and client.has_capability("IDLE")):
            await asyncio.sleep(timeout)
            return
        try:
            idle = await client.idle_start(timeout=min(timeout, IDLE_MAX))
            while True:
                push = await client.wait_server_push(timeout=min(timeout, IDLE_MAX) + 5)
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(_EXISTS.match(bytes(x)) for x in (push if isinstance(push, list) else [push])
                       if isinstance(x, (bytes, bytearray))):
                    break
            client.idle_done()
            await asyncio.wait_for(idle, self.cfg.timeout)
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            await self.close()
            raise SourceError("protocol", f"IDLE failed: {_why(exc)}") from None
        except asyncio.CancelledError:
            await self.close()  # in the middle of IDLE: the connection is not reusable
            raise

    # -- `source test` --------------------------------------------------------------------------------
    async def test(self) -> list[Step]:
        cfg = self.cfg
        steps: list[Step] = []
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM), cfg.timeout)
            addrs = sorted({i[4][0] for i in infos})
            steps.append(Step("dns", True, f"{cfg.host} -> {', '.join(addrs)}"))
        except (OSError, asyncio.TimeoutError) as exc:
            steps.append(Step("dns", False, f"{cfg.host}: {_why(exc)}"))
            return steps
        try:
            t0 = time.monotonic()
            reader, writer = await asyncio.wait_for(asyncio.open_connection(cfg.host, cfg.port), cfg.timeout)
            peer = writer.get_extra_info("peername")
            writer.close()
            steps.append(Step("tcp", True, f"connected to {peer[0]}:{peer[1]} in {1000 * (time.monotonic() - t0):.0f} ms"))
        except (OSError, asyncio.TimeoutError) as exc:
            steps.append(Step("tcp", False, f"{cfg.host}:{cfg.port}: {_why(exc)}"))
            return steps
        try:
            if cfg.tls == "implicit":
                client = aioimaplib.IMAP4_SSL(cfg.host, cfg.port, timeout=cfg.timeout, ssl_context=tls_context(cfg))
            else:
                client = aioimaplib.IMAP4(cfg.host, cfg.port, timeout=cfg.timeout)
            self.client = client
            await client.wait_hello_from_server()
            if cfg.tls == "implicit":
                steps.append(Step("tls", True, _tls_detail(client.protocol.transport, cfg)))
            caps = " ".join(sorted(client.protocol.capabilities))
            steps.append(Step("greeting", True, f"IMAP server ready; capabilities: {caps[:300]}"))
            if cfg.tls == "starttls":
                await self._starttls()
                steps.append(Step("tls", True, "STARTTLS: " + _tls_detail(client.protocol.transport, cfg)))
            elif cfg.tls == "none":
                steps.append(Step("tls", True, "none (tls = \"none\": a loopback server only)"))
            mechs = sorted(c[5:] for c in client.protocol.capabilities if c.upper().startswith("AUTH="))
            wanted = "XOAUTH2" if cfg.auth == "xoauth2" else "LOGIN"
            ok = cfg.auth != "xoauth2" or "XOAUTH2" in mechs
            steps.append(Step("auth-mechanisms", ok, f"offered: {', '.join(mechs) or '(none advertised)'}; using {wanted}"))
            if not ok:
                return steps
            await self._login()
            secret = "token ****" if cfg.auth == "xoauth2" else "password ****"
            steps.append(Step("login", True, f"logged in as {cfg.username} ({secret})"))
            await self._select()
            unseen = await client.uid_search("UNSEEN", charset=None)
            n_unseen = len(_search_uids(unseen))
            steps.append(Step("folder", True, f"SELECT {cfg.folder}: {self.exists} messages, {n_unseen} unseen,"
                                              f" UIDVALIDITY {self.uidvalidity}"))
            listing = await client.list('""', "*")
            have = {_list_name(bytes(x)) for x in listing.lines if isinstance(x, (bytes, bytearray))
                    and bytes(x).startswith(b"(")}
            for label, name in (("success_folder", cfg.success_folder), ("failure_folder", cfg.failure_folder),
                                ("exclusion_folder", cfg.exclusion_folder)):
                if not name:
                    steps.append(Step(label, True, "\"\": messages stay in the folder, flagged \\Seen"))
                elif name in have:
                    steps.append(Step(label, True, f"{name!r} exists"))
                else:
                    created = await self.ensure_folder(name)
                    steps.append(Step(label, True, f"{name!r} " + ("created" if created else "exists")))
        except SourceError as exc:
            steps.append(Step(exc.kind, False, str(exc)))
        except ssl.SSLError as exc:
            steps.append(Step("tls", False, f"TLS with {cfg.host}:{cfg.port} failed: {exc}"))
        except (OSError, asyncio.TimeoutError, aioimaplib.AioImapException) as exc:
            steps.append(Step("protocol", False, _why(exc)))
        finally:
            await self.close()
        return steps


def _search_uids(resp: Any) -> list[int]:
    """The numbers of a SEARCH answer (aioimaplib hands the untagged line over without its name)."""
    uids: set[int] = set()
    for line in resp.lines[:-1]:  # the last line is the tagged status
        if not isinstance(line, (bytes, bytearray)) or b"EXISTS" in line or b"RECENT" in line or b"EXPUNGE" in line:
            continue
        words = bytes(line).split()
        if words and words[0] == b"SEARCH":
            words = words[1:]
        if words and all(w.isdigit() for w in words):
            uids.update(int(w) for w in words)
    return sorted(uids)


def _list_name(line: bytes) -> str:
    """The mailbox name of a LIST response line ``(\\flags) "/" name``."""
    m = re.match(rb'^\([^)]*\) (?:"[^"]*"|NIL) (.*)$', line)
    if not m:
        return ""
    name = m.group(1).strip()
    if name.startswith(b'"') and name.endswith(b'"'):
        name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    return name.decode("utf-8", "replace")


def _tls_detail(transport: Any, cfg: SourceConfig) -> str:
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return "no TLS session"
    cert = transport.get_extra_info("peercert") or {}
    subject = ", ".join("=".join(x) for rdn in cert.get("subject", ()) for x in rdn)
    issuer = ", ".join("=".join(x) for rdn in cert.get("issuer", ()) for x in rdn)
    verified = "verified" if cfg.verify_cert else "NOT verified (verify_cert = false)"
    return (f"{sslobj.version()} {sslobj.cipher()[0]}; certificate {subject or '(not read)'} issued by"
            f" {issuer or '(not read)'}, valid until {cert.get('notAfter', '?')}; {verified}")


def _internaldate(text: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(text.replace("-", " ", 2)).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
