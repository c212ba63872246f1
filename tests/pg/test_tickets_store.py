"""The store side of the HTTP ticket API (issue 22), on SQLite and PostgreSQL alike: the newest-first
page with filters and cursor, full-text search kept in step with the articles, ticket updates that
write the same history as mail commands, API notes/replies with their hook in the same transaction,
attachment reads."""
from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.store.base import ArticleDraft, AttachmentDraft, TicketPage, ThreadHints
from gateway.store.crypto import Cipher, generate_key
from gateway.store.search import decode_cursor, encode_cursor

from .test_store_contract import T0, article, spool_and_deliver, ticket


async def _tickets(store: Any, n: int, start: int = 0, **kw: Any) -> list[Any]:
    out = []
    for i in range(start, start + n):
        sender = kw.get("sender", f"c{i}@customer.test")
        d = ticket(f"s{i:04d}", article(f"m{i}@c.test", sender=sender, subject=f"Subject {i}",
                                        body=f"body of ticket {i}"), queue=kw.get("queue", "IT"))
        out.append(await spool_and_deliver(store, f"s{i:04d}", d, now=T0 + i, sender=sender))
    return out


async def _all_pages(store: Any, **kw: Any) -> list[int]:
    seen: list[int] = []
    before = None
    for _ in range(100):
        items, before = await store.tickets_page(TicketPage(before=before, **kw))
        seen += [t["id"] for t in items]
        if before is None:
            return seen
    raise AssertionError("pagination did not end")


async def test_page_is_newest_first_and_every_ticket_once(store):
    await _tickets(store, 7)
    items, nxt = await store.tickets_page(TicketPage(limit=3))
    assert [t["subject"] for t in items] == ["Subject 6", "Subject 5", "Subject 4"]
    assert nxt == items[-1]["id"]
    # new tickets arrive between pages: the walk still returns each of the first seven exactly once
    first = [t["id"] for t in items]
    rest: list[int] = []
    before = nxt
    added = 0
    while before is not None:
        if added < 2:
            await _tickets(store, 1, start=100 + added)
            added += 1
        page, before = await store.tickets_page(TicketPage(limit=3, before=before))
        rest += [t["id"] for t in page]
    ids = first + rest
    assert len(ids) == len(set(ids)) == 7
    assert ids == sorted(ids, reverse=True)


async def test_filters_and_scope(store):
    await _tickets(store, 3, queue="IT")
    await _tickets(store, 2, start=10, queue="Sales", sender="bob@customer.test")
    assert len(await _all_pages(store, queue="Sales")) == 2
    assert len(await _all_pages(store, requester="BOB@customer.test")) == 2
    assert len(await _all_pages(store, scope=("IT",))) == 3
    assert await _all_pages(store, scope=("IT",), queue="Sales") == []
    assert len(await _all_pages(store, since=T0 + 10)) == 2
    assert len(await _all_pages(store, status="new")) == 5
    assert await _all_pages(store, status="closed") == []


async def test_search_finds_body_words_of_later_articles(store):
    results = await _tickets(store, 3)
    # a later article of ticket 0 carries a word no subject and no other ticket has
    reply = ticket("r1", article("r1@c.test", sender="c0@customer.test", subject="Re: Subject 0",
                                 body="the flux capacitor is broken"),
                   thread=ThreadHints(refs=("m0@c.test",)))
    r = await spool_and_deliver(store, "r1", reply, now=T0 + 50, sender="c0@customer.test")
    assert r.ticket_id == results[0].ticket_id
    items, nxt = await store.tickets_page(TicketPage(text="capacitor"))
    assert [t["id"] for t in items] == [results[0].ticket_id] and nxt is None
    items, _ = await store.tickets_page(TicketPage(text="flux Capacitor"))
    assert [t["id"] for t in items] == [results[0].ticket_id]
    assert (await store.tickets_page(TicketPage(text="capacitor nosuchword")))[0] == []
    assert (await store.tickets_page(TicketPage(text="Subject 2")))[0][0]["id"] == results[2].ticket_id
    assert (await store.tickets_page(TicketPage(text='" OR * NEAR(')))[0] == []  # no query syntax gets through
    # every ticket has "body": paged, each once, newest first
    assert await _all_pages(store, text="body", limit=2) == sorted((x.ticket_id for x in results), reverse=True)
    assert await _all_pages(store, text="body", limit=2, queue="Nope") == []


