"""rspamd integration: the HTTP client against a local test server, and a live rspamd (Debian's package)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.smtp.checks import CONTINUE as CHECK_CONTINUE
from gateway.smtp.checks import DEFER, REJECT, DataContext, header_end
from gateway.config.errors import ConfigError
from gateway.smtp.rspamd_check import build_data_checks
from gateway.config.pipeline import RspamdPolicy, parse_pipeline_policy
from gateway.pipeline.stages.rspamd import RspamdClient, RspamdError, RspamdStage, decide, parse_url
from gateway.smtp.rspamd_check import RspamdCheck
from gateway.pipeline.stages.core import CONTINUE, DROP, QUARANTINE

from .helpers import MAILBOXES, context, inbound, message

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> tuple[list[str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[:-2]
    length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
    return lines, await reader.readexactly(length)


def _reply(doc: dict, *, status: str = "200 OK", chunked: bool = False) -> bytes:
    body = json.dumps(doc).encode()
    if chunked:
        half = len(body) // 2
        chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:half], body[half:]))
        return (f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body


def test_parse_url() -> None:
    assert parse_url("http://127.0.0.1:11333") == ("http", "127.0.0.1", 11333, "/checkv2")
    assert parse_url("https://scan.example/rspamd/") == ("https", "scan.example", 443, "/rspamd/checkv2")
    assert parse_url("http://[::1]:11333/checkv2") == ("http", "::1", 11333, "/checkv2")
    for bad in ("ftp://x", "http://", "http://u:p@x", "http://x:99999"):
        with pytest.raises(ValueError):
            parse_url(bad)


async def test_client_request_and_reply() -> None:
    seen: dict = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["lines"], seen["body"] = await _read_request(reader)
        writer.write(_reply({"score": 7.25, "required_score": 15, "action": "add header",
                             "symbols": {"A": {"score": 1.0}, "B": {"score": 6.25}}}))
        await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    async with server:
        res = await RspamdClient(url, 2.0).check(b"Subject: x\r\n\r\nbody\r\n", ip="192.0.2.1",
                                                 helo="evil\r\nInjected: yes", mail_from="a@b.test",
                                                 rcpts=["support@example.test", "help@example.test"], queue_id="q1")
    assert res.score == 7.25 and res.required_score == 15.0 and res.action == "add header"
    assert res.symbols == ("B", "A")                       # by weight
    lines = seen["lines"]
    assert lines[0] == "POST /checkv2 HTTP/1.1"
    assert "IP: 192.0.2.1" in lines and "From: a@b.test" in lines and "Queue-Id: q1" in lines
    assert [l for l in lines if l.startswith("Rcpt:")] == ["Rcpt: support@example.test", "Rcpt: help@example.test"]
    assert "Helo: evil??Injected: yes" in lines and not any(l.startswith("Injected") for l in lines)
    assert seen["body"] == b"Subject: x\r\n\r\nbody\r\n"


async def test_client_chunked_reply() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_reply({"score": 1.5, "action": "no action"}, chunked=True))
        await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    async with server:
        assert (await RspamdClient(url, 2.0).check(b"x")).score == 1.5


@pytest.mark.parametrize("mode", ["http500", "badjson", "slow", "garbage", "refused"])
async def test_client_errors(mode: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if mode == "http500":
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
        elif mode == "badjson":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{nope")
        elif mode == "garbage":
            writer.write(b"SMTP? 220 hello\r\n\r\n")
        elif mode == "slow":
            await asyncio.sleep(5)
        await writer.drain()
        writer.close()

    server, url = await _serve(handler)
    if mode == "refused":
        server.close()
        await server.wait_closed()
    started = time.monotonic()
    with pytest.raises(RspamdError):
        await RspamdClient(url, 0.3).check(b"x")
    assert time.monotonic() - started < 2
    if mode != "refused":
        server.close()


def test_decide_thresholds() -> None:
    pol = RspamdPolicy(tag_score=5, quarantine_score=10, reject_score=15)
    assert [decide(s, pol) for s in (0, 4.9, 5, 9.99, 10, 14, 15, 100)] == \
        ["", "", "tag", "tag", "quarantine", "quarantine", "reject", "reject"]
    assert decide(100, RspamdPolicy(tag_score=5, quarantine_score=None, reject_score=None)) == "tag"


def test_config() -> None:
    pol = parse_pipeline_policy({"rspamd": {"enabled": True, "url": "http://127.0.0.1:11333", "timeout": "2s",
                                            "quarantine_score": False, "on_error": "tempfail"}}).rspamd
    assert pol.enabled and pol.timeout == 2.0 and pol.quarantine_score is None and pol.on_error == "tempfail"
    for table, key in (({"url": "ftp://x"}, "pipeline.rspamd.url"),
                       ({"tag_score": 20}, "pipeline.rspamd.quarantine_score"),
                       ({"reject_score": "high"}, "pipeline.rspamd.reject_score"),
                       ({"timeout": "0s"}, "pipeline.rspamd.timeout"),
                       ({"password": 5}, "pipeline.rspamd.password")):
        with pytest.raises(ConfigError) as exc:
            parse_pipeline_policy({"rspamd": table})
        assert exc.value.key == key
    assert "secret" not in repr(RspamdPolicy(password="secret"))


async def test_stage_on_error_policies() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()                                     # nothing listens there now
    url = f"http://127.0.0.1:{port}"
    msg = inbound(message())
    v = await RspamdStage(RspamdPolicy(enabled=True, url=url, timeout=0.5)).run(msg, context())
    assert v.action == CONTINUE and "error" in v.data["rspamd"]
    with pytest.raises(RspamdError):
        await RspamdStage(RspamdPolicy(enabled=True, url=url, timeout=0.5, on_error="tempfail")).run(msg, context())
    check = RspamdCheck(RspamdPolicy(enabled=True, url=url, timeout=0.5, on_error="tempfail"))
    res = await check.run(_data_ctx(message()))
    assert res.action == DEFER and res.reply is not None and res.reply.code == 451
    res = await RspamdCheck(RspamdPolicy(enabled=True, url=url, timeout=0.5)).run(_data_ctx(message()))
    assert res.action == CHECK_CONTINUE


async def test_stage_uses_score_from_smtp_check() -> None:
    pol = RspamdPolicy(enabled=True, url="http://127.0.0.1:9")      # never contacted
    v = await RspamdStage(pol).run(inbound(message(), flags=("rspamd-score:11.000",)), context())
    assert v.action == QUARANTINE and v.data["rspamd"] == {"score": 11.0, "source": "smtp"}
    v = await RspamdStage(pol).run(inbound(message(), flags=("rspamd-score:6.5",)), context())
    assert v.action == CONTINUE and v.data["tags"] == ["spam"]


def _data_ctx(raw: bytes, mailboxes=MAILBOXES[:1]) -> DataContext:
    return DataContext(peer_ip="192.0.2.10", helo="mail.example.org", mail_from="alice@example.org",
                       rcpt_tos=[mb.address for mb in mailboxes], mailboxes=list(mailboxes), raw=raw,
                       header_end=header_end(raw))


# --------------------------------------------------------------------------- #
# Live rspamd
# --------------------------------------------------------------------------- #
RSPAMD = shutil.which("rspamd")
LUA_RULES = """
rspamd_config:register_symbol{
  name = 'TICKETMX_TEST_SCORE',
  score = 1.0,
  callback = function(task)
    local subj = task:get_subject() or ''
    local n = subj:match('SCORE=([%d%.]+)')
    if n then task:insert_result('TICKETMX_TEST_SCORE', tonumber(n)) end
  end
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rspamd_url() -> Iterator[str]:
    if RSPAMD is None:
        pytest.skip("rspamd not installed (Debian: apt-get install rspamd, with a policy-rc.d exiting 101 "
                    "so the packaged service does not start)")
    tmp = Path(tempfile.mkdtemp(prefix="ticketmx-rspamd-"))
    # hyperscan caches (TLD list etc.) survive between runs: the first start compiles for ~15 s, later ~1 s
    cache = Path(tempfile.gettempdir()) / "ticketmx-test-rspamd-hs"
    cache.mkdir(exist_ok=True)
    port = _free_port()
    (tmp / "rules.lua").write_text(LUA_RULES)
    (tmp / "rspamd.conf").write_text(f"""
options {{
  pidfile = "{tmp}/rspamd.pid";
  dbdir = "{tmp}";
  hs_cache_dir = "{cache}";
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.2s; retransmits = 0; }}
}}
logging {{ type = "file"; filename = "{tmp}/rspamd.log"; level = "warning"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
lua = "{tmp}/rules.lua";
""")
    cmd = [RSPAMD, "-f", "-i", "-c", str(tmp / "rspamd.conf")]
    if os.geteuid() == 0:
        cmd += ["-u", "root", "-g", "root"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr.txt", "wb"),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                log = (tmp / "stderr.txt").read_text(errors="replace")[-2000:]
                pytest.skip(f"rspamd exited with {proc.returncode} at start: {log}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip("rspamd did not answer /ping within 90 s")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)       # the session we started (rspamd's own workers)
                proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


async def test_live_client(rspamd_url: str) -> None:
    res = await RspamdClient(rspamd_url, 5).check(message(subject="hello SCORE=7.5"), ip="192.0.2.10",
                                                  mail_from="alice@example.org", rcpts=["support@example.test"])
    assert res.score == pytest.approx(7.5) and "TICKETMX_TEST_SCORE" in res.symbols
    res = await RspamdClient(rspamd_url, 5).check(message(subject="hello"))
    assert res.score == pytest.approx(0.0)


@pytest.mark.parametrize("subject,action,tags", [
    ("plain question", CONTINUE, None),
    ("SCORE=6.5 offer", CONTINUE, ["spam"]),
    ("SCORE=11 offer", QUARANTINE, None),
    ("SCORE=30 offer", DROP, None),
])
async def test_live_stage(rspamd_url: str, subject: str, action: str, tags: list[str] | None) -> None:
    pol = parse_pipeline_policy({"rspamd": {"enabled": True, "url": rspamd_url, "timeout": "5s"}}).rspamd
    v = await RspamdStage(pol).run(inbound(message(subject=subject)), context())
    assert v.action == action, v
    assert v.data.get("tags") == tags
    assert v.data["rspamd"]["source"] == "pipeline"


async def test_live_reject_at_data(rspamd_url: str) -> None:
    pol = parse_pipeline_policy({"rspamd": {"enabled": True, "url": rspamd_url, "timeout": "5s"}})
    checks = build_data_checks(pol)
    assert [c.name for c in checks] == ["rspamd"]
    check = checks[0]
    res = await check.run(_data_ctx(message(subject="SCORE=20 pills")))
    assert res.action == REJECT and str(res.reply) == "550 5.7.1 Message rejected as spam"
    gtube = message(body="XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")
    assert (await check.run(_data_ctx(gtube))).action == REJECT
    res = await check.run(_data_ctx(message(subject="SCORE=7 maybe")))
    assert res.action == CHECK_CONTINUE and res.flags == ["rspamd-score:7.000"]
    # a mailbox that does not reject at DATA keeps a shared message from being refused
    lenient = parse_pipeline_policy({"rspamd": {"reject_at_data": False}}, "mailbox[1].pipeline", pol)
    check2 = RspamdCheck(pol.rspamd, {"billing@example.test": lenient.rspamd})
    res = await check2.run(_data_ctx(message(subject="SCORE=20 pills"), MAILBOXES))
    assert res.action == CHECK_CONTINUE
    res = await check2.run(_data_ctx(message(subject="SCORE=20 pills"), MAILBOXES[:1]))
    assert res.action == REJECT
