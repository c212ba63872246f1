"""HTML sanitising: an XSS payload set with zero surviving executable content, plus formatting kept."""
from __future__ import annotations

import html as html_lib
import re
from html.parser import HTMLParser

import pytest

from gateway.pipeline.stages.htmlsafe import sanitize_html, sanitize_html_report, url_scheme
from gateway.pipeline.stages.core import HtmlStage
from gateway.config.pipeline import HtmlPolicy
from gateway.pipeline.stages.core import CONTINUE

from .helpers import inbound, run

PAYLOADS = [
    # script elements
    "<script>alert(1)</script>",
    "<SCRIPT SRC=http://xss.example/xss.js></SCRIPT>",
    "<script/xss src=http://xss.example/x.js></script>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<<script>script>alert(1)//<</script>/script>",
    '<img """><script>alert(1)</script>">',
    "<![CDATA[<script>alert(1)</script>]]>",
    # event handlers
    "<img src=x onerror=alert(1)>",
    "<img src=x:alert(alt) onerror=eval(src) alt=0>",
    "<body onload=alert(1)>text",
    "<details open ontoggle=alert(1)>x</details>",
    "<marquee onstart=alert(1)>x</marquee>",
    "<input autofocus onfocus=alert(1)>",
    "<keygen autofocus onfocus=alert(1)>",
    "<a href=\"https://ok.example/\" onclick=\"alert(1)\" OnMouseOver='alert(2)'>ok</a>",
    "<img src=\"cid:abc\" onerror=\"alert(1)\">",
    "<div/onmouseover='alert(1)'>x</div>",
    "<frameset onload=alert(1)>",
    "<audio src=x onerror=alert(1)>",
    "<video poster=\"javascript:alert(1)\"><source src=\"x\" onerror=\"alert(1)\"></video>",
    # SVG / MathML
    "<svg onload=alert(1)>",
    "<svg/onload=alert(1)//",
    "<svg><script>alert(1)</script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text x="20" y="20">XSS</text></a></svg>',
    "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
    '<svg><set attributeName="href" to="javascript:alert(1)"/></svg>',
    '<svg><use href="data:image/svg+xml;base64,PHN2ZyBpZD0neCcgb25sb2FkPSdhbGVydCgxKScvPg==#x"/></svg>',
    '<math href="javascript:alert(1)">CLICK</math>',
    '<math><maction actiontype="statusline" xlink:href="javascript:alert(1)">x</maction></math>',
    # CSS
    '<div style="width: expression(alert(1))">x</div>',
    '<div style="xss:expr/*XSS*/ession(alert(1))">x</div>',
    '<div style="width: ex\\70 ression(alert(1))">x</div>',
    '<img src="x" style="x:\\65xpression(alert(1))">',
    '<span style="color:&#x65;xpression(alert(1))">x</span>',
    '<p style="font-family: x; width: calc(1px + expression(alert(1)))">x</p>',
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<div style="background-image: url(&#1;javascript:alert(1))">x</div>',
    '<div style="behavior: url(xss.htc)">x</div>',
    '<div style="-moz-binding: url(http://xss.example/xss.xml#xss)">x</div>',
    '<div style="list-style-image: url(javascript:alert(1))">x</div>',
    "<style>@import 'http://xss.example/x.css';</style>",
    '<style>body{background:url("javascript:alert(1)")}</style>',
    "<STYLE>li {list-style-image: url(\"javascript:alert('XSS')\");}</STYLE><UL><LI>XSS</br>",
    '<link rel=stylesheet href="http://xss.example/x.css">',
    # encoded / obfuscated javascript: URLs
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JAVASCRIPT:alert(1)">x</a>',
    "<IMG SRC=JaVaScRiPt:alert('XSS')>",
    "<IMG SRC=`javascript:alert(\"RSnake says, 'XSS'\")`>",
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    '<a href="&#x6A&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3A;alert(1)">x</a>',
    '<a href="&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105&#0000112&#0000116'
    '&#0000058&#0000097&#0000108&#0000101&#0000114&#0000116&#0000040&#0000049&#0000041">x</a>',
    '<img src=&#x6A;avascript:alert(1)>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    '<a href="jav&#x0A;ascript:alert(1)">x</a>',
    '<a href="jav&#x0D;ascript:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<a href=" &#14;  javascript:alert(1)">x</a>',
    '<a href="\x01javascript:alert(1)">x</a>',
    '<a href="javas\x00cript:alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="%6A%61%76%61%73%63%72%69%70%74:alert(1)">x</a>',
    '<a href="javascript://%0aalert(1)">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="VBScript&#58;msgbox(1)">x</a>',
    '<a href="ｊａｖａｓｃｒｉｐｔ:alert(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="data:image/png;base64,AAAA">x</a>',
    '<img src="data:text/html,<script>alert(1)</script>">',
    '<img src="data:image/svg+xml,<svg onload=alert(1)>">',
    '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    '<IMG LOWSRC="javascript:alert(1)"><IMG DYNSRC="javascript:alert(1)">',
    "<BGSOUND SRC=\"javascript:alert('XSS');\">",
    '<LAYER SRC="http://xss.example/scriptlet.html"></LAYER>',
    # frames, objects, forms
    '<iframe src="javascript:alert(1)"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="javascript:alert(1)"></object>',
    '<object type="text/x-scriptlet" data="http://xss.example/scriptlet.html"></object>',
    '<embed src="data:image/svg+xml;base64,PHN2Zy9vbmxvYWQ9YWxlcnQoMSk+">',
    '<applet code="x.class" codebase="http://xss.example/"></applet>',
    '<form action="javascript:alert(1)"><input type=submit></form>',
    '<form><button formaction="javascript:alert(1)">X</button></form>',
    '<form id=test onforminput=alert(1)><input></form><button form=test onformchange=alert(2)>X</button>',
    '<isindex action="javascript:alert(1)" type=image>',
    '<input type="image" src="javascript:alert(1)">',
    # base / meta / srcset / remote loads
    '<base href="javascript:alert(1)//"><a href="/x">x</a>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<meta http-equiv="refresh" content="0; url=data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">',
    '<img srcset="http://xss.example/a.png 1x, javascript:alert(1) 2x">',
    '<picture><source srcset="http://tracker.example/p.png"><img src="cid:x"></picture>',
    '<img src="http://tracker.example/pixel.gif" width=1 height=1>',
    '<img src="//tracker.example/pixel.gif">',
    '<img src="https://tracker.example/pixel.gif?u=alice">',
    '<table background="javascript:alert(1)"><tr><td background="http://tracker.example/bg.png">x</td></tr></table>',
    '<div style="background: url(//tracker.example/p.png)">x</div>',
    "<div style=\"color: red; background-image: url('http://tracker.example/x.png')\">x</div>",
    # comments, raw text elements and mXSS shapes
    '<!--<img src="--><img src=x onerror=alert(1)//">',
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "<xmp><img src=x onerror=alert(1)></xmp>",
    "<title><img src=x onerror=alert(1)></title>",
    "<textarea><script>alert(1)</script></textarea>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<svg></p><style><a id="</style><img src=1 onerror=alert(1)>">',
    '<math><mi><mglyph><svg><mtext><textarea><path id="</textarea><img onerror=alert(1) src=1>">',
    "<form><math><mtext></form><form><mglyph><style></math><img src onerror=alert(1)>",
    "<noscript><style></noscript><img src=x onerror=alert(1)>",
    '<template><img src=x onerror=alert(1)></template>',
    '<a href="javascript:alert(1)"><a href="cid:ok">nested</a></a>',
    '<div><p><table><tr><td><a href="javascript:alert(1)"',
    '<a href=javascript:alert(1)',
]