async def test_api_note_and_reply_are_searchable_and_run_the_hook_in_the_transaction(store):
    (t,) = await _tickets(store, 1)
    seen: list[tuple[Any, ...]] = []

    def hook(conn: Any, ticket_id: int, article_id: int) -> None:
        seen.append((ticket_id, article_id))
        conn.execute("INSERT INTO ticket_history (ticket_id, at, actor, action, detail) VALUES (?,?,?,?,?)",
                     (ticket_id, T0, "test", "hooked", json.dumps({"article_id": article_id})))

    note = ArticleDraft(from_addr="ann@example.test", from_name="Ann", subject="note", body_text="zebra stripes",
                        body_html="", message_id="", visibility="internal", kind="note")
    aid = await store.ticket_add_article(t.ticket_id, note, "ann@example.test", T0 + 5, hook=hook)
    assert seen == [(t.ticket_id, aid)]
    reply = ArticleDraft(from_addr="ann@example.test", from_name="Ann", subject="Re: Subject 0",
                         body_text="giraffe answer", body_html="", message_id="")
    rid = await store.ticket_add_article(t.ticket_id, reply, "ann@example.test", T0 + 6, agent_reply=True)
    got = await store.ticket_get(t.ticket_number)
    assert [a["visibility"] for a in got["articles"]] == ["public", "internal", "public"]
    assert [a["id"] for a in got["articles"]][1:] == [aid, rid]
    actions = [(h["action"], h["actor"]) for h in got["history"]]
    assert ("note_added", "ann@example.test") in actions and ("hooked", "test") in actions
    assert ("article_added", "ann@example.test") in actions
    rows = await store.query("SELECT first_response_at FROM tickets WHERE id=?", (t.ticket_id,))
    assert rows[0][0] == T0 + 6
    for word in ("zebra", "giraffe"):
        assert [x["id"] for x in (await store.tickets_page(TicketPage(text=word)))[0]] == [t.ticket_id]

    def failing(conn: Any, ticket_id: int, article_id: int) -> None:
        raise RuntimeError("hook failed")
    with pytest.raises(RuntimeError):
        await store.ticket_add_article(t.ticket_id, ArticleDraft(
            from_addr="ann@example.test", from_name="", subject="x", body_text="okapi", body_html="",
            message_id=""), "ann@example.test", T0 + 7, hook=failing)
    assert len((await store.ticket_get(t.ticket_number))["articles"]) == 3  # rolled back whole
    assert (await store.tickets_page(TicketPage(text="okapi")))[0] == []
    assert await store.ticket_add_article(999999, note, "ann@example.test", T0) is None


async def test_ticket_update_writes_the_command_history(store):
    (t,) = await _tickets(store, 1)
    calls: list[int] = []
    out = await store.ticket_update(t.ticket_id, {"status": "closed", "priority": "high", "queue": "Sales",
                                                  "tags": ["vip", "b"]}, "api:ann", T0 + 9,
                                    hook=lambda conn, tid: calls.append(tid))
    assert out["old"] == {"status": "new", "priority": "normal", "queue": "IT", "tags": []}
    assert out["new"] == {"status": "closed", "priority": "high", "queue": "Sales", "tags": ["vip", "b"]}
    assert calls == [t.ticket_id]
    got = await store.ticket_get(t.ticket_number)
    assert got["closed_at"] is not None and got["queue"] == "Sales"
    last = got["history"][-1]
    assert last["action"] == "command" and last["actor"] == "api:ann"
    assert last["detail"]["old_status"] == "new" and last["detail"]["applied"]["status"] == "closed"
    out = await store.ticket_update(t.ticket_id, {"tags": [], "status": "open"}, "api:ann", T0 + 10)
    assert out["new"] == {"tags": [], "status": "open"}
    assert (await store.ticket_get(t.ticket_number))["closed_at"] is None
    assert await store.ticket_update(999999, {"status": "open"}, "x", T0) is None


