"""Reply templates and signatures on both backends (migration 0022: users.signature, reply_templates):
the store functions with their audit rows, and the browser suite of tests/ui/test_ui_replies.py unchanged
(tests/pg/conftest.py's ``start_gateway`` is parametrised over sqlite and postgres)."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.http import reply_templates as rt
from gateway.http.deps import Principal
from gateway.ui import users

from ..api.conftest import start_api  # noqa: F401 - fixtures
from ..smarthost import sink  # noqa: F401
from ..ui.conftest import browser, start_ui  # noqa: F401
from ..ui.test_ui_agent import tui  # noqa: F401
from ..ui.test_ui_replies import (  # noqa: F401 - collected by pytest
    test_api_lists_the_templates_of_the_token_queues, test_templates_and_signature_from_admin_to_the_customer,
    test_user_signature_command)

ADMIN = Principal(name="boss@staff.test", role="admin")


async def test_template_rows_and_signature(store: Any) -> None:
    a = await rt.save(store, ADMIN, "127.0.0.1", None, "Everyone", None, "Hi {{ requester.name }}")
    b = await rt.save(store, ADMIN, "127.0.0.1", None, "IT only", "IT", "IT {{ ticket.number }}")
    c = await rt.save(store, ADMIN, "127.0.0.1", None, "Billing only", "Billing", "bill")
    assert a.id != b.id != c.id and a.queue is None and b.queue == "IT" and a.created_by == "boss@staff.test"
    assert [t.name for t in await rt.list_for(store, ("IT",))] == ["Everyone", "IT only"]
    assert [t.name for t in await rt.list_for(store, ())] == ["Everyone"]
    assert len(await rt.list_for(store, None)) == 3
    assert await rt.get_for_queue(store, c.id, "IT") is None           # another queue's: not usable
    assert (await rt.get_for_queue(store, a.id, "Billing")).name == "Everyone"
    with pytest.raises(rt.TemplateError, match="exists"):
        await rt.save(store, ADMIN, "127.0.0.1", None, "Everyone", None, "again")
    up = await rt.save(store, ADMIN, "127.0.0.1", b.id, "IT team", "IT", "changed")
    assert (up.id, up.name, up.body) == (b.id, "IT team", "changed") and up.updated >= b.updated
    assert (await rt.delete(store, ADMIN, "127.0.0.1", c.id)).name == "Billing only"
    assert await rt.delete(store, ADMIN, "127.0.0.1", c.id) is None
    assert await rt.get(store, c.id) is None
    audit = [(r[0], r[1]) for r in await store.query("SELECT action, target FROM audit_log ORDER BY id")]
    assert audit == [("template.add", "Everyone"), ("template.add", "IT only"), ("template.add", "Billing only"),
                     ("template.update", "IT team"), ("template.delete", "Billing only")]
    # the signature column
    u = await users.create(store, "ann@staff.test", "agent", ("IT",), "x", created_by="test")
    assert u.signature == ""
    assert await users.set_signature(store, "ANN@staff.test", "Ann\nSupport", "ann@staff.test", "agent")
    assert (await users.get(store, "ann@staff.test")).signature == "Ann\nSupport"
    assert not await users.set_signature(store, "nobody@staff.test", "x", "test")