FORBIDDEN_TAGS = {"script", "iframe", "object", "embed", "applet", "form", "input", "button", "svg", "math",
                  "style", "base", "meta", "link", "frame", "frameset", "isindex", "keygen", "template",
                  "noscript", "audio", "video", "source", "picture", "bgsound", "layer", "textarea", "select",
                  "animate", "set", "use", "xmp", "title"}
URL_ATTRS = {"href", "src", "action", "formaction", "xlink:href", "background", "poster", "srcset", "data",
             "codebase", "cite", "dynsrc", "lowsrc", "longdesc", "ping", "manifest", "usemap", "classid",
             "archive", "icon", "srcdoc", "to", "values", "from"}
_CTRL = re.compile(r"[\x00-\x20\x7f-\x9f]+")
_SAFE_DATA = re.compile(r"^data:image/(png|jpeg|jpg|gif|webp|bmp);base64,", re.I)


class Audit(HTMLParser):
    """Re-parse the sanitiser's output and list everything that could execute or load."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in FORBIDDEN_TAGS:
            self.problems.append(f"element <{tag}>")
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                self.problems.append(f"handler {name} on <{tag}>")
            if name in URL_ATTRS or name.endswith(":href"):
                url = _CTRL.sub("", html_lib.unescape(value)).lower()
                if url.startswith(("javascript:", "vbscript:", "data:text", "livescript:", "mocha:")):
                    self.problems.append(f"{name}={value!r} on <{tag}>")
                if url.startswith("data:") and not (tag == "img" and name == "src" and _SAFE_DATA.match(url)):
                    self.problems.append(f"data: URL {name}={value[:40]!r} on <{tag}>")
                if url.startswith(("http:", "https:", "//")) and name != "href":
                    self.problems.append(f"remote load {name}={value!r} on <{tag}>")
                if name in ("srcset", "background", "poster", "action", "formaction", "srcdoc"):
                    self.problems.append(f"attribute {name} on <{tag}>")
            if name == "style":
                css = re.sub(r"/\*.*?\*/", "", html_lib.unescape(value).lower().replace("\\", ""))
                css = _CTRL.sub("", css)
                for bad in ("expression", "javascript:", "vbscript:", "url(", "behavior", "binding", "@import"):
                    if bad in css:
                        self.problems.append(f"style {bad!r} on <{tag}>")

    handle_startendtag = handle_starttag


class _Canon(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[tuple] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.items.append(("start", tag, tuple(sorted(attrs, key=lambda a: a[0]))))

    def handle_endtag(self, tag: str) -> None:
        self.items.append(("end", tag))

    def handle_data(self, data: str) -> None:
        self.items.append(("data", data))


def canonical(out: str) -> list[tuple]:
    """The parse of ``out`` with attribute order ignored (ammonia may order rel/target either way)."""
    c = _Canon()
    c.feed(out)
    c.close()
    return c.items


def audit(out: str) -> list[str]:
    a = Audit()
    a.feed(out)
    a.close()
    return a.problems


def test_payload_set_size() -> None:
    assert len(PAYLOADS) >= 100


@pytest.mark.parametrize("payload", PAYLOADS)
def test_no_executable_content_survives(payload: str) -> None:
    out = sanitize_html(payload)
    assert audit(out) == [], (payload, out)
    # stable: sanitising the output again changes nothing (no mutation left for a second parse to find)
    assert canonical(sanitize_html(out)) == canonical(out)
    # also with remote images allowed, nothing executable appears
    out2 = sanitize_html(payload, allow_remote=True)
    assert [p for p in audit(out2) if not p.startswith("remote load src=")] == [], (payload, out2)


def test_all_payloads_in_one_document() -> None:
    doc = "<html><head><title>t</title></head><body>" + "\n".join(PAYLOADS) + "</body></html>"
    assert audit(sanitize_html(doc)) == []


def test_ordinary_mail_formatting_survives() -> None:
    mail = """<html><head><style>p{margin:0}</style></head><body>
    <div style="font-family: Calibri, sans-serif; font-size: 11pt; color: #1f497d">Hello <b>Bob</b>,</div>
    <table border="1" cellpadding="2" style="border-collapse: collapse; width: 100%">
      <tr><td bgcolor="#eeeeee" valign="top">Item</td><td align="right">12,00 &euro;</td></tr></table>
    <p>See <a href="https://wiki.example/page?id=1&amp;x=2">the wiki</a> or
       <a href="mailto:help@example.test">mail us</a>.</p>
    <p><img src="cid:image001.png@01D9" alt="logo" width="120" height="40"></p>
    <p><font color="red" face="Arial">red text</font></p>
    <ul><li>one</li><li>two</li></ul><blockquote>quoted</blockquote>
    <p style="color: rgb(31, 73, 125); margin: 0 0 8px 0">rgb colour</p></body></html>"""
    out = sanitize_html(mail)
    for kept in ('<b>Bob</b>', 'font-family:', 'color:#1f497d', '<table', 'border="1"', 'bgcolor="#eeeeee"',
                 'href="https://wiki.example/page?id=1&amp;x=2"', 'href="mailto:help@example.test"',
                 'src="cid:image001.png@01D9"', 'alt="logo"', '<font color="red" face="Arial">', '<li>one</li>',
                 '<blockquote>quoted</blockquote>', 'rel="noopener noreferrer nofollow"', 'target="_blank"',
                 'rgb(31, 73, 125)'):
        assert kept in out, (kept, out)
    assert "p{margin:0}" not in out and audit(out) == []


def test_remote_images_blocked_and_counted() -> None:
    html = '<img src="https://cdn.example/a.png"><img src="http://cdn.example/b.png"><img src="cid:c">'
    out, blocked = sanitize_html_report(html)
    assert blocked == 2 and "cdn.example" not in out and 'src="cid:c"' in out
    out, blocked = sanitize_html_report(html, allow_remote=True)
    assert blocked == 0 and 'src="https://cdn.example/a.png"' in out


def test_data_images() -> None:
    png = '<img src="data:image/png;base64,iVBORw0KGgo=">'
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in sanitize_html(png)
    assert "data:" not in sanitize_html(png, allow_data_images=False)


def test_url_scheme() -> None:
    assert url_scheme(" \x01java\tscript:alert(1)") == "javascript"
    assert url_scheme("%6Aavascript:x") == "javascript"
    assert url_scheme("https://x") == "https" and url_scheme("/relative") == "" and url_scheme("cid:a") == "cid"


def test_stage() -> None:
    raw = (b"From: a@example.org\r\nTo: support@example.test\r\nSubject: h\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n"
           b"<p onclick=alert(1)>Hi <img src=http://t.example/p.gif><script>x()</script></p>\r\n")
    v = run(HtmlStage(), inbound(raw))
    assert v.action == CONTINUE
    assert v.data == {"html": "<p>Hi <img></p>\n", "remote_images_blocked": 1}
    v = run(HtmlStage(HtmlPolicy(allow_remote_images=True)), inbound(raw))
    assert 'src="http://t.example/p.gif"' in v.data["html"]
    plain = b"From: a@example.org\r\nTo: support@example.test\r\nSubject: h\r\n\r\ntext\r\n"
    assert run(HtmlStage(), inbound(plain)).data == {}


def test_audit_itself_catches_the_raw_payloads() -> None:
    """The checker is not vacuous: unsanitised, almost every payload is flagged (the rest only
    execute in a browser's parser, e.g. CSS escapes or unterminated tags)."""
    flagged = sum(1 for p in PAYLOADS if audit(p))
    assert flagged >= 0.9 * len(PAYLOADS)


def test_style_cache_agrees_with_the_vetting() -> None:
    """Cached style results are the vetted ones, for good and bad values alike, on repeat."""
    from gateway.pipeline.stages import htmlsafe
    for value in ("margin:0", "color: red; position: fixed", "background:url(http://x)", "width:expression(1)",
                  "font-weight:bold;color:rgb(1,2,3)", "x" * 1500):
        for _ in range(2):
            assert htmlsafe._clean_style(value) == htmlsafe._vet_style(value)
    assert htmlsafe._clean_style("background:url(http://x)") is None
    assert "x" * 1500 not in htmlsafe._STYLE_CACHE


def test_style_fast_path_in_the_filter_sanitises_like_the_first_time() -> None:
    """The attribute filter answers repeated style values from the cache: the second and later
    sanitising of the same HTML (cache warm) gives exactly what the first one (cache cold) gave."""
    from gateway.pipeline.stages import htmlsafe
    values = ["margin:0", "color: red; position: fixed", "background:url(http://x)", "width:expression(1)",
              "font-weight:bold;color:rgb(1,2,3)", "x" * 1500, "COLOR:Blue", "behavior:url(a.htc)"]
    html = "".join(f'<p style="{v}" onclick="x()">p{i}</p><span STYLE="{v}">s</span>'
                   for i, v in enumerate(values * 3))
    htmlsafe._STYLE_CACHE.clear()
    cold = htmlsafe.sanitize_html(html)
    warm = htmlsafe.sanitize_html(html)
    assert cold == warm
    assert "position" not in cold and "expression" not in cold and "url(" not in cold and "onclick" not in cold
    assert 'style="margin: 0"' in cold or 'style="margin:0"' in cold
