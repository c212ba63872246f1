"""Screenshots of the main pages (sign-in, queue, ticket; the queue on a phone) taken in the same browser as
the other UI tests. They go to a temporary folder; with TICKETMX_SCREENSHOTS=docs/screenshots they
replace the ones docs/ui.md and the README show (how they were made)."""
from __future__ import annotations

import os
from email.message import EmailMessage
from pathlib import Path

from ..conftest import ROOT, simple_message
from ..test_pipeline import send
from .conftest import Ui
from .test_ui_agent import ZONE

PNG = b"\x89PNG\r\n\x1a\n"


def html_mail() -> bytes:
    m = EmailMessage()
    m["From"] = "Alice Example <alice@customer.test>"
    m["To"] = "support@example.test"
    m["Subject"] = "Invoice 2026-118 shows the wrong VAT"
    m["Message-ID"] = "<shot-html@customer.test>"
    m["Date"] = "Sun, 22 Nov 2026 10:00:00 +0000"
    m.set_content("Hello,\n\nour invoice 2026-118 charges 21% VAT; we are exempt (see attached).\n\n"
                  "Kind regards,\nAlice\n\nOn Friday Support wrote:\n> Thanks for your order.\n")
    m.add_alternative("<p>Hello,</p><p>our invoice <b>2026-118</b> charges <span style=\"color:#a4161a\">21% VAT"
                      "</span>; we are exempt (see attached).</p><table border=1><tr><th>Line</th><th>Amount</th></tr>"
                      "<tr><td>Licence</td><td>1,200.00</td></tr><tr><td>VAT</td><td>252.00</td></tr></table>"
                      "<p>Kind regards,<br>Alice</p>", subtype="html")
    m.add_attachment(b"%PDF-1.4\n%fake exemption certificate\n", maintype="application", subtype="pdf",
                     filename="exemption.pdf")
    return bytes(m)


async def test_screenshots_of_the_main_pages(start_ui, dns_server, tmp_path: Path) -> None:
    dns_server.set_zone(ZONE)
    ui: Ui = await start_ui(queue=[{"name": "IT"}, {"name": "Billing"}])
    out = Path(os.environ.get("TICKETMX_SCREENSHOTS") or tmp_path)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    for i, (subject, sender) in enumerate([("VPN drops every 10 minutes", "bob@customer.test"),
                                           ("Printer on fire", "carol@customer.test"),
                                           ("Password reset link expired", "dave@customer.test")]):
        await ui.api.gw.wait_done(await send(ui.api.gw.port, simple_message(subject=subject, sender=sender,
                                                                            message_id=f"shot{i}@customer.test"),
                                             sender=sender))
    e = await ui.api.gw.wait_done(await send(ui.api.gw.port, html_mail()))
    number = (await ui.store.ticket_get(str(e.ticket_id)))["number"]
    await ui.user("ann@staff.test", "agent")
    page = await ui.page(viewport={"width": 1280, "height": 800})
    await page.goto("/ui/signin")
    await page.get_by_label("Email address").fill("ann@staff.test")
    await page.screenshot(path=str(out / "signin.png"))
    await ui.signin(page, "ann@staff.test")
    await page.get_by_role("link", name=number).wait_for()
    await page.screenshot(path=str(out / "queue.png"), full_page=True)
    await page.goto(f"/ui/tickets/{number}?html={e.article_id}")
    await page.frame_locator("iframe.mail").get_by_text("Licence").wait_for()
    await page.screenshot(path=str(out / "ticket.png"), full_page=True)
    phone = await ui.page(viewport={"width": 390, "height": 844}, is_mobile=True, device_scale_factor=2)
    await ui.signin(phone, "ann@staff.test")
    await phone.get_by_role("link", name=number).wait_for()
    await phone.screenshot(path=str(out / "queue-phone.png"))
    for name in ("signin", "queue", "ticket", "queue-phone"):
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, name
    assert not ui.guard.blocked and not ui.guard.csp_reports() and not ui.guard.errors, ui.guard.__dict__
