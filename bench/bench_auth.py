"""Per-message cost of SMTP-time authentication (gateway.auth).

Runs a real DNS server (dnslib) on 127.0.0.1 and measures, on a 4 KB message:

* SPF check_host(), uncached (fresh Resolver each time: every answer crosses the loopback
  to the Python DNS server) and cached (warm Resolver cache);
* DKIM verification, rsa-2048 and ed25519, crypto only (canonicalise + hash + verify, as run
  inline or in the executor) and as part of a full Authenticator.check() with warm DNS cache
  (SPF + DKIM + DMARC + ARC + Authentication-Results);
* throughput of full checks, 64 in flight, DKIM-signed (rsa-2048) mail.

Usage: python bench/bench_auth.py [--n 2000] [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dkim  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402

from gateway.auth import Authenticator, AuthPolicy, Resolver  # noqa: E402
from gateway.auth import dkimcheck  # noqa: E402
from gateway.smtp.auth_check import AuthCheck  # noqa: E402
from gateway.smtp.checks import DataContext  # noqa: E402
from gateway.config.recipients import RecipientMap  # noqa: E402
from gateway.auth.spfcheck import check_spf  # noqa: E402
from tests.auth.dnsserver import TestDnsServer  # noqa: E402

IP = "192.0.2.10"
DISTINCT = 256  # distinct signed messages the figures cycle through


def keys():
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
    rsa_txt = "v=DKIM1; k=rsa; p=" + base64.b64encode(k.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    e = ed25519.Ed25519PrivateKey.generate()
    ed_seed = base64.b64encode(e.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption()))
    ed_txt = "v=DKIM1; k=ed25519; p=" + base64.b64encode(e.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    return rsa_pem, rsa_txt, ed_seed, ed_txt


def message_4k() -> bytes:
    head = (b"From: Alice Example <alice@example.org>\r\nTo: help@support.test\r\n"
            b"Subject: My printer is on fire again\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
            b"Message-ID: <bench-1@example.org>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * ((4096 - len(head)) // len(line))
    return head + body


def stats(ns: list[int]) -> str:
    us = sorted(x / 1000 for x in ns)
    p95 = us[int(len(us) * 0.95) - 1]
    return f"median {statistics.median(us):8.1f} µs   mean {statistics.fmean(us):8.1f} µs   p95 {p95:8.1f} µs"


async def bench(n: int) -> None:
    rsa_pem, rsa_txt, ed_seed, ed_txt = keys()
    zone = {
        "example.org": [("TXT", "v=spf1 ip4:198.51.100.0/24 include:_spf.example.org -all")],
        "_spf.example.org": [("TXT", f"v=spf1 ip4:203.0.113.0/24 a:out.example.org ip4:{IP} -all")],
        "out.example.org": [("A", "203.0.113.9")],
        "mail.example.org": [("A", IP)],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
        "rsa._domainkey.example.org": [("TXT", rsa_txt)],
        "ed._domainkey.example.org": [("TXT", ed_txt)],
    }
    msg = message_4k()
    hdrs = [b"from", b"to", b"subject", b"date", b"message-id"]

    def sign_all(sel: bytes, key: bytes, algo: bytes) -> list[bytes]:
        """DISTINCT distinct messages (own Message-ID, so own signature): per-message caches
        (parsed header fields, the last 16 messages) see what a busy MX sees, not one message."""
        out = []
        for i in range(DISTINCT):
            m = msg.replace(b"<bench-1@example.org>", f"<bench-{i}@example.org>".encode())
            out.append(dkim.sign(m, sel, b"example.org", key, signature_algorithm=algo, include_headers=hdrs) + m)
        return out

    signed = {"rsa-2048": sign_all(b"rsa", rsa_pem, b"rsa-sha256"),
              "ed25519": sign_all(b"ed", ed_seed, b"ed25519-sha256")}
    print(f"message: {len(msg)} bytes (+ signature header), {DISTINCT} distinct signed copies cycled")
    with TestDnsServer(zone) as srv:
        # --- SPF uncached
        t = []
        for _ in range(max(n // 10, 50)):
            r = Resolver(srv.nameservers, 2.0)
            t0 = time.perf_counter_ns()
            res = await check_spf(r, ip=IP, sender="alice@example.org", helo="mail.example.org")
            t.append(time.perf_counter_ns() - t0)
            assert res.result == "pass", res
        print(f"SPF  uncached (3 DNS answers over loopback) : {stats(t)}")
        # --- SPF cached
        r = Resolver(srv.nameservers, 2.0)
        await check_spf(r, ip=IP, sender="alice@example.org", helo="mail.example.org")
        t = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            res = await check_spf(r, ip=IP, sender="alice@example.org", helo="mail.example.org")
            t.append(time.perf_counter_ns() - t0)
        assert res.result == "pass"
        print(f"SPF  cached                                 : {stats(t)}")
        # --- DKIM crypto only: as the service runs it (body hashed in one pass, dkimfast), and dkimpy alone
        for name, raws in signed.items():
            plans = [dkimcheck.plan(raw) for raw in raws]
            kd: dict = {}
            await dkimcheck.fetch_keys(r, plans[0].key_names(), kd)
            for how, inline in (("verify (crypto only)", True), ("dkimpy alone (reference)", False)):
                t = []
                for i in range(n):
                    raw, p = raws[i % DISTINCT], plans[i % DISTINCT]
                    t0 = time.perf_counter_ns()
                    out = dkimcheck.verify_sync(raw, p.sigs, kd, p.arc_present,
                                                body_keys=p.body_keys if inline else None)
                    t.append(time.perf_counter_ns() - t0)
                assert out["sigs"][0].result == "pass", out["sigs"][0]
                print(f"DKIM {name:8s} {how:25s}: {stats(t)}")
        # --- full check, warm cache
        auth = Authenticator(r, "mx.support.test")
        pol = AuthPolicy()
        for name, raws in signed.items():
            await auth.check(peer_ip=IP, helo="mail.example.org", mail_from="alice@example.org", raw=raws[0],
                             policy=pol)
            t = []
            for i in range(n):
                raw = raws[i % DISTINCT]
                t0 = time.perf_counter_ns()
                v = await auth.check(peer_ip=IP, helo="mail.example.org", mail_from="alice@example.org", raw=raw,
                                     policy=pol)
                t.append(time.perf_counter_ns() - t0)
            assert v.action == "accept" and v.auth["dkim"][0]["result"] == "pass"
            print(f"full check {name:8s} (SPF+HELO+DKIM+DMARC+ARC, cached DNS): {stats(t)}")
        # --- what the SMTP process runs at end of DATA: the check plus stripping forged A-R fields and
        # folding ours (AuthCheck.run), CPU time of this thread per message
        chk = AuthCheck(auth, "mx.support.test", RecipientMap([]), pol, {})
        raws = signed["rsa-2048"]
        t = []
        for i in range(n):
            raw = raws[i % DISTINCT]
            ctx = DataContext(peer_ip=IP, helo="mail.example.org", mail_from="alice@example.org",
                              rcpt_tos=["help@support.test"], mailboxes=[], raw=raw,
                              header_end=raw.find(b"\r\n\r\n"))
            t0 = time.thread_time_ns()
            res = await chk.run(ctx)
            t.append(time.thread_time_ns() - t0)
        assert res.prepend and b"dkim=pass" in res.prepend, res
        print(f"AuthCheck.run rsa-2048 (the SMTP process's share, thread CPU): {stats(t)}")
        # --- throughput
        total = n
        sem = asyncio.Semaphore(64)

        async def one(raw: bytes):
            async with sem:
                return await auth.check(peer_ip=IP, helo="mail.example.org", mail_from="alice@example.org",
                                        raw=raw, policy=pol)
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(raws[i % DISTINCT]) for i in range(total)))
        el = time.perf_counter() - t0
        assert all(v.action == "accept" for v in res)
        print(f"throughput: {total / el:8.0f} checks/s (rsa-2048 signed, 64 in flight, cached DNS, one core)")
        auth.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="iterations per figure")
    ap.add_argument("--quick", action="store_true", help="n=200")
    a = ap.parse_args()
    n = 200 if a.quick else a.n
    print("command:", " ".join(shlex.quote(x) for x in [sys.executable] + sys.argv))
    print(f"python {sys.version.split()[0]}, dkimpy {getattr(dkim, '__version__', '?')}, {os.cpu_count()} cpu")
    asyncio.run(bench(n))


if __name__ == "__main__":
    main()
