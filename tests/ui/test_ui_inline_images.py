"""Inline ``cid:`` images in the customer-HTML frame, in a real Chromium: a multipart/related mail sent
over SMTP shows its PNG in the ticket view's frame (as a data: URI: the frame's CSP stays
``img-src data:``), while a cid naming a text part, a missing part, bytes that only claim to be a PNG,
or an SVG shows no image; an image over the per-image cap shows the placeholder; and no request
leaves 127.0.0.1."""
from __future__ import annotations

import struct
import zlib
from email.message import EmailMessage

from gateway.ui import inline_images

from ..test_pipeline import send
from .conftest import Ui


def png(width: int, height: int, pad: int = 0) -> bytes:
    """A real RGB PNG of the given size (red); ``pad`` adds an ancillary chunk to make it bigger."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    extra = chunk(b"tEXt", b"pad\x00" + b"x" * pad) if pad else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + extra
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


SVG = b"<svg xmlns='http://www.w3.org/2000/svg' width='9' height='9' onload='alert(1)'><rect width='9' height='9'/></svg>"


def related_mail(big: bool = False) -> bytes:
    m = EmailMessage()
    m["From"] = "Alice <alice@customer.test>"
    m["To"] = "support@example.test"
    m["Subject"] = "Screenshot of the error"
    m["Message-ID"] = "<inline1@customer.test>"
    m["Date"] = "Sun, 22 Nov 2026 10:00:00 +0000"
    m.set_content("See the screenshot.\n")
    m.add_alternative(
        "<html><body><p>Inline marker</p>"
        "<img src=\"cid:shot@customer.test\" alt=\"shot\">"
        "<img src=\"cid:notes@customer.test\" alt=\"notes\">"
        "<img src=\"cid:missing@customer.test\" alt=\"missing\">"
        "<img src=\"cid:fake@customer.test\" alt=\"fake\">"
        "<img src=\"cid:vector@customer.test\" alt=\"vector\">"
        "<img src=\"cid:big@customer.test\" alt=\"big\">"
        "<img src=\"http://evil.example/pixel.png\" alt=\"remote\">"
        "</body></html>", subtype="html")
    html = m.get_payload()[1]
    html.add_related(png(7, 5), "image", "png", cid="<shot@customer.test>", filename="shot.png")
    html.add_related(b"just text\n", "text", "plain", cid="<notes@customer.test>")
    html.add_related(b"<html>not a png</html>", "image", "png", cid="<fake@customer.test>", filename="fake.png")
    html.add_related(SVG, "image", "svg+xml", cid="<vector@customer.test>", filename="v.svg")
    if big:
        html.add_related(png(3, 3, pad=inline_images.MAX_IMAGE + 1000), "image", "png",
                         cid="<big@customer.test>", filename="big.png")
    return bytes(m)


async def _width(frame, alt: str) -> int:
    return await frame.locator(f"img[alt={alt}]").evaluate("e => e.complete ? e.naturalWidth : -1")


async def test_cid_png_shows_and_nothing_else_does(start_ui) -> None:
    ui: Ui = await start_ui(smtp={"max_message_size": "8MB"})
    e = await ui.api.gw.wait_done(await send(ui.api.gw.port, related_mail(big=True)))
    assert e.state == "ticket_created", e.reason
    t = await ui.store.ticket_get(str(e.ticket_id))
    article = t["articles"][0]
    assert {x["content_id"] for x in article["attachments"]} >= {"shot@customer.test", "fake@customer.test"}
    await ui.user("agent@example.test", "agent")
    page = await ui.page()
    await ui.signin(page, "agent@example.test")
    await page.goto(f"/ui/tickets/{t['number']}?html={article['id']}")
    frame = page.frame_locator("iframe.mail")
    await frame.get_by_text("Inline marker").wait_for()
    await page.wait_for_function("() => true")
    await frame.locator("img[alt=shot]").wait_for()
    for _ in range(50):      # let every image finish decoding (or fail)
        if await _width(frame, "shot") >= 0 and await _width(frame, "big") >= 0:
            break
        await page.wait_for_timeout(100)
    assert await _width(frame, "shot") == 7                       # the PNG part, shown
    assert await _width(frame, "big") == 220                      # over the cap: the placeholder image
    for alt in ("notes", "missing", "fake", "vector", "remote"):
        img = frame.locator(f"img[alt={alt}]")
        assert await img.evaluate("e => e.naturalWidth") == 0, alt
        assert await img.get_attribute("src") in (None, "http://evil.example/pixel.png"), alt
    src = await frame.locator("img[alt=shot]").get_attribute("src")
    assert src and src.startswith("data:image/png;base64,iVBORw0KGgo")
    g = ui.guard
    assert not g.blocked, g.blocked
    assert not g.dialogs and not g.errors, (g.dialogs, g.errors)
    assert all(u.startswith(ui.base) or u.startswith("data:") for u in g.requests), g.requests
    # the frame's policy did not widen
    fsrc = await page.locator("iframe.mail").get_attribute("src")
    r = await page.request.get(fsrc, headers={"Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "same-origin"})
    assert "img-src data:;" in r.headers["content-security-policy"]
