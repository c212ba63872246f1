"""The customer's HTML, shown only inside ``<iframe sandbox>`` and served from its own route with its own
Content-Security-Policy (docs/ui.md, "Customer HTML").

What is stored is already sanitised at ingest (gateway/pipeline/stages/htmlsafe.py: no script, no
handler, no javascript: URL, no remote image unless configured). This route adds three walls on top:

* the frame's document gets ``default-src 'none'``: no script, no fetch, no font, no frame, no form
  target; ``style-src 'unsafe-inline'`` only (mail layout lives in style attributes); ``img-src data:``
  — remote images stay blocked until the agent asks (``?images=1``, below);
* the iframe has ``sandbox`` without allow-scripts and allow-same-origin (an opaque origin: even a
  script that slipped through could neither run nor reach the UI's cookies or DOM), and the response
  repeats it as the CSP ``sandbox`` directive, so the URL opened on its own is sandboxed too;
* it is served only as a frame of our own pages: ``frame-ancestors 'self'``, and a browser's
  ``Sec-Fetch-Dest``/``Sec-Fetch-Site`` must say "iframe" from "same-origin" when sent.

``?images=1`` (the "show remote images" link of that one article) re-serves the same HTML with
``img-src data: https:``. It changes nothing stored and nothing for other articles or tickets;
``Referrer-Policy: no-referrer`` keeps the ticket URL from the image hosts; it still needs the signed-in
session (and the Sec-Fetch check stops another site from opening it to fire a tracking pixel).

The mail's own inline images (``cid:``) are written into the document as ``data:`` URIs when they are
proved PNG, JPEG, GIF or WebP of bounded size (gateway/ui/inline_images.py): no policy change needed.
"""
from __future__ import annotations

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape

from gateway.http import api_tickets
from gateway.http.deps import Problem, services
from gateway.ui.inline_images import inline_cid_images
from gateway.ui.web import Page, page, router_for

router = router_for()

FRAME_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
FRAME_EXTRA = "; frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"


def frame_headers(images: bool) -> dict[str, str]:
    csp = FRAME_CSP.replace("img-src data:", "img-src data: https:") if images else FRAME_CSP
    return {"Content-Security-Policy": csp + FRAME_EXTRA, "X-Frame-Options": "SAMEORIGIN",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "same-origin"}


def _check_fetch(request: Request) -> None:
    dest = request.headers.get("sec-fetch-dest")
    site = request.headers.get("sec-fetch-site")
    if (dest is not None and dest != "iframe") or (site is not None and site != "same-origin"):
        raise Problem(403, "Forbidden", "the message's HTML is shown only inside its ticket page")


@router.get("/ui/tickets/{number}/articles/{article_id}/html", response_class=HTMLResponse)
async def article_html(request: Request, number: str, article_id: int, images: int = 0,
                       p: Page = Depends(page("viewer"))) -> HTMLResponse:
    _check_fetch(request)
    t = await api_tickets._ticket(request, p.who, number)
    a = next((a for a in t["articles"] if a["id"] == article_id), None)
    if a is None or not a["body_html"]:
        raise Problem(404, "Not Found", f"no HTML article {article_id} on ticket {t['number']}")
    svc = services(request)
    body = await inline_cid_images(svc.store, svc.executor, a["body_html"], a["attachments"])
    doc = Markup("<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">"
                 "<title>{}</title></head><body>").format(escape(a["subject"])) + Markup(body) + \
        Markup("</body></html>")
    return HTMLResponse(str(doc), headers=frame_headers(bool(images)))
