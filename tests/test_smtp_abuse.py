"""Issue 25 (parts 1, 3, 6, 8): a hostile client cannot hold slots, memory or the session, and odd
bytes get clean answers. Real sockets on 127.0.0.0/8 (a source address per "client"), small timeouts
so every test ends in seconds."""
from __future__ import annotations

import asyncio
import logging
import ssl
import time

import aiosmtplib
import pytest
import trustme

from gateway.smtp.checks import CheckResult, DataContext
from gateway.runtime.logsetup import JsonFormatter, TextFormatter, escape_controls

from .conftest import queued_id, simple_message

TXN = b"MAIL FROM:<a@customer.test>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n"
OK_MSG = b"From: a@customer.test\r\nSubject: ok\r\n\r\nok\r\n.\r\n"


class Raw:
    """A byte-exact SMTP client (client libraries rewrite line endings; an attacker does not)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1", ehlo: bool = True) -> "Raw":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        raw = cls(reader, writer)
        raw.greeting = await raw.reply()
        if ehlo and raw.greeting.startswith(b"220"):
            await raw.cmd(b"EHLO c.test")
        return raw

    async def reply(self, timeout: float = 10) -> bytes:
        """One whole reply (the last line of a multi-line one); b"" when the server closed."""
        while True:
            try:
                line = await asyncio.wait_for(self.reader.readline(), timeout)
            except ConnectionResetError:  # closed with our pipelined commands unread: a reset
                return b""
            if not line or line[3:4] != b"-":
                return line

    async def cmd(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def closed(self, timeout: float = 10) -> bool:
        """The server closed the connection: EOF, or a reset (the server closing with a line of ours
        still unread, e.g. a NOOP that crossed its 421, makes the kernel send RST instead of FIN)."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout) == b""
        except ConnectionResetError:
            return True
        except (ConnectionError, asyncio.TimeoutError):
            return False

    def close(self) -> None:
        self.writer.close()


# -- part 1: slots cannot be held forever ----------------------------------------------------------------
async def test_data_below_the_minimum_rate_is_cut_and_a_fast_client_is_not(start_gateway):
    gw = await start_gateway(smtp={"data_min_rate": 2000, "data_rate_grace": "1s", "idle_timeout": "30s"})
    slow = await Raw.open(gw.port)
    for line in TXN.split(b"\r\n")[:3]:
        await slow.cmd(line)  # 354 for DATA
    started = time.monotonic()
    fast = await Raw.open(gw.port, "127.0.0.2")
    body = b"From: a@customer.test\r\nSubject: fast\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200  # 200 KB
    fast.writer.write(TXN)
    for _ in range(3):
        await fast.reply()
    fast.writer.write(body + b".\r\n")
    assert (await fast.reply()).startswith(b"250 2.0.0")  # 200 KB in well under a second: fine

    async def trickle() -> bytes:
        while True:  # one byte every 200 ms: 5 B/s, far below 2000 B/s
            slow.writer.write(b"x")
            await slow.writer.drain()
            try:
                return await asyncio.wait_for(slow.reader.readline(), 0.2)
            except asyncio.TimeoutError:
                continue

    line = await asyncio.wait_for(trickle(), 10)
    elapsed = time.monotonic() - started
    assert line.startswith(b"421 4.4.2") and b"too slowly" in line, line
    assert 0.9 < elapsed < 3.0, elapsed  # the grace, then a few bytes' credit
    assert await slow.closed()
    fast.close()


async def test_noop_and_rset_do_not_keep_an_idle_session_open(start_gateway):
    gw = await start_gateway(smtp={"idle_timeout": "1s"})
    c = await Raw.open(gw.port)
    started = time.monotonic()
    line = b""
    for _ in range(20):  # a NOOP or RSET every 250 ms would have kept it forever
        c.writer.write(b"NOOP\r\n" if _ % 2 else b"RSET\r\n")
        line = await c.reply()
        if not line.startswith(b"250"):
            break
        await asyncio.sleep(0.25)
    assert line.startswith(b"421 4.4.2 Idle timeout"), line
    assert time.monotonic() - started < 2.0
    assert await c.closed()


