"""HTML sanitising for ticket display, with nh3 (Rust ammonia, an html5ever parser).

:func:`sanitize_html` keeps the formatting of ordinary mail (tables, fonts, colours, inline
styles of a vetted property list) and removes everything that executes or loads:

* ``script``, ``style``, ``svg``, ``math``, ``iframe``, ``object``, ``embed``, ``applet``,
  ``noscript``, ``template``, ``title`` are removed *with their content*; ``form``, ``input``,
  ``button``, ``base``, ``meta``, ``link`` and every other unlisted element are removed (their
  text stays);
* every ``on*`` handler and every attribute not on the allow list (``srcset``, ``formaction``,
  ``xlink:href``, ``background``, ``id``, ``class``, ``name`` ...) is dropped;
* URLs: ``href`` may be http(s), mailto, tel or cid; ``img src`` may be ``cid:`` (inline
  images, kept), ``data:image/{png,jpeg,gif,webp,bmp}`` (unless disabled) and http(s) only
  with ``allow_remote`` (remote images are tracking pixels; blocked by default). Relative URLs
  are removed (there is no base to resolve them against). The scheme is judged after removing
  whitespace and control characters and after percent-decoding, so ``java&#09;script:``,
  ``&#106;avascript:`` and ``%6Aavascript:`` are caught (html5ever already decoded entities);
* ``style`` attributes keep only listed properties whose values contain no function other
  than rgb()/rgba()/hsl()/hsla(), no ``url``, ``expression``, ``behavior``, ``-moz-binding``,
  ``@import``, backslash escapes or comments;
* links get ``rel="noopener noreferrer nofollow"`` and ``target="_blank"``.

Stage ``html`` (:class:`gateway.pipeline.stages.core.HtmlStage`) applies it to ``parsed.body_html`` and continues with
``{"html": <sanitised>, "remote_images_blocked": n}``: the ticket stores and shows only that
(and the text rendering); the raw original stays in the spool.
"""
from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable
from urllib.parse import unquote

import nh3


__all__ = ["cid_references", "rewrite_cid_images", "sanitize_html", "sanitize_html_report", "url_scheme"]

_TAGS = (set(nh3.ALLOWED_TAGS) | {"font", "tfoot", "big", "center", "u", "s", "strike"}) - {"map", "area"}
_CLEAN_CONTENT = {"script", "style", "svg", "math", "iframe", "object", "embed", "applet", "noscript",
                  "template", "title", "noembed", "noframes", "xmp", "plaintext", "frameset", "frame",
                  "textarea", "select"}
_COMMON = {"style", "title", "dir", "lang", "align", "valign", "width", "height", "bgcolor"}
_ATTRIBUTES: dict[str, set[str]] = {
    "*": _COMMON,
    "a": {"href"},
    "img": {"src", "alt", "border", "hspace", "vspace"},
    "font": {"color", "face", "size"},
    "table": {"border", "cellpadding", "cellspacing", "summary"},
    "td": {"colspan", "rowspan", "nowrap", "scope", "headers"},
    "th": {"colspan", "rowspan", "nowrap", "scope", "headers"},
    "col": {"span"}, "colgroup": {"span"},
    "ol": {"start", "type", "reversed"}, "ul": {"type"}, "li": {"value"},
    "time": {"datetime"}, "data": {"value"}, "bdo": {"dir"}, "hr": {"size", "noshade"},
}
_LINK_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid"})
_DATA_IMAGE = re.compile(r"^data:image/(?:png|jpeg|jpg|gif|webp|bmp);base64,[a-z0-9+/=\s]*$", re.IGNORECASE)
_STYLE_PROPS = frozenset({
    "color", "background-color", "background", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "line-height", "letter-spacing", "word-spacing", "text-align",
    "text-decoration", "text-indent", "text-transform", "white-space", "vertical-align", "direction",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left", "border-color", "border-style",
    "border-width", "border-collapse", "border-spacing", "border-radius",
    "width", "height", "max-width", "min-width", "max-height", "min-height", "display",
    "list-style-type", "table-layout", "word-wrap", "word-break", "overflow-wrap", "float", "clear",
    "caption-side", "empty-cells", "text-overflow",
})
_STYLE_BAD_CHARS = ("\\", "/*", "*/", "<", ">", "@", "&", "{", "}")
_STYLE_BAD_WORDS = ("expression", "url", "javascript", "vbscript", "behavior", "binding", "import",
                    "eval", "script", "image-set", "element(")
_CSS_FUNC = re.compile(r"([a-z-]+)\s*\(")
_CSS_OK_FUNCS = frozenset({"rgb", "rgba", "hsl", "hsla"})
_INVISIBLE = re.compile("[\x00-\x20\x7f-\xa0\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ufeff]+")


def url_scheme(url: str) -> str:
    """The scheme a browser would see, lower-cased ("" for relative URLs).

    Browsers strip leading/trailing C0 controls and spaces and remove tabs/newlines anywhere;
    we remove every invisible character and also judge the percent-decoded form (stricter).
    """
    for candidate in (url, unquote(url)):
        s = _INVISIBLE.sub("", unicodedata.normalize("NFKC", candidate)).lower()
        m = re.match(r"^([a-z][a-z0-9+.-]*):", s)
        if m:
            return m.group(1)
    return ""


_STYLE_CACHE: dict[str, str | None] = {}


def _clean_style(value: str) -> str | None:
    """The vetted declarations of one style attribute. Mail repeats the same few style strings
    hundreds of times (every paragraph of an HTML signature template), so results are cached:
    on a 50 KB HTML body this was two thirds of the sanitiser's time."""
    try:
        return _STYLE_CACHE[value]
    except KeyError:
        pass
    out = _vet_style(value)
    if len(value) <= 1000:
        if len(_STYLE_CACHE) >= 4096:
            _STYLE_CACHE.clear()
        _STYLE_CACHE[value] = out
    return out


