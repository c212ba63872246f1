"""Issue 18 item 7, defence in depth: a message with a line over 998 octets is never offered to a
smarthost; it is dead-lettered with a reason that says so, and no contact is marked undeliverable.
A smarthost's 5xx about the message's form (500-504, 5.6.x) does not mark contacts either."""
from __future__ import annotations

from relay.client import overlong_line
from gateway.store.relay_queue import Notification, RelayQueue

from .conftest import host, relay_table, wait_for
from .helpers import enqueue_many, note, start_worker


def _long_header_note(to: str) -> Notification:
    msg = (f"From: help@example.test\r\nTo: {to}\r\nSubject: {'x' * 20_000}\r\nMessage-ID: <long@mx.test>\r\n"
           f"\r\nbody\r\n").encode()
    return Notification(event="ack", mail_from="help@example.test", recipients=(to,), message=msg,
                        message_id="long@mx.test")


async def _state(q: RelayQueue, mid: int, state: str):
    row = await q.get(mid)
    return row if row and row["state"] == state else None


async def _undeliverable(store, addr: str) -> bool:
    rows = await store.query(f"SELECT undeliverable FROM relay_contacts WHERE email='{addr}'")
    return bool(rows and rows[0][0])


def test_overlong_line_finds_the_line_and_the_part():
    assert overlong_line(b"A: b\r\n\r\n" + b"y" * 998 + b"\r\n") is None
    assert overlong_line(b"A: b\r\n\r\n" + b"y" * 998) is None              # no final CRLF
    why = overlong_line(b"A: b\r\nS: " + b"x" * 996 + b"\r\n\r\nbody\r\n")
    assert why is not None and "line 2 (header) is 999 octets" in why
    why = overlong_line(b"A: b\r\n\r\nok\r\n" + b"y" * 1500 + b"\n")        # bare LF ends a line too
    assert why is not None and "line 4 (body) is 1500 octets" in why


async def test_overlong_line_is_dead_lettered_unsent_and_the_contact_is_not_blamed(store, sinks):
    p = sinks()
    w = await start_worker(store, relay_table(host("primary", p.port)))
    q = RelayQueue(store)
    try:
        (bad, good) = await enqueue_many(store, [_long_header_note("carol@x.test"), note(to="dave@x.test")])
        w.wake()
        row = await wait_for(lambda: _state(q, bad, "dead"))
        await wait_for(lambda: _state(q, good, "sent"))
    finally:
        await w.close()
    assert "over the 998-octet limit" in row["last_error"] and "line 3 (header)" in row["last_error"]
    assert p.handler.recipients() == ["dave@x.test"]             # never offered; the next one went
    assert not await _undeliverable(store, "carol@x.test")


async def test_data_500_about_the_message_does_not_mark_the_contact(store, sinks):
    p = sinks()
    p.handler.data_reply = lambda env: "500 5.5.2 Line too long"
    w = await start_worker(store, relay_table(host("primary", p.port)))
    q = RelayQueue(store)
    try:
        (mid,) = await enqueue_many(store, [note(to="erin@x.test")])
        w.wake()
        row = await wait_for(lambda: _state(q, mid, "dead"))
    finally:
        await w.close()
    assert "500" in row["last_error"]
    assert not await _undeliverable(store, "erin@x.test")