async def test_transaction_deadline(start_gateway):
    gw = await start_gateway(smtp={"transaction_timeout": "1s", "idle_timeout": "10s"})
    c = await Raw.open(gw.port)
    assert (await c.cmd(b"MAIL FROM:<a@customer.test>")).startswith(b"250")
    started = time.monotonic()
    line = b""
    for _ in range(20):  # valid recipients every 200 ms: progress for the idle timer, not for the deadline
        line = await c.cmd(b"RCPT TO:<support@example.test>")
        if line.startswith(b"421"):
            break
        await asyncio.sleep(0.2)
    assert line.startswith(b"421 4.4.2 Transaction took too long"), line
    assert time.monotonic() - started < 2.0
    assert await c.closed()


async def test_session_deadline_and_transactions_that_finish_reset_the_transaction_deadline(start_gateway):
    gw = await start_gateway(smtp={"session_timeout": "1.5s", "transaction_timeout": "400ms"})
    c = await Raw.open(gw.port)
    started = time.monotonic()
    accepted = 0
    line = b""
    while time.monotonic() - started < 5:
        c.writer.write(TXN + OK_MSG)
        replies = [await c.reply() for _ in range(4)]
        line = replies[-1]
        if not line.startswith(b"250 2.0.0"):
            line = next(r for r in replies if not r.startswith((b"250", b"354")))
            break
        accepted += 1
        await asyncio.sleep(0.2)  # 0.2 s between transactions: each well inside transaction_timeout
    assert accepted >= 3  # the 400 ms transaction deadline starts again with every MAIL
    assert line.startswith(b"421 4.4.2 Session lasted too long"), line
    assert 1.4 < time.monotonic() - started < 2.5


@pytest.mark.parametrize("key, text", [("session_timeout", b"Session lasted"),
                                       ("transaction_timeout", b"Transaction took")])
