from __future__ import annotations

import email
import itertools
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.config.relay import parse_relay_config
from gateway.store.relay_queue import Notification, RelayQueue
from relay.worker import RelayWorker

_n = itertools.count(1)


def note(to: str | list[str] = "alice@customer.test", event: str = "ack", **kw: Any) -> Notification:
    i = next(_n)
    rcpts = [to] if isinstance(to, str) else to
    mid = f"n{i}.{event}@mx.example.test"
    msg = (f"From: Helpdesk <help@example.test>\r\nTo: {', '.join(rcpts)}\r\nSubject: note {i}\r\n"
           f"Message-ID: <{mid}>\r\nAuto-Submitted: auto-replied\r\nX-Ticketmx-Loop: mx.example.test\r\n"
           f"\r\nbody {i}\r\n").encode()
    return Notification(event=event, mail_from="help@example.test", recipients=tuple(rcpts), message=msg,
                        message_id=mid, **kw)


def subject_of(data: bytes) -> str:
    return str(email.message_from_bytes(data)["Subject"])


async def start_worker(store: Any, table: dict[str, Any], registry: CollectorRegistry | None = None,
                       **kw: Any) -> RelayWorker:
    w = RelayWorker(parse_relay_config(table), store, registry, housekeeping_interval=0.05, **kw)
    await w.start()
    return w


async def enqueue_many(store: Any, notes: list[Notification]) -> list[int]:
    q = RelayQueue(store)
    return [await q.enqueue(n) for n in notes]


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    v = registry.get_sample_value(name, labels)
    return v or 0.0