async def test_attachment_get(store):
    att = AttachmentDraft("report.pdf", "application/pdf", "ab" * 32, b"%PDF-1.4 data")
    d = ticket("s1", article("m1@c.test", attachments=(att,)))
    r = await spool_and_deliver(store, "s1", d)
    (a,) = (await store.ticket_get(r.ticket_number))["articles"][0]["attachments"]
    meta, data = await store.attachment_get(a["id"])
    assert data == b"%PDF-1.4 data"
    assert meta["filename"] == "report.pdf" and meta["ticket_id"] == r.ticket_id and meta["queue"] == "IT"
    assert await store.attachment_get(a["id"] + 100) is None


async def test_encrypted_store_searches_without_plaintext_in_the_index(make_store):
    store = await make_store(cipher=Cipher([generate_key().encode()]))
    (t,) = await _tickets(store, 1)
    assert [x["id"] for x in (await store.tickets_page(TicketPage(text="TICKET 0")))[0]] == [t.ticket_id]
    assert (await store.tickets_page(TicketPage(text="ticket 1")))[0] == []
    if hasattr(store, "pool"):
        index = (await store.query("SELECT search::text FROM tickets"))[0][0]
    else:
        index = " ".join(str(r[0]) + str(r[1]) for r in await store.query("SELECT subject, body FROM ticket_search"))
    assert "ticket" not in index.lower() and index  # hashed words only


def test_cursor_roundtrip_and_garbage():
    assert decode_cursor(encode_cursor(12345)) == 12345
    for bad in ("", "abc", encode_cursor(1)[:-1] + "!", "dDE6LTE"):
        with pytest.raises(ValueError):
            decode_cursor(bad)


async def test_sqlite_upgrade_indexes_existing_articles(tmp_path):
    """A database from before migration 0015: its plaintext articles are searchable after the upgrade."""
    from gateway.store.sqlite import SqliteStore

    from ..sqlite_schema import database_at_version
    conn = database_at_version(tmp_path / "old.db", 13)
    conn.execute("INSERT INTO contacts (id, email, created_at) VALUES (1, 'a@c.test', 0)")
    for tid in (1, 2):
        conn.execute("INSERT INTO tickets (id, number, subject, requester_id, queue, mailbox, created_at, updated_at)"
                     " VALUES (?, ?, 'Old one', 1, 'IT', 'support@example.test', ?, ?)", (tid, f"HD-{tid}", tid, tid))
    conn.execute("INSERT INTO articles (ticket_id, from_addr, subject, body_text, created_at) VALUES"
                 " (1, 'a@c.test', 'Old one', 'first', 1), (1, 'a@c.test', 'Re', 'walrus', 2),"
                 " (2, 'a@c.test', 'Old one', 'walrus too', 3), (2, 'a@c.test', 'x', 'enc1:gAAAA', 4)")
    conn.commit()
    conn.close()
    store = SqliteStore(tmp_path / "old.db")
    await store.open()
    try:
        items, _ = await store.tickets_page(TicketPage(text="walrus"))
        assert [t["id"] for t in items] == [2, 1]
        assert (await store.tickets_page(TicketPage(text="gAAAA")))[0] == []  # ciphertext is not indexed
        rows = await store.query("SELECT rowid FROM ticket_search ORDER BY rowid")
        assert [r[0] for r in rows] == [(1 << 20) | 1, (1 << 20) | 2, (2 << 20) | 1]
    finally:
        await store.close()