async def test_deadlines_hold_inside_data_with_the_rate_check_off(start_gateway, key, text):
    gw = await start_gateway(smtp={key: "1s", "data_min_rate": 0, "idle_timeout": "30s"})
    c = await Raw.open(gw.port)
    c.writer.write(TXN)
    assert [(await c.reply())[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    started = time.monotonic()
    line = b""
    while time.monotonic() - started < 5:
        c.writer.write(b"x")  # a byte every 100 ms: activity for the idle timer
        try:
            line = await asyncio.wait_for(c.reader.readline(), 0.1)
            break
        except asyncio.TimeoutError:
            pass
    assert line.startswith(b"421 4.4.2 " + text), line
    assert time.monotonic() - started < 2.0


async def test_junk_commands_and_errors_end_the_session(start_gateway):
    gw = await start_gateway(smtp={"junk_command_limit": 5, "hard_error_limit": 3})
    c = await Raw.open(gw.port)
    c.writer.write(b"RSET\r\nNOOP\r\n" * 5000)  # 10,000 pipelined junk commands
    lines = []
    while True:
        line = await c.reply()
        if not line:
            break
        lines.append(line)
    # 5 junk commands are free, each one after counts as an error: the third ends the session with
    # 421 4.7.0 instead of its answer, and nothing more is read
    assert [ln[:3] for ln in lines] == [b"250"] * 7 + [b"421"], lines
    assert lines[-1].startswith(b"421 4.7.0 Too many errors")

    c = await Raw.open(gw.port)
    c.writer.write(b"MAIL FROM:<\r\n" * 100)
    lines = [await c.reply() for _ in range(4)]
    assert [ln[:9] for ln in lines] == [b"501 5.1.7"] * 3 + [b"421 4.7.0"], lines
    assert await c.closed()


async def test_pipelined_junk_costs_the_same_whatever_its_length(start_gateway):
    """After the 421 the rest of what the client pipelined is dropped, not answered into a closed socket:
    the CPU for 20,000 pipelined junk commands is about that for 200 (it grew linearly before)."""
    gw = await start_gateway(smtp={"junk_command_limit": 20, "hard_error_limit": 5})

    async def flood(n: int) -> float:
        t0 = time.process_time()  # the gateway runs in this process: its CPU is counted here
        for _ in range(5):
            c = await Raw.open(gw.port)
            c.writer.write(b"NOOP\r\n" * n)
            while await c.reply():
                pass
            c.close()
        return time.process_time() - t0

    await flood(200)  # warm up
    small, big = await flood(200), await flood(20_000)
    assert big < 5 * small + 0.05, (small, big)


async def test_an_accepted_message_resets_the_error_count(start_gateway):
    gw = await start_gateway(smtp={"hard_error_limit": 3})
    c = await Raw.open(gw.port)
    for _ in range(4):  # two errors, then a message: never three in a row without one
        assert (await c.cmd(b"RCPT TO:<nobody@example.test>")).startswith(b"503")
        assert (await c.cmd(b"VRFY")).startswith(b"501")
        c.writer.write(TXN + OK_MSG)
        assert [(await c.reply())[:3] for _ in range(4)] == [b"250", b"250", b"354", b"250"]
    assert (await c.cmd(b"QUIT")).startswith(b"221")


async def test_reserved_slots_stay_free_for_fresh_addresses(start_gateway):
    """One address (127.0.0.2) takes every slot it can; fresh addresses still get a session."""
    gw = await start_gateway(smtp={"max_sessions": 10, "max_sessions_per_ip": 10, "reserved_sessions": "40%",
                                   "reserved_sessions_per_ip": 1})
    hog = []
    for _ in range(8):
        c = await Raw.open(gw.port, "127.0.0.2", ehlo=False)
        if not c.greeting.startswith(b"220"):
            refused = c.greeting
            c.close()
            break
        hog.append(c)
    assert len(hog) == 6 and refused.startswith(b"421 4.7.0"), (len(hog), refused)  # 10 - 4 reserved
    fresh = [await Raw.open(gw.port, f"127.0.0.{3 + i}", ehlo=False) for i in range(5)]
    assert [c.greeting[:3] for c in fresh] == [b"220"] * 4 + [b"421"]  # the 4 reserved, then full
    assert fresh[-1].greeting.startswith(b"421 4.3.2")
    for c in hog + fresh:
        c.close()


def test_reserved_sessions_config_is_validated(tmp_path):
    from gateway.config.errors import ConfigErrors

    from .conftest import make_config
    assert make_config(tmp_path, smtp={"max_sessions": 50}).smtp.reserved_sessions == 5  # 10% by default
    assert make_config(tmp_path, smtp={"reserved_sessions": 7}).smtp.reserved_sessions == 7
    for smtp, key in (({"max_sessions": 10, "reserved_sessions": 10}, "smtp.reserved_sessions"),
                      ({"reserved_sessions": "120%"}, "smtp.reserved_sessions"),
                      ({"data_min_rate": "fast"}, "smtp.data_min_rate"),
                      ({"session_timeout": 0}, "smtp.session_timeout"),
                      ({"hard_error_limit": 0}, "smtp.hard_error_limit"),
                      ({"max_header_size": "1KiB"}, "smtp.max_header_size")):
        with pytest.raises(ConfigErrors) as exc:
            make_config(tmp_path, smtp=smtp)
        assert key in str(exc.value), (smtp, str(exc.value))
    assert make_config(tmp_path, smtp={"data_min_rate": "2KiB/s"}).smtp.data_min_rate == 2048


async def test_slowloris_from_a_few_addresses_leaves_slots_for_fresh_clients(start_gateway):
    """The issue's pattern, scaled down: 3 addresses each hold their per-address share of slots in DATA,
    trickling bytes. Fresh clients get 220 at once (the reserve), and the tricklers are cut after the
    grace, so every slot is free again."""
    gw = await start_gateway(smtp={"max_sessions": 40, "max_sessions_per_ip": 12, "data_min_rate": 1000,
                                   "data_rate_grace": "1s", "idle_timeout": "60s"})
    tricklers = []
    for a in range(3):
        for _ in range(12):
            c = await Raw.open(gw.port, f"127.0.1.{a + 1}", ehlo=False)
            if c.greeting.startswith(b"220"):
                c.writer.write(b"EHLO x\r\n" + TXN)
                tricklers.append(c)
            else:
                c.close()
    assert len(tricklers) == 36
    fresh = [await Raw.open(gw.port, f"127.0.2.{i + 1}", ehlo=False) for i in range(4)]
    assert all(c.greeting.startswith(b"220") for c in fresh), [c.greeting for c in fresh]
    for c in fresh:
        c.close()

    async def trickle(c: Raw) -> bytes:
        while True:
            c.writer.write(b"y")
            try:
                line = await asyncio.wait_for(c.reader.readline(), 0.3)
            except asyncio.TimeoutError:
                continue
            if line.startswith(b"421") or not line:
                return line

    ends = await asyncio.wait_for(asyncio.gather(*(trickle(c) for c in tricklers)), 10)
    assert all(e.startswith(b"421 4.4.2") for e in ends), set(ends)
    await asyncio.sleep(0.2)
    late = [await Raw.open(gw.port, "127.0.1.1", ehlo=False) for _ in range(12)]
    assert all(c.greeting.startswith(b"220") for c in late)  # the hog's slots are back
    for c in tricklers + late:
        c.close()


# -- part 3: a header section without end is never held whole ---------------------------------------------
async def test_a_header_section_over_the_limit_is_refused_and_the_session_goes_on(start_gateway):
    gw = await start_gateway(smtp={"max_header_size": "32KiB", "spill_threshold": "64KiB",
                                   "max_message_size": "10MiB"})
    c = await Raw.open(gw.port)
    no_blank = b"From: a@customer.test\r\n" + b"X-Filler: " + b"z" * 70 + b"\r\n" * 0
    no_blank += b"".join(b"X-F%d: %s\r\n" % (i, b"z" * 70) for i in range(60000))  # ~5 MB, no empty line
    c.writer.write(TXN + no_blank + b".\r\n")
    replies = [await c.reply() for _ in range(4)]
    assert replies[-1].startswith(b"552 5.6.0"), replies
    # a header section that ends, but after 32 KiB: refused too, in memory (small message) or spilled
    long_head = b"From: a@customer.test\r\n" + b"".join(b"X-F%d: %s\r\n" % (i, b"z" * 70) for i in range(500))
    for tail in (b"\r\nshort\r\n", b"\r\n" + (b"b" * 998 + b"\r\n") * 100):
        c.writer.write(TXN + long_head + tail + b".\r\n")
        replies = [await c.reply() for _ in range(4)]
        assert replies[-1].startswith(b"552 5.6.0"), replies
    # a message without an empty line but under the limit is fine (RFC 5322: the body is optional)
    c.writer.write(TXN + b"From: a@customer.test\r\nSubject: no body\r\n.\r\n")
    replies = [await c.reply() for _ in range(4)]
    assert replies[-1].startswith(b"250 2.0.0"), replies
    # and a large message with a header section under the limit spills and is accepted
    big = b"From: a@customer.test\r\nSubject: big\r\n\r\n" + (b"b" * 998 + b"\r\n") * 2000
    c.writer.write(TXN + big + b".\r\n")
    replies = [await c.reply() for _ in range(4)]
    assert replies[-1].startswith(b"250 2.0.0"), replies
    entry = await gw.store.spool_get(queued_id(replies[-1].decode()))
    assert entry.size > 2_000_000


# -- part 6: an error in DATA handling does not break the connection --------------------------------------
class _Exploding:
    """A DATA check (the extension point the gateway's own checks use) that fails like a bug would."""

    name = "exploding"

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, ctx: DataContext) -> CheckResult:
        self.calls += 1
        if b"explode" in ctx.raw:
            def deep(n: int) -> int:
                return deep(n + 1) + 1
            deep(0)  # RecursionError, a thousand frames deep
        return CheckResult()


async def test_an_exception_in_data_resets_the_envelope_and_logs_a_bounded_traceback(start_gateway, caplog):
    gw = await start_gateway()
    check = _Exploding()
    gw.gw.listener.handler.checks.insert(0, check)
    c = await Raw.open(gw.port)
    caplog.set_level(logging.ERROR, logger="gateway.smtpd")
    c.writer.write(TXN + b"From: a@customer.test\r\nSubject: explode\r\n\r\nx\r\n.\r\n")
    replies = [await c.reply() for _ in range(4)]
    assert replies[-1].startswith(b"451 4.3.0"), replies
    c.writer.write(TXN + OK_MSG)  # the next MAIL on the same connection: a new transaction
    replies = [await c.reply() for _ in range(4)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"354", b"250"], replies
    records = [r for r in caplog.records if "SMTP session error" in r.getMessage()]
    assert len(records) == 1 and "RecursionError" in records[0].getMessage()
    assert records[0].getMessage().count("\n") < 60  # not a thousand lines
    assert check.calls == 2


async def test_a_from_with_a_thousand_groups_gets_a_clean_answer(start_gateway, caplog):
    gw = await start_gateway()
    c = await Raw.open(gw.port)
    evil = b"From: " + b"a:" * 1000 + b"x@customer.test\r\nSubject: groups\r\n\r\nx\r\n.\r\n"
    caplog.set_level(logging.ERROR)
    for _ in range(3):
        c.writer.write(TXN + evil)
        replies = [await c.reply() for _ in range(4)]
        assert replies[-1].startswith(b"550 5.7.1"), replies  # [auth] malformed_from = "reject"
    c.writer.write(TXN + OK_MSG)
    assert [(await c.reply())[:3] for _ in range(4)] == [b"250", b"250", b"354", b"250"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_from_with_a_thousand_groups_is_quarantined_when_accepted(start_gateway):
    gw = await start_gateway(auth={"malformed_from": "tag"})
    c = await Raw.open(gw.port)
    c.writer.write(TXN + b"From: " + b"a:" * 1000 + b"x@customer.test\r\nSubject: g\r\n\r\nx\r\n.\r\n")
    replies = [await c.reply() for _ in range(4)]
    assert replies[-1].startswith(b"250 2.0.0"), replies
    e = await gw.wait_done(queued_id(replies[-1].decode()))
    # the length bound (1,000 characters) catches it before the group count does: both say why
    assert e.state == "quarantined" and "cannot be read" in e.reason, (e.state, e.reason)
    assert "too long to read" in e.reason or "too complex" in e.reason, e.reason


# -- part 8: syntax and control bytes ---------------------------------------------------------------------
@pytest.mark.parametrize("line, expect", [
    (b"MAIL FROM:<", b"501 5.1.7"),
    (b"MAIL FROM:<a\x00b@customer.test>", b"501 5.1.7"),
    (b"MAIL FROM:<a@customer.test>\x00", b"501 5.1.7"),
    (b"MAIL FROM:<a\rb@customer.test>", b"501 5.1.7"),
    (b"HELO", b"501 5.5."),
    (b"EHLO", b"501 5.5."),
    (b"HELO a\rb.test", b"501 5.5.2"),
    (b"EHLO a\x00b.test", b"501 5.5.2"),
    (b"HELO a\x1b[2Jb", b"501 5.5.2"),
])
async def test_bad_arguments_get_syntax_errors(gateway, caplog, line, expect):
    caplog.set_level(logging.ERROR)
    c = await Raw.open(gateway.port)
    assert (await c.cmd(line)).startswith(expect)
    if line.startswith(b"MAIL"):
        assert (await c.cmd(b"MAIL FROM:<a@customer.test>")).startswith(b"250 2.1.0")  # no transaction began
        for rcpt in (b"RCPT TO:<", b"RCPT TO:<support\x00@example.test>", b"RCPT TO:<sup\rport@example.test>"):
            assert (await c.cmd(rcpt)).startswith(b"501 5.1.3"), rcpt
    assert (await c.cmd(b"QUIT")).startswith(b"221")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback either


async def test_nothing_with_control_bytes_is_stored(gateway):
    c = await Raw.open(gateway.port, ehlo=False)
    assert (await c.cmd(b"EHLO evil\r.test")).startswith(b"501")
    assert (await c.cmd(b"EHLO good.test")).startswith(b"250")
    c.writer.write(TXN + OK_MSG)
    replies = [await c.reply() for _ in range(4)]
    entry = await gateway.store.spool_get(queued_id(replies[-1].decode()))
    assert entry.helo == "good.test" and entry.mail_from == "a@customer.test"


async def test_starttls_inside_tls_is_503(start_gateway, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("mx.example.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "key.pem").chmod(0o600)  # a secret file others can read is refused (docs/security.md)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    gw = await start_gateway(smtp={"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")})
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=10, start_tls=False, tls_context=ctx)
    await client.connect()
    await client.ehlo(hostname="c.test")
    await client.starttls(server_hostname="mx.example.test")
    await client.ehlo(hostname="c.test")
    resp = await client.execute_command(b"STARTTLS")
    assert resp.code == 503 and resp.message.startswith("5.5.1"), resp
    _e, text = await client.sendmail("a@customer.test", ["support@example.test"], simple_message())
    assert "queued as" in text  # the session goes on, still encrypted
    await client.quit()


async def test_client_control_bytes_are_escaped_in_the_log(gateway, caplog):
    caplog.set_level(logging.INFO)
    c = await Raw.open(gateway.port)
    await c.cmd(b"X\x1b[2J\x07CMD")  # an unknown command: aiosmtpd logs it at WARNING
    await c.cmd(b"QUIT")
    recs = [r for r in caplog.records if "\x1b" in r.getMessage()]
    assert recs, [r.getMessage() for r in caplog.records]
    for fmt in (TextFormatter(), JsonFormatter()):
        out = fmt.format(recs[0])
        assert "\x1b" not in out and "\x07" not in out
        assert "\\x1b[2J" in out or "\\\\x1b[2J" in out
    assert escape_controls("line1\nline2\ttab\r\x00\udcff") == "line1\nline2\ttab\\x0d\\x00\\xff"


# -- part 8: SQLite's ROLLBACK must not hide "disk is full" ---------------------------------------------
async def test_sqlite_full_reports_the_real_error_and_the_store_goes_on(tmp_path, caplog):
    import sqlite3

    from gateway.store.sqlite import SqliteStore
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    try:
        pages = (await store.query("PRAGMA page_count"))[0][0]
        await store.transaction(lambda conn: conn.execute(f"PRAGMA max_page_count={pages + 2}"))
        await store.transaction(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS filler(b BLOB)"))

        def fill(conn: sqlite3.Connection) -> None:
            for _ in range(50):
                conn.execute("INSERT INTO filler VALUES (?)", (b"x" * 100_000,))

        caplog.set_level(logging.WARNING)
        with pytest.raises(sqlite3.OperationalError) as exc:
            await store.transaction(fill)
        assert "full" in str(exc.value), exc.value  # not "cannot rollback - no transaction is active"
        # the connection is usable again: no transaction left open
        await store.transaction(lambda conn: conn.execute(f"PRAGMA max_page_count={pages + 10000}"))
        await store.transaction(fill)
        assert (await store.query("SELECT count(*) FROM filler"))[0][0] == 50
    finally:
        await store.close()
