"""Every mail of the shared corpus through SMTP DATA into a ticket or the quarantine: no crash, no hang."""
from __future__ import annotations

from pathlib import Path

import aiosmtplib
import pytest

from .conftest import CORPORA, queued_id

MAIL = CORPORA / "mail"


def corpus_files() -> list[Path]:
    return sorted(MAIL.rglob("*.eml")) if MAIL.is_dir() else []


async def test_whole_mail_corpus_through_smtp(start_gateway):
    files = corpus_files()
    if not files:
        pytest.skip(f"mail corpus absent at {MAIL}: nothing to feed")
    gw = await start_gateway(smtp={"max_message_size": "25MiB"})
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, timeout=20, start_tls=False)
    await client.connect()
    sent: dict[str, Path] = {}
    refused: dict[Path, str] = {}
    for path in files:
        raw = path.read_bytes()
        try:
            _e, text = await client.sendmail("corpus@customer.test", ["support@example.test"], raw)
            sent[queued_id(text)] = path
        except aiosmtplib.SMTPResponseException as exc:  # a clean SMTP rejection is acceptable
            assert exc.code // 100 in (4, 5) and exc.message[:1] in "45", (path, exc)
            refused[path] = f"{exc.code} {exc.message}"
            await client.rset()
    await client.quit()
    states: dict[str, int] = {}
    for sid, path in sent.items():
        entry = await gw.wait_done(sid, timeout=30)
        states[entry.state] = states.get(entry.state, 0) + 1
        assert entry.state in ("ticket_created", "article_added", "suppressed", "quarantined"), path
        if entry.state == "quarantined":
            assert entry.reason, f"{path}: quarantined without a reason"
    print(f"\ncorpus: {len(files)} files, {len(sent)} accepted, {len(refused)} refused, states {states}")
    for path, reply in refused.items():
        print(f"  refused {path.relative_to(MAIL)}: {reply}")
    assert len(sent) + len(refused) == len(files)
    tickets = await gw.store.tickets_list()
    assert tickets, "no corpus mail became a ticket"
    for t in tickets:
        full = await gw.store.ticket_get(str(t["id"]))
        for art in full["articles"]:
            assert isinstance(art["body_text"], str) and isinstance(art["subject"], str)
