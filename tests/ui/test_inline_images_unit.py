"""The cid: rewriting of gateway/ui/inline_images.py without a browser: hostile Content-IDs and cid URLs
cannot break out of the attribute, only proved PNG/JPEG/GIF/WebP bytes become data: URIs, and the caps
hold (per image, per frame)."""
from __future__ import annotations

import base64
from html.parser import HTMLParser
from typing import Any

from gateway.pipeline.stages.htmlsafe import cid_references, rewrite_cid_images
from gateway.ui import inline_images as ii

from .test_ui_inline_images import SVG, png

PNG = png(2, 2)
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00" \
      b"\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


class Tags(HTMLParser):
    """Every start tag with its attributes, as a browser-like tokenizer reads the output."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, Any]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def att(i: int, cid: str, ctype: str = "image/png", size: int = len(PNG)) -> dict[str, Any]:
    return {"id": i, "content_id": cid, "content_type": ctype, "size": size}


def run(html: str, atts: list[dict[str, Any]], data: dict[int, bytes]) -> str:
    """inline_cid_images' steps with the bytes given (the store's part is covered by the browser test)."""
    parts, verdicts = ii.plan(cid_references(html), atts)
    for p in parts.values():
        ii._encode(p, data[p.att["id"]])
    return ii.apply(html, verdicts)


HOSTILE = ['a"><script>alert(1)</script>', "x' onerror='alert(2)", "q>\"<img src=x onerror=alert(3)>",
           "</style><svg onload=alert(4)>", "sp ace\ttab\nnl@h", "%22%3E%3Cscript%3E", "&quot;&gt;@e"]


def test_hostile_content_ids_match_and_cannot_break_out() -> None:
    from html import escape
    from urllib.parse import quote
    for n, cid in enumerate(HOSTILE):
        for src in ("cid:" + escape(cid, quote=True), "cid:" + escape(quote(cid, safe="@"), quote=True)):
            html = f"<p>before</p><img alt=\"pic\" src=\"{src}\"><p>after</p>"
            out = run(html, [att(1, cid)], {1: PNG})
            tags = Tags(out).tags
            assert [t for t, _ in tags] == ["p", "img", "p"], (cid, out)
            img = tags[1][1]
            assert set(img) == {"alt", "src"}, (cid, out)
            assert img["src"] == "data:image/png;base64," + base64.b64encode(PNG).decode(), (n, src, out)
            assert "script" not in out and "onerror" not in out and "onload" not in out, out


def test_resolver_answers_are_escaped_by_the_serialiser() -> None:
    out = rewrite_cid_images('<img src="cid:x" alt=a>', lambda s: 'data:image/png;base64,AA"><script>x</script>')
    tags = Tags(out).tags
    assert [t for t, _ in tags] == ["img"] and tags[0][1]["src"].endswith('"><script>x</script>')
    assert "<script>" not in out


def test_a_cid_naming_another_image_does_not_match_and_unknown_ones_lose_src() -> None:
    html = '<img alt=a src="cid:one@x"><img alt=b src="cid:two@x"><img alt=c src="cid:">'
    out = run(html, [att(1, "one@x")], {1: PNG})
    srcs = [a.get("src") for _, a in Tags(out).tags]
    assert srcs[0].startswith("data:image/png;base64,") and srcs[1:] == [None, None]


def test_only_proved_formats_become_data_uris() -> None:
    html = "".join(f'<img alt={i} src="cid:p{i}">' for i in range(7))
    atts = [att(0, "p0"), att(1, "p1", "image/jpeg"), att(2, "p2", "image/svg+xml"), att(3, "p3", "text/html"),
            att(4, "p4", "image/gif"), att(5, "p5", "image/png"), att(6, "p6", "IMAGE/JPG; name=x.jpg")]
    data = {0: PNG, 1: PNG, 2: SVG, 3: b"<script>", 4: GIF, 5: SVG, 6: b"\xff\xd8\xff\xe0rest"}
    srcs = [a.get("src") for _, a in Tags(run(html, atts, data)).tags]
    assert srcs[0].startswith("data:image/png;base64,")
    assert srcs[1] is None                  # declared JPEG, bytes are PNG: not trusted
    assert srcs[2] is None and srcs[3] is None and srcs[5] is None   # SVG and HTML, declared or disguised
    assert srcs[4].startswith("data:image/gif;base64,R0lGODlh")
    assert srcs[6].startswith("data:image/jpeg;base64,/9j/")
    assert ii.proves("image/webp", b"RIFF\x10\x00\x00\x00WEBPVP8 ") and not ii.proves("image/webp", b"RIFFxxxxWAVE")


def test_caps_per_image_and_per_frame_give_the_placeholder() -> None:
    mib = 1024 * 1024
    refs = [f"cid:i{i}" for i in range(6)]
    atts = [att(0, "i0", size=2 * mib + 1)] + [att(i, f"i{i}", size=2 * mib) for i in range(1, 6)]
    parts, verdicts = ii.plan(refs, atts)
    assert verdicts[0] is ii.WITHHELD                                   # over 2 MiB
    assert [v is ii.WITHHELD for v in verdicts[1:]] == [False] * 4 + [True]   # the 5th would pass 8 MiB
    assert set(parts) == {"i1", "i2", "i3", "i4"}
    # the same image referenced again counts again: the frame's size stays bounded
    _, again = ii.plan(["cid:i1"] * 5, atts)
    assert sum(v is ii.WITHHELD for v in again) == 1
    out = ii.apply('<img src="cid:i0" alt=big>', verdicts[:1])
    assert Tags(out).tags[0][1]["src"] == ii.PLACEHOLDER
    assert base64.b64decode(ii.PLACEHOLDER.split(",", 1)[1]).startswith(b"\x89PNG")
    # bytes bigger than the metadata said are refused when encoded
    p = ii._Part(att(9, "z", size=10))
    ii._encode(p, PNG + b"\x00" * (ii.MAX_IMAGE + 1))
    assert p.data_uri is None


def test_html_without_cid_is_not_touched() -> None:
    import asyncio
    html = "<p>no images</p><script>kept as stored</script>"
    assert asyncio.run(ii.inline_cid_images(None, None, html, [att(1, "x")])) == html
