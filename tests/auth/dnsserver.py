"""A real DNS server on 127.0.0.1 for the auth tests (dnslib), serving a zone built per test.

Zone format: ``{name: [(TYPE, value), ...]}``, names case-insensitive without trailing dot.
Values: A/AAAA → address str; MX → (pref, host); PTR/CNAME → host; TXT → str, bytes, or a
list of strings (one record with several character-strings); SOA is synthesised for negative
answers (TTL ``neg_ttl``). Special entries:

* ``("TIMEOUT", None)`` at a name: questions for types not listed *before* it get no reply at
  all (the client times out) — or SERVFAIL when the server runs with ``timeout_as="servfail"``;
* ``("SERVFAIL", TYPE-or-None)``: SERVFAIL for that type (or every type) at the name;
* ``("DROP", TYPE-or-None)``: never answer that type (or any) at the name.

The server answers UDP and TCP on the same port. CNAMEs are chased inside the zone like a
recursive resolver does (a loop gives SERVFAIL). ``queries`` records every question.
"""
from __future__ import annotations

import socket
import threading
from typing import Any

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSLabel, DNSRecord
from dnslib.server import DNSHandler, DNSServer

_DROP = object()


def _free_port() -> int:
    # a port free for both UDP and TCP
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            t.close()
            continue
        s.close()
        t.close()
        return port
    raise RuntimeError("no free port")


class ZoneResolver:
    def __init__(self, zone: dict[str, list], ttl: int = 300, neg_ttl: int = 60,
                 timeout_as: str = "drop") -> None:
        self.ttl = ttl
        self.neg_ttl = neg_ttl
        self.timeout_as = timeout_as
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.set_zone(zone)

    def set_zone(self, zone: dict[str, list]) -> None:
        self.zone = {k.lower().rstrip("."): list(v) for k, v in zone.items()}

    def _rr(self, name: str, t: str, v: Any) -> RR:
        label = DNSLabel([p.encode("utf-8") for p in name.split(".")])
        if t == "A":
            rd = A(v)
        elif t == "AAAA":
            rd = AAAA(v)
        elif t == "MX":
            rd = MX(v[1], v[0])
        elif t == "PTR":
            rd = PTR(v)
        elif t == "CNAME":
            rd = CNAME(v)
        elif t == "TXT":
            if isinstance(v, (list, tuple)):
                parts = [p.encode("utf-8") if isinstance(p, str) else p for p in v]
            else:
                b = v.encode("utf-8") if isinstance(v, str) else v
                parts = [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]
            rd = TXT(parts)
        else:
            raise ValueError(t)
        return RR(label, getattr(QTYPE, t), rdata=rd, ttl=self.ttl)

    def lookup(self, name: str, qtype: str):
        """('ok', [(type, value)]) | ('nodata', []) | ('nxdomain', []) | ('servfail', ...) | ('drop', ...)"""
        entries = self.zone.get(name)
        if entries is None:
            if name.startswith("error."):
                return ("timeout", [])
            return ("nxdomain", [])
        out = []
        for t, v in entries:
            if t == "TIMEOUT":
                if not out:
                    return ("timeout", [])
                break
            if t == "SERVFAIL" and (v is None or v == qtype):
                return ("servfail", [])
            if t == "DROP" and (v is None or v == qtype):
                return ("drop", [])
            if t == qtype or t == "CNAME":
                out.append((t, v))
        return ("ok", out) if out else ("nodata", [])

    def resolve(self, request: DNSRecord, handler):
        q = request.q
        qname = b".".join(q.qname.label).decode("utf-8", "replace")
        qtype = QTYPE[q.qtype]
        with self.lock:
            self.queries.append((qname.lower(), qtype))
        reply = request.reply()
        name = qname.lower()
        seen = set()
        while True:
            status, recs = self.lookup(name, qtype)
            if status == "timeout":
                status = "drop" if self.timeout_as == "drop" else "servfail"
            if status == "drop":
                return _DROP
            if status == "servfail":
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if status == "nxdomain":
                reply.header.rcode = RCODE.NXDOMAIN
                self._soa(reply, name)
                return reply
            if status == "nodata":
                self._soa(reply, name)
                return reply
            cname = [v for t, v in recs if t == "CNAME"]
            if cname and qtype != "CNAME":
                reply.add_answer(self._rr(name, "CNAME", cname[0]))
                seen.add(name)
                name = cname[0].lower().rstrip(".")
                if name in seen or len(seen) > 16:
                    reply = request.reply()
                    reply.header.rcode = RCODE.SERVFAIL
                    return reply
                continue
            for t, v in recs:
                reply.add_answer(self._rr(name, t, v))
            return reply

    def _soa(self, reply: DNSRecord, name: str) -> None:
        reply.add_auth(RR("test.", QTYPE.SOA, ttl=self.neg_ttl,
                          rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, self.neg_ttl))))


class _Handler(DNSHandler):
    def get_reply(self, data):
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        if reply is _DROP:
            return None
        return reply.pack()

    def handle(self):
        if self.server.socket_type == socket.SOCK_STREAM:
            data = self.request.recv(8192)
            if len(data) < 2:
                return
            length = int.from_bytes(data[:2], "big")
            while len(data) - 2 < length:
                more = self.request.recv(8192)
                if not more:
                    break
                data += more
            rdata = self.get_reply(data[2:])
            if rdata is not None:
                self.request.sendall(len(rdata).to_bytes(2, "big") + rdata)
        else:
            data, conn = self.request
            rdata = self.get_reply(data)
            if rdata is not None:
                conn.sendto(rdata, self.client_address)


class _QuietLogger:
    def __getattr__(self, name):
        return lambda *a, **k: None


class TestDnsServer:
    """``with TestDnsServer(zone) as srv: srv.port``; ``srv.set_zone(...)`` between tests."""

    __test__ = False

    def __init__(self, zone: dict[str, list] | None = None, **kw) -> None:
        self.resolver = ZoneResolver(zone or {}, **kw)
        self.port = _free_port()
        self.udp = DNSServer(self.resolver, address="127.0.0.1", port=self.port, handler=_Handler,
                             logger=_QuietLogger())
        self.tcp = DNSServer(self.resolver, address="127.0.0.1", port=self.port, tcp=True,
                             handler=_Handler, logger=_QuietLogger())

    @property
    def nameservers(self) -> tuple[tuple[str, int], ...]:
        return (("127.0.0.1", self.port),)

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self.resolver.queries

    def set_zone(self, zone: dict[str, list]) -> None:
        self.resolver.set_zone(zone)

    def start(self) -> "TestDnsServer":
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def stop(self) -> None:
        self.udp.stop()
        self.tcp.stop()
        self.udp.server.server_close()
        self.tcp.server.server_close()

    def __enter__(self) -> "TestDnsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