def _vet_style(value: str) -> str | None:
    if any(c in value for c in _STYLE_BAD_CHARS):
        return None
    kept = []
    for decl in value.split(";"):
        prop, sep, val = decl.partition(":")
        prop = prop.strip().lower()
        val = " ".join(val.split())
        if not sep or prop not in _STYLE_PROPS or not val:
            continue
        low = _INVISIBLE.sub("", val.lower())
        if any(w in low for w in _STYLE_BAD_WORDS):
            continue
        if any(f not in _CSS_OK_FUNCS for f in _CSS_FUNC.findall(low)):
            continue
        if low.count("(") != low.count(")"):
            continue
        kept.append(f"{prop}: {val}")
    return "; ".join(kept) or None


class _Counter(threading.local):
    blocked = 0


_COUNTER = _Counter()


def _make_filter(allow_remote: bool, allow_data_images: bool):
    cache, miss = _STYLE_CACHE, object()

    def attribute_filter(element: str, attribute: str, value: str) -> str | None:
        if attribute == "style":  # the hot case (hundreds per message): one dict lookup when seen before
            hit = cache.get(value, miss)
            return _clean_style(value) if hit is miss else hit
        attribute = attribute.lower()
        if attribute.startswith("on"):
            return None
        if attribute == "style":
            return _clean_style(value)
        if attribute == "href":
            scheme = url_scheme(value)
            return value.strip() if scheme in _LINK_SCHEMES else None
        if attribute == "src":
            if element != "img":
                return None
            scheme = url_scheme(value)
            if scheme == "cid":
                return value.strip()
            if scheme in ("http", "https"):
                if allow_remote:
                    return value.strip()
                _COUNTER.blocked += 1
                return None
            if scheme == "data" and allow_data_images and _DATA_IMAGE.match(value.strip()):
                return value.strip()
            return None
        return value
    return attribute_filter


_CLEANERS: dict[tuple[bool, bool], object] = {}
_LOCK = threading.Lock()


def _kwargs(allow_remote: bool, allow_data_images: bool) -> dict:
    return dict(
        tags=_TAGS, clean_content_tags=_CLEAN_CONTENT, attributes=_ATTRIBUTES,
        attribute_filter=_make_filter(allow_remote, allow_data_images), strip_comments=True,
        link_rel="noopener noreferrer nofollow", set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes=set(_LINK_SCHEMES) | {"data"}, filter_style_properties=set(_STYLE_PROPS),
        url_relative="deny",
    )


def _cleaner(allow_remote: bool, allow_data_images: bool):
    key = (allow_remote, allow_data_images)
    c = _CLEANERS.get(key)
    if c is None and hasattr(nh3, "Cleaner"):
        with _LOCK:
            c = _CLEANERS.get(key)
            if c is None:
                c = _CLEANERS[key] = nh3.Cleaner(**_kwargs(allow_remote, allow_data_images))
    return c


def sanitize_html_report(html: str, allow_remote: bool = False, *, allow_data_images: bool = True
                         ) -> tuple[str, int]:
    """(sanitised HTML, number of remote images removed)."""
    if not html:
        return "", 0
    html = html.replace("\x00", "\ufffd")
    _COUNTER.blocked = 0
    c = _cleaner(allow_remote, allow_data_images)
    if c is not None:
        out = c.clean(html)                       # type: ignore[attr-defined]
    else:                                         # nh3 < 0.3: no reusable Cleaner
        out = nh3.clean(html, **_kwargs(allow_remote, allow_data_images))
    return out, _COUNTER.blocked


def sanitize_html(html: str, allow_remote: bool = False, *, allow_data_images: bool = True) -> str:
    """Sanitised HTML safe to show in the ticket view (see the module docstring)."""
    return sanitize_html_report(html, allow_remote, allow_data_images=allow_data_images)[0]


def rewrite_cid_images(html: str, resolve: Callable[[str], str | None]) -> str:
    """``html`` sanitised again with every ``<img src="cid:…">`` replaced by ``resolve(src)`` (None
    drops the src). Used by the UI's frame to inline a message's own images as ``data:`` URIs.

    The rewrite happens inside the sanitiser's parse (html5ever) and serialisation: the new value
    is written as an attribute value by the serialiser, which escapes it, so nothing in a Content-ID
    or in ``resolve``'s answer can end the attribute or the element. nh3 judges URL schemes *before*
    the filter, so ``resolve`` must answer only values it built itself (a vetted ``data:image/…``).
    Remote image URLs already in the stored HTML are kept as they are (the frame's CSP decides)."""
    base = _make_filter(True, True)

    def attribute_filter(element: str, attribute: str, value: str) -> str | None:
        if element == "img" and attribute.lower() == "src" and url_scheme(value) == "cid":
            try:
                return resolve(value.strip())
            except Exception:   # nh3 ignores a filter's exception and keeps the value: drop it instead
                return None
        return base(element, attribute, value)
    kwargs = _kwargs(True, True)
    kwargs["attribute_filter"] = attribute_filter
    return nh3.clean(html.replace("\x00", "\ufffd"), **kwargs)


def cid_references(html: str) -> list[str]:
    """The ``cid:`` image sources of ``html`` as the parser sees them (entities decoded), in order."""
    found: list[str] = []

    def record(src: str) -> str:
        found.append(src)
        return src
    rewrite_cid_images(html, record)
    return found
