"""Split a reply into what the sender wrote now, the quoted history and the signature.

Pure functions, no I/O. ``split_reply(text, html)`` looks at the plain text first and
falls back to the HTML structure (blockquotes, Gmail/Yahoo/Thunderbird/Outlook quote
containers, separator rules) when the text shows no quote.

How the plain text is read (ideas after talon's line marking; no code taken):

* every line is *blank*, *quoted* (``>``-prefixed) or *text*;
* a **splitter** starts quoted history that is *not* marked line by line: "-----Original
  Message-----", "---------- Forwarded message ---------", "Begin forwarded message:",
  an ``On … wrote:`` attribution with a date or address (also wrapped over up to four
  lines, and in the localised forms below), or a header block (``From:``/``Sent:``/
  ``To:``/``Subject:`` and their translations, optionally after an underscore rule).
  Everything from a splitter to the end is quoted;
* a run of ``>`` lines is quoted; the attribution just above it (a line ending with ``:``
  that names a date, an address or "wrote") belongs to it. Text *after* such a run is an
  inline or bottom-posted reply and stays in the new text;
* the signature is then looked for at the end of the reply: ``-- `` or a dash rule, "Sent
  from my …" lines, a sign-off ("Thanks,", "Best regards,", "Mit freundlichen Grüßen", …)
  followed by a few short lines, or a final block that starts with the sender's name or
  is mostly contact details.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ReplyParts", "split_reply", "split_text", "split_html", "strip_html_quotes", "extract_signature",
    "header_line", "FORWARD_MARKER", "ORIGINAL_MARKER",
]

# Work limits: beyond these the input is treated as having no quote structure we analyse.
MAX_TEXT_CHARS = 2_000_000
MAX_HTML_CHARS = 2_000_000
MAX_HTML_TAGS = 20_000        # rendering costs ~5-20 us a tag (inscriptis): 1 MB of tags took seconds
_ATTRIBUTION_MAX_LINES = 4
_ATTRIBUTION_MAX_CHARS = 400
_SIGNATURE_MAX_LINES = 15          # non-blank lines a signature may span


@dataclass(frozen=True, slots=True)
class ReplyParts:
    """The parts of one message body.

    ``new_text``: what the sender wrote in this message, without quoted history and
    without the signature. ``quoted``: the quoted history ("" if none). ``signature``: the
    sender's signature ("" if none found). ``reply``: the non-quoted text as it stands in
    the message (``new_text`` followed by ``signature``, original spacing kept).
    ``marker``: what recognised the quote (e.g. ``"on-wrote"``, ``"original-message"``,
    ``"header-block"``, ``">"``, ``"html:blockquote"``), "" when none was found.
    """

    new_text: str
    quoted: str
    signature: str
    reply: str = ""
    marker: str = ""

    @property
    def has_quote(self) -> bool:
        return bool(self.marker)


# --------------------------------------------------------------------------- #
# Vocabulary (shared with forwards.py)
# --------------------------------------------------------------------------- #
def _alt(words: Iterable[str]) -> str:
    """Regex alternation, longest first, spaces matching any whitespace run."""
    out = []
    for w in sorted(set(words), key=len, reverse=True):
        out.append(r"\s+".join(re.escape(part) for part in w.split(" ")))
    return "|".join(out)


HEADER_WORDS: dict[str, tuple[str, ...]] = {
    "from": ("from", "von", "de", "van", "från", "fra", "frá", "da", "od", "от", "lähettäjä", "feladó",
             "kimden", "odesílatel", "差出人", "发件人", "寄件人", "寄件者", "보낸 사람", "από", "afzender",
             "remitente", "expéditeur", "mittente", "nadawca", "отправитель", "de la"),
    "date": ("sent", "date", "gesendet", "datum", "envoyé", "envoye", "enviado", "enviada", "fecha",
             "verzonden", "verstuurd", "skickat", "sendt", "inviato", "data", "wysłano", "wysłane",
             "отправлено", "дата", "lähetetty", "päivämäärä", "elküldve", "dátum", "gönderildi", "tarih",
             "odesláno", "送信日時", "日付", "发送时间", "發送時間", "日期", "寄件日期", "보낸 날짜", "날짜",
             "στάλθηκε", "ημερομηνία", "sent at", "trimis"),
    "to": ("to", "an", "à", "a", "para", "aan", "till", "til", "do", "кому", "vastaanottaja", "címzett",
           "kime", "komu", "宛先", "收件人", "收件者", "받는 사람", "προς", "destinataire", "către"),
    "cc": ("cc", "kopie", "copie", "cópia", "copia", "kopia", "копия", "抄送", "副本", "참조", "kopio",
           "másolat", "bilgi", "kópia"),
    "subject": ("subject", "betreff", "objet", "asunto", "onderwerp", "ämne", "emne", "oggetto", "assunto",
                "temat", "тема", "aihe", "tárgy", "konu", "předmět", "件名", "主题", "主題", "主旨", "제목",
                "θέμα", "sujet", "subiect", "aanhef"),
}
_WORD_KIND = {w: kind for kind, words in HEADER_WORDS.items() for w in words}
_HEADER_LINE = re.compile(
    r"^[ \t]*\**[ \t]*(" + _alt(_WORD_KIND) + r")[ \t]*\**[ \t\u00a0]*[:：][ \t\u00a0]*\**[ \t]*(.*)$",
    re.IGNORECASE)


def header_line(line: str) -> tuple[str, str] | None:
    """(kind, value) when ``line`` is a quoted-header line such as ``From: Ann <a@x>`` or
    ``Betreff: Test`` (kind is one of from/date/to/cc/subject), else None."""
    head = line[:80]
    if ":" not in head and "：" not in head:
        return None
    m = _HEADER_LINE.match(line)
    if m is None:
        return None
    word = re.sub(r"\s+", " ", m.group(1).lower())
    return _WORD_KIND.get(word, "from" if word.startswith("de") else "to"), m.group(2).strip()


_ORIGINAL_PHRASES = (
    "original message", "original e-mail", "original email", "ursprüngliche nachricht", "originalnachricht",
    "original-nachricht", "original nachricht", "message d'origine", "message original", "mensaje original",
    "oorspronkelijk bericht", "origineel bericht", "originalmeddelande", "ursprungligt meddelande",
    "opprinnelig melding", "oprindelig meddelelse", "messaggio originale", "mensagem original",
    "wiadomość oryginalna", "oryginalna wiadomość", "исходное сообщение", "původní zpráva",
    "pôvodná správa", "alkuperäinen viesti", "eredeti üzenet", "orijinal ileti", "原始邮件", "原始郵件",
    "元のメッセージ", "원본 메시지", "reply message", "reply separator", "mesaj original", "izvorna poruka",
)
_FORWARD_PHRASES = (
    "forwarded message", "forwarded e-mail", "forwarded email", "weitergeleitete nachricht",
    "message transféré", "message transfere", "mensaje reenviado", "doorgestuurd bericht",
    "vidarebefordrat meddelande", "videresendt melding", "videresendt meddelelse", "messaggio inoltrato",
    "mensagem encaminhada", "mensagem reencaminhada", "wiadomość przekazana dalej", "przekazana wiadomość",
    "пересылаемое сообщение", "пересланное сообщение", "přeposlaná zpráva", "välitetty viesti",
    "továbbított üzenet", "iletilen ileti", "转发的邮件", "轉寄的郵件", "転送メッセージ", "전달된 메시지",
    "mesaj redirecționat",
)
_BEGIN_FORWARD_PHRASES = (
    "begin forwarded message", "anfang der weitergeleiteten nachricht", "début du message réexpédié",
    "début du message transféré", "inicio del mensaje reenviado", "begin doorgestuurd bericht",
    "början på vidarebefordrat meddelande", "start på videresendt melding",
    "start på videresendt meddelelse", "inizio messaggio inoltrato", "início da mensagem reencaminhada",
    "início da mensagem encaminhada", "początek przekazywanej wiadomości",
    "начало переадресованного сообщения", "転送されたメッセージ", "以下为转发的邮件",
)
_RULE = r"[-_=*–—]{2,}"
_RULE_CHARS = "-_=*–—"
ORIGINAL_MARKER = re.compile(r"^\s*" + _RULE + r"\s*(?:" + _alt(_ORIGINAL_PHRASES) + r")\s*" + _RULE + r"\s*$",
                             re.IGNORECASE)
FORWARD_MARKER = re.compile(
    r"^\s*(?:" + _RULE + r"[>\s]*(?:" + _alt(_FORWARD_PHRASES) + r")[<\s]*" + _RULE
    + r"|(?:" + _alt(_BEGIN_FORWARD_PHRASES) + r")\s*[:：])\s*$", re.IGNORECASE)
_SEPARATOR_RULE = re.compile(r"^\s*(?:_{8,}|-{8,}|={8,}|\*{8,})\s*$")

_WROTE_LATIN = (
    "wrote", "writes", "has written", "schrieb", "geschrieben", "a écrit", "a ecrit", "escribió",
    "escribio", "ha escrito", "schreef", "heeft geschreven", "skrev", "ha scritto", "escreveu",
    "napisał(a)", "napisał", "napisała", "napisal", "napsal(a)", "napsal", "napsala", "napísal(a)",
    "napísal", "написал(а)", "написала", "написал", "написав", "написа", "kirjoitti", "írta",
    "yazdı", "έγραψε", "a scris", "va escriure", "kirjutas", "rašė", "rakstīja", "napisao", "пишет", "пише",
    "je napisal", "je napisala", "šunu yazdı",
)
_WROTE_CJK = ("のメッセージ", "さんは書きました", "は書きました", "写道", "寫道", "님이 작성", "작성")
_WROTE_END = re.compile(
    r"(?:(?<!\w)(?:" + _alt(_WROTE_LATIN) + r")|(?:" + _alt(_WROTE_CJK) + r"))\s*[:：]\s*$", re.IGNORECASE)
# German/Dutch/Scandinavian word order: "Am <date> schrieb <name>:", "Op <date> schreef <name>:".
_WROTE_MID = re.compile(r"(?<!\w)(?:schrieb|schreef|skrev|kirjoitti|napsal|scrisse)\s+[^:：]{1,160}[:：]\s*$",
                        re.IGNORECASE)
_START_WORD = (r"^\s*(?:[-–—]{2,}\s*)?"
               r"(?:on|am|le|el|op|il|em|den|på|pe|dne|dňa|w dniu|dnia|στις|在|於|en|el día|le jeu\.?)\s")
_ATTRIBUTION_START_WORD = re.compile(_START_WORD, re.IGNORECASE)
_ATTRIBUTION_START = re.compile(
    r"^\s*(?:[-–—]{2,}\s*)?(?:"
    r"(?:on|am|le|el|op|il|em|den|på|pe|dne|dňa|w dniu|dnia|στις|在|於|en|el día|le jeu\.?)\s"
    r"|\d{1,4}\s*[./\-年]\s*\d{1,2}"
    r"|(?:mon|tue|wed|thu|fri|sat|sun|mo|di|mi|do|fr|sa|so|lun|mar|mer|jeu|ven|sam|dim)[a-z]*\.?,?\s"
    r"|\d{1,2}\.?\s+[^\W\d_]+\.?\s+\d{2,4}"
    r"|[^\W\d_]{2,4}\.?,?\s+\d{1,2}\b)", re.IGNORECASE)
_HAS_DATE_OR_ADDR = re.compile(r"\d|@")
_QUOTED = re.compile(r"^\s*>")

_REPLY_ABOVE = re.compile(
    r"(?:reply|respond|type your (?:reply|response)|write) above this line|"
    r"oberhalb dieser zeile antworten|antworten sie (?:bitte )?oberhalb dieser zeile|"
    r"répondez au-dessus de cette ligne|responda por encima de esta línea", re.IGNORECASE)

_MARKER = "\u2063TMXQ"                                  # invisible separator + tag: never typed by people
# Every _REPLY_ABOVE phrase contains one of these: a cheap gate before the regex.
_REPLY_ABOVE_KEYS = ("above this line", "oberhalb dieser zeile", "au-dessus de cette ligne",
                     "encima de esta línea")
_MARKER_LINE = re.compile("\u2063TMXQ(\\d+)([bc])")


# --------------------------------------------------------------------------- #
# Plain text
# --------------------------------------------------------------------------- #
@dataclass(slots=True)
class _Span:
    start: int
    end: int            # inclusive
    kind: str           # marker name
    unmarked: bool      # everything from here on is quoted


def _is_attribution(joined: str, strong: bool) -> bool:
    """``joined``: one attribution candidate (lines joined with spaces), ending with ':'."""
    if len(joined) > _ATTRIBUTION_MAX_CHARS:
        return False
    has_date = bool(_HAS_DATE_OR_ADDR.search(joined))
    if strong and not (has_date and _ATTRIBUTION_START.match(joined)):
        return False
    if not strong and has_date:
        return True
    # the phrase is near the end: search only the tail (the regexes are anchored at $)
    return bool(_WROTE_END.search(joined[-48:]) or _WROTE_MID.search(joined[-200:]))


def _attribution_at(lines: list[str], j: int, kinds: list[str], strong: bool) -> int | None:
    """Start line of an attribution that ends on line ``j`` (which ends with ':'), or None."""
    best = None
    k = j
    parts: list[str] = []
    while k >= 0 and j - k < _ATTRIBUTION_MAX_LINES and kinds[k] == "t":
        parts.insert(0, lines[k].strip())
        joined = " ".join(parts)
        if len(joined) > _ATTRIBUTION_MAX_CHARS:
            break
        if (k == j or _ATTRIBUTION_START.match(lines[k])) and _is_attribution(joined, strong):
            best = k
            if _ATTRIBUTION_START_WORD.match(lines[k]):
                break           # "On …"/"Am …" is the first line: the line above is the reply's
        k -= 1
    return best


def _header_run(lines: list[str], kinds: list[str], i: int,
                cache: dict[int, tuple[str, str] | None]) -> int | None:
    """If a quoted-header block starts at line ``i``, the index of its last line."""
    seen: list[str] = []
    last = i
    k = i
    gap = 0
    while k < len(lines) and k - i < 12:
        if kinds[k] != "t":
            break
        if k not in cache:
            cache[k] = header_line(lines[k])
        h = cache[k]
        if h is not None:
            seen.append(h[0])
            last = k
            gap = 0
        else:
            gap += 1
            if gap > 1 or not seen:
                break
        k += 1
    kinds_seen = set(seen)
    if ("from" in kinds_seen and len(kinds_seen) >= 2) or len(kinds_seen) >= 3:
        return last
    return None


def _classify(lines: list[str]) -> list[str]:
    kinds = []
    markers = any("\u2063TMXQ" in line for line in lines)  # only text rendered from HTML has them
    for line in lines:
        if markers and _MARKER_LINE.search(line):
            kinds.append("q")
        elif not line.strip():
            kinds.append("e")
        elif _QUOTED.match(line):
            kinds.append("q")
        else:
            kinds.append("t")
    return kinds


def _next_nonblank(kinds: list[str], i: int) -> int:
    while i < len(kinds) and kinds[i] == "e":
        i += 1
    return i


def _find_splitters(lines: list[str], kinds: list[str], cut_markers: Sequence[str]) -> dict[int, _Span]:
    spans: dict[int, _Span] = {}
    n = len(lines)
    lowered_markers = [m.lower() for m in cut_markers if m]
    headers: dict[int, tuple[str, str] | None] = {}
    # One search over the whole text instead of one per line (the per-line searches were most of
    # the cost of a reply without quotes).
    text_lower = "\n".join(lines).lower()
    reply_above = any(k in text_lower for k in _REPLY_ABOVE_KEYS)
    i = 0
    while i < n:
        kind = kinds[i]
        line = lines[i]
        if kind == "q":
            m = _MARKER_LINE.search(line)
            if m and m.group(2) == "c":
                spans.setdefault(i, _Span(i, i, "html", True))
            i += 1
            continue
        if kind != "t":
            i += 1
            continue
        if lowered_markers and any(mk in line.lower() for mk in lowered_markers) or \
                (reply_above and _REPLY_ABOVE.search(line)):
            spans[i] = _Span(i, i, "reply-above", True)
            i += 1
            continue
        if line.lstrip()[:1] in _RULE_CHARS and ORIGINAL_MARKER.match(line):
            spans[i] = _Span(i, i, "original-message", True)
            i += 1
            continue
        if FORWARD_MARKER.match(line):
            spans[i] = _Span(i, i, "forwarded", True)
            i += 1
            continue
        stripped = line.rstrip()
        if stripped.endswith((":", "：")):
            nxt = _next_nonblank(kinds, i + 1)
            followed_by_quote = nxt < n and kinds[nxt] == "q"
            start = _attribution_at(lines, i, kinds, strong=True)
            if start is not None:
                _add_span(spans, _Span(start, i, "on-wrote", not followed_by_quote))
                i += 1
                continue
            if followed_by_quote:
                start = _attribution_at(lines, i, kinds, strong=False)
                if start is not None:
                    _add_span(spans, _Span(start, i, "attribution", False))
                    i += 1
                    continue
        if i not in headers:
            headers[i] = header_line(line)
        if headers[i] is not None:
            end = _header_run(lines, kinds, i, headers)
            if end is None and _starts_with_header_block(line, min_kinds=3):
                end = i         # "From: A Sent: B To: C Subject: D" on one line (rendered HTML)
            if end is not None:
                start = i
                # An underscore/dash rule just above (blank lines allowed) belongs to the block.
                k = i - 1
                while k >= 0 and kinds[k] == "e" and i - k <= 3:
                    k -= 1
                if k >= 0 and kinds[k] == "t" and _SEPARATOR_RULE.match(lines[k]):
                    start = k
                _add_span(spans, _Span(start, end, "header-block", True))
                i = end + 1
                continue
        i += 1
    return spans


def _add_span(spans: dict[int, _Span], span: _Span) -> None:
    # A wrapped attribution may begin on a line that an earlier (shorter) candidate claimed.
    # (By line number, not over all spans: 20,000 "On … wrote:" lines made that quadratic.)
    for s in range(span.start, span.end + 1):
        spans.pop(s, None)
    spans[span.start] = span


def _mark(lines: list[str], cut_markers: Sequence[str]) -> tuple[list[str], str]:
    """Per line 'r' (reply) or 'q' (quoted); and the first marker that fired."""
    kinds = _classify(lines)
    spans = _find_splitters(lines, kinds, cut_markers)
    out = ["r"] * len(lines)
    marker = ""
    i = 0
    n = len(lines)
    while i < n:
        span = spans.get(i)
        if span is not None:
            marker = marker or span.kind
            if span.unmarked:
                for k in range(i, n):
                    out[k] = "q"
                break
            for k in range(span.start, span.end + 1):
                out[k] = "q"
            i = span.end + 1
            continue
        if kinds[i] == "q":
            marker = marker or (">" if not _MARKER_LINE.search(lines[i]) else "html")
            out[i] = "q"
            # blank lines inside a quoted run are part of it
            k = i + 1
            while k < n and kinds[k] in ("q", "e") and k not in spans:
                out[k] = "q" if kinds[k] == "q" else "e"
                k += 1
            i = k
            continue
        i += 1
    # blank lines keep their neighbours' side: reply unless surrounded by quotes
    return out, marker


def _join_reply(lines: list[str], marks: list[str]) -> str:
    """The reply lines in order; where quoted lines were removed between two reply
    fragments, exactly one blank line separates them."""
    out: list[str] = []
    gap = False
    for line, m in zip(lines, marks, strict=True):
        if m != "r":
            gap = True
            continue
        if gap and out:
            while out and not out[-1].strip():
                out.pop()
            out.append("")
            if not line.strip():
                continue
        gap = False
        out.append(line)
    return "\n".join(out).strip()


def _join_quoted(lines: list[str], marks: list[str], pieces: Sequence[str]) -> str:
    """The quoted lines (marker lines replaced by the HTML they stand for); separate
    quoted runs are separated by one blank line."""
    out: list[str] = []
    prev = ""
    for line, m in zip(lines, marks, strict=True):
        if m == "r":
            prev = m
            continue
        if m == "e":
            if out and out[-1]:
                out.append("")
            prev = m
            continue
        if prev == "r" and out and out[-1]:
            out.append("")
        prev = m
        mm = _MARKER_LINE.search(line)
        if mm:
            idx = int(mm.group(1))
            if idx < len(pieces):
                out.append(pieces[idx])
            continue
        out.append(line)
    return "\n".join(out).strip()


def _cannot_quote(text: str, cut_markers: Sequence[str]) -> bool:
    """True when no line can start quoted history: every marker split_text knows needs a '>', a ':'
    (attributions, header blocks), a rule of '-', '_', '=' or '*', our HTML marker character or a
    "reply above this line" phrase."""
    if cut_markers or "\u2063" in text or ">" in text or ":" in text or "：" in text:
        return False
    if any(r in text for r in ("--", "__", "==", "**", "–", "—")):
        return False
    low = text.lower()
    return not any(k in low for k in _REPLY_ABOVE_KEYS)


def split_text(text: str, *, sender: str = "", cut_markers: Sequence[str] = ()) -> ReplyParts:
    """Split a plain-text body (see the module doc). ``sender``: the sender's name and/or
    address (e.g. ``"Ann Lee <ann@example.test>"``), used to recognise a signature that
    starts with their name. ``cut_markers``: extra lines that start quoted history, e.g.
    the "reply above this line" marker of our own notifications."""
    return _split_text(text, sender, cut_markers, (), "")


def _split_text(text: str, sender: str, cut_markers: Sequence[str], pieces: Sequence[str],
                marker_prefix: str) -> ReplyParts:
    """split_text; ``pieces``: the rendered HTML quotes the marker lines stand for,
    ``marker_prefix``: the HTML quote kind to report."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) > MAX_TEXT_CHARS:
        body = text.strip()
        return ReplyParts(new_text=body, quoted="", signature="", reply=body)
    lines = text.split("\n")
    if _cannot_quote(text, cut_markers):  # the common short note: skip the per-line analysis
        marks, marker = ["r"] * len(lines), ""
    else:
        marks, marker = _mark(lines, cut_markers)
    reply = _join_reply(lines, marks)
    quoted = _join_quoted(lines, marks, pieces) if marker else ""
    new_text, signature = extract_signature(reply, sender)
    if marker and marker_prefix:
        marker = marker_prefix
    return ReplyParts(new_text=new_text, quoted=quoted, signature=signature, reply=reply, marker=marker)


# --------------------------------------------------------------------------- #
# Signatures
# --------------------------------------------------------------------------- #
_SIG_DELIM = re.compile(r"^\s*(?:--|—|–)\s*$")
_SIG_RULE = re.compile(r"^\s*(?:-{3,}|_{3,}|={4,}|~{4,})\s*$")
_MOBILE = re.compile(
    r"^\s*(?:sent (?:from|with|via|using) (?:my |the |mail for |yahoo |outlook |aol |samsung |huawei )?"
    r"|sent with |get outlook for |envoyé (?:de|depuis) (?:mon |ma |l')?|von meinem |gesendet von |"
    r"enviado (?:desde|de) (?:mi |meu |o )?|verzonden (?:vanaf|met) (?:mijn )?|skickat från (?:min )?|"
    r"sendt fra (?:min )?|inviato da (?:il mio |iphone|ipad)?|wysłane z (?:mojego )?|"
    r"отправлено (?:с|из) |iphoneから送信|从我的|發自我的|via mobile\b)",
    re.IGNORECASE)
_CLOSING_WORDS = (
    "thanks", "thank you", "many thanks", "thanks again", "thanks in advance", "thx", "ty", "cheers",
    "regards", "best regards", "kind regards", "warm regards", "warmest regards", "best wishes", "best",
    "all the best", "sincerely", "yours sincerely", "yours truly", "yours", "respectfully", "br", "rgds",
    "mit freundlichen grüßen", "mit freundlichen grüssen", "freundliche grüße", "freundliche grüsse",
    "viele grüße", "viele grüsse", "beste grüße", "beste grüsse", "liebe grüße", "liebe grüsse", "gruß",
    "gruss", "grüße", "grüsse", "mfg", "lg", "vg", "danke", "vielen dank", "cordialement", "bien cordialement",
    "bien à vous", "salutations", "merci", "merci beaucoup", "amicalement", "saludos", "un saludo",
    "saludos cordiales", "atentamente", "gracias", "muchas gracias", "met vriendelijke groet",
    "met vriendelijke groeten", "vriendelijke groet", "groeten", "groet", "mvg", "bedankt", "dank je",
    "med vänlig hälsning", "vänliga hälsningar", "hälsningar", "mvh", "med venlig hilsen", "venlig hilsen",
    "hilsen", "med vennlig hilsen", "vennlig hilsen", "tack", "takk", "tak", "distinti saluti",
    "cordiali saluti", "saluti", "grazie", "grazie mille", "atenciosamente", "obrigado", "obrigada",
    "abraços", "cumprimentos", "pozdrawiam", "z poważaniem", "dziękuję", "с уважением", "спасибо",
    "всего доброго", "всего хорошего", "よろしくお願いします", "よろしくお願いいたします", "敬具", "谢谢",
    "此致", "祝好", "s pozdravem", "díky", "ystävällisin terveisin", "terveisin", "üdvözlettel",
    "saygılarımla", "teşekkürler",
)
_CLOSING_HEAD = re.compile(r"^\s*(?:" + _alt(_CLOSING_WORDS) + r")(?!\w)"
                           r"(?:\s+(?:again|so much|very much|a lot|in advance|all|everyone))?", re.IGNORECASE)


def _is_closing(line: str) -> bool:
    """A sign-off line: "Thanks,", "Best regards, Ann", "Mit freundlichen Grüßen" — the
    phrase, optionally followed by up to three capitalised words (a name)."""
    s = line.strip()
    if len(s) > 50:
        return False
    m = _CLOSING_HEAD.match(s)
    if m is None:
        return False
    rest = s[m.end():].strip(" ,.!:;-–—)(")
    if not rest:
        return True
    words = rest.split()
    return len(words) <= 3 and all(w[0].isupper() for w in words)

_CONTACT = re.compile(
    r"@[\w-]+\.|https?://|www\.|\+?\(?\d[\d ()./-]{6,}\d|\b(?:tel|phone|mobile|mob|fax|cell|skype|"
    r"t|m|f|p|e)\s*[.:]\s*\S", re.IGNORECASE)
_WORDS = re.compile(r"[^\W\d_]+")
# A name (or name and title) line: 1-5 words of letters, no digits, addresses or colons.
_NAME_LIKE = re.compile(r"^\s*[^\W\d_][^\W\d_'.-]*(?:[ ,]+[^\W\d_][^\W\d_'.-]*){0,4}\s*$")


def _sender_tokens(sender: str) -> set[str]:
    tokens: set[str] = set()
    for part in re.split(r"[<>\"'(),;]", sender):
        part = part.strip()
        if not part:
            continue
        if "@" in part:
            local = part.split("@", 1)[0]
            tokens.update(t for t in re.split(r"[._+\-]", local) if len(t) >= 3 and t.isalpha())
        else:
            tokens.update(w for w in _WORDS.findall(part) if len(w) >= 2)
    return {t.casefold() for t in tokens}


def _is_name_line(line: str, tokens: set[str]) -> bool:
    if not tokens or len(line.strip()) > 60:
        return False
    words = [w.casefold() for w in _WORDS.findall(line)]
    if not words or len(words) > 8:
        return False
    return any(w in tokens for w in words[:3])


def extract_signature(text: str, sender: str = "") -> tuple[str, str]:
    """(text without signature, signature) for a reply that has no quoted history left.

    ``sender`` (name and/or address) lets a final block that starts with the sender's
    name count as a signature. The signature is "" when none is recognised; a signature
    never swallows the whole text except for an explicit ``-- `` or "Sent from my …".
    """
    if not text.strip():
        return text.strip(), ""
    lines = text.split("\n")
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    window = nonblank[-_SIGNATURE_MAX_LINES:]
    tokens = _sender_tokens(sender)
    candidates: list[int] = []

    def rest_ok(i: int, max_lines: int, max_len: int) -> bool:
        after = nonblank[bisect.bisect_right(nonblank, i):]
        return len(after) <= max_lines and all(len(lines[k].strip()) <= max_len for k in after)

    def content_before(i: int) -> bool:
        return nonblank[0] < i

    for i in window:
        line = lines[i]
        if _SIG_DELIM.match(line) and rest_ok(i, _SIGNATURE_MAX_LINES, 200):
            candidates.append(i)
            break
        if _SIG_RULE.match(line) and content_before(i) and any(k > i for k in nonblank) \
                and rest_ok(i, 12, 72):
            candidates.append(i)
            break
    for i in window[-3:]:
        if _MOBILE.match(lines[i]) and len(lines[i].strip()) <= 80 and rest_ok(i, 2, 80):
            candidates.append(i)
            break
    for i in window[-8:]:
        line = lines[i]
        if _is_closing(line) and content_before(i) and rest_ok(i, 6, 60):
            candidates.append(i)
            break
    # Final block (after the last blank line), a few short lines.
    last_blank = next((k for k in range(nonblank[-1] - 1, -1, -1) if not lines[k].strip()), -1)
    block = nonblank[bisect.bisect_right(nonblank, last_blank):]
    if block and content_before(block[0]) and len(block) <= 8 and all(len(lines[k].strip()) <= 80 for k in block):
        first = block[0]
        first_line = lines[first]
        if _is_name_line(first_line, tokens):
            at = bisect.bisect_left(nonblank, first)
            if at > 0 and _is_closing(lines[nonblank[at - 1]]):
                candidates.append(nonblank[at - 1])
            else:
                candidates.append(first)
        elif len(block) >= 3 and _NAME_LIKE.match(first_line) and all(len(lines[k].strip()) <= 60 for k in block) \
                and sum(1 for k in block[1:] if _CONTACT.search(lines[k])) >= 2:
            candidates.append(first)
    if not candidates:
        return text.strip(), ""
    start = min(candidates)
    body = "\n".join(lines[:start]).strip()
    sig = "\n".join(lines[start:]).strip()
    return body, sig


# --------------------------------------------------------------------------- #
# HTML
# --------------------------------------------------------------------------- #
_El = Any      # an lxml.html element (lxml ships no type information)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*>", re.IGNORECASE)
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CUT_IDS = {"divrplyfwdmsg", "olk_src_body_section", "appendonsend", "mail-editor-reference-message-container",
            "stopspelling", "zwchr", "reply-intro"}
_CUT_CLASSES = {"outlookmessageheader", "zmail_extra", "ms-outlook-mobile-reference-message",
                "gmail_forwarded"}
_BLOCK_CLASSES = {"gmail_quote", "gmail_quote_container", "yahoo_quoted", "moz-cite-prefix", "protonmail_quote",
                  "zimbra_quote", "tutanota_quote", "mailbird-quote", "replyquote"}
_HEADER_START = re.compile(r"^\s*\**\s*(?:" + _alt(_WORD_KIND) + r")\s*\**[\s\u00a0]*[:：]", re.IGNORECASE)


def _parse_html(html: str) -> _El | None:
    import lxml.html

    html = _XML_INVALID.sub("", _XML_DECL.sub("", html, count=1))
    if not html.strip():
        return None
    try:
        return lxml.html.document_fromstring(html)
    except Exception:       # lxml on hostile markup (empty document, encoding declarations, …)
        return None


_BLOCK_TAGS = frozenset({"p", "div", "br", "tr", "li", "table", "blockquote", "hr", "h1", "h2", "h3", "h4",
                         "h5", "h6", "pre", "ul", "ol", "dl", "dt", "dd", "center", "section", "article"})


def _block_text(el: _El, limit: int = 600) -> str:
    """Text of ``el`` with a line break at each block element and <br> (text_content()
    glues "From: Ann</p><p>Sent: …" into one line)."""
    out: list[str] = []
    total = 0
    visits = 0

    def walk(node: _El) -> None:
        nonlocal total, visits
        # Elements count too: empty ones (50,000 <hr>, nested <div>s) add no text, and a walk
        # bounded by text alone went through all of them for each candidate.
        visits += 1
        if total >= limit or visits > limit:
            return
        tag = node.tag.lower() if isinstance(node.tag, str) else ""
        if tag in _BLOCK_TAGS:
            out.append("\n")
        if tag and node.text:
            out.append(node.text)
            total += len(node.text)
        for child in node:
            walk(child)
            if child.tail:
                out.append(child.tail)
                total += len(child.tail)
        if tag in _BLOCK_TAGS:
            out.append("\n")

    walk(el)
    return "".join(out)[:limit]


def _classes(el: _El) -> set[str]:
    return {c.lower() for c in (el.get("class") or "").split()}


def _text_following(el: _El, limit: int = 300) -> str:
    """Text that follows ``el`` in document order (its tail, then later siblings, climbing up)."""
    parts = [el.tail or ""]
    total = len(parts[0])
    node = el
    while node is not None and total < limit:
        sib = node.getnext()
        while sib is not None and total < limit:
            t = (_block_text(sib, limit) if isinstance(sib.tag, str) else "") + (sib.tail or "")
            parts.append(t)
            total += len(t) + 10  # + 10: empty siblings (<hr><hr>…) must end the walk too
            sib = sib.getnext()
        node = node.getparent()
        if node is not None and isinstance(node.tag, str) and node.tag.lower() == "body":
            break
    return "".join(parts)[:limit]


def _looks_like_header_start(text: str) -> bool:
    head = text[:60]
    return (":" in head or "：" in head) and bool(_HEADER_START.match(text))


_HEADER_WORD = re.compile(r"(?:^|[\s>])(" + _alt(_WORD_KIND) + r")\s*[:：]", re.IGNORECASE)


def _starts_with_header_block(text: str, min_kinds: int = 2) -> bool:
    """``text`` starts with a quoted-header block: From and at least one more header
    (``min_kinds`` kinds in all), or three headers of different kinds."""
    text = text.lstrip()
    if not _looks_like_header_start(text):
        return False
    found = set()
    for line in re.split(r"\n|(?<=\S)\s{2,}(?=\S)", text[:600]):
        h = header_line(line)
        if h:
            found.add(h[0])
    # A rendered block may lose its line breaks: count header words followed by ':' instead.
    words = {(_WORD_KIND.get(w.lower()) or "to") for w in _HEADER_WORD.findall(text[:600])}
    found |= words
    return ("from" in found and len(found) >= min_kinds) or len(found) >= 3


# Separator rules (<hr>) looked at per document: each check reads the text after the rule, and
# 50,000 <hr> made that quadratic. Real mail has a handful.
MAX_HR_CHECKS = 100


def _quote_kind(el: _El, hr_checks: list[int] | None = None) -> tuple[str, str] | None:
    """('b', why) for a quote block (replace it), ('c', why) for a cut (it and everything
    after it), else None."""
    tag = el.tag.lower() if isinstance(el.tag, str) else ""
    if not tag or tag in ("html", "body", "head"):
        return None
    if tag == "blockquote":
        return "b", "blockquote"
    classes = _classes(el)
    hit = classes & _BLOCK_CLASSES
    if hit:
        return "b", min(hit)
    ident = (el.get("id") or "").lower()
    if ident in _CUT_IDS:
        return "c", ident
    hit = classes & _CUT_CLASSES
    if hit:
        return "c", min(hit)
    if tag == "hr":
        if hr_checks is not None:
            hr_checks[0] -= 1
            if hr_checks[0] < 0:
                return None
        return ("c", "hr") if _starts_with_header_block(_text_following(el)) else None
    # Outlook's header block ("From: … Sent: … To: … Subject: …"), with or without the
    # border-top rule of its container div: it and everything after it is history.
    if tag in ("div", "p") and _looks_like_header_start(_block_text(el, 40)) \
            and _starts_with_header_block(_block_text(el)):
        return "c", "header-block"
    return None


def _find_quotes(root: _El) -> list[tuple[_El, str, str]]:
    """(element, 'b' | 'c', why) in document order; the list ends at the first cut."""
    found: list[tuple[_El, str, str]] = []
    stack = [root]
    hr_checks = [MAX_HR_CHECKS]
    while stack:
        el = stack.pop()
        if not isinstance(el.tag, str):
            continue
        kind = _quote_kind(el, hr_checks)
        if kind is not None:
            found.append((el, *kind))
            if kind[0] == "c":
                break
            continue
        stack.extend(reversed(list(el)))
    return found


def _remove_after(el: _El) -> list[_El]:
    """Detach everything after ``el`` in document order (up to <body>); return it in order."""
    removed = []
    node = el
    while True:
        parent = node.getparent()
        if parent is None:
            break
        for sib in list(node.itersiblings()):
            parent.remove(sib)
            removed.append(sib)
        if isinstance(parent.tag, str) and parent.tag.lower() in ("body", "html"):
            break
        node = parent
    return removed


_INSCRIPTIS_CONFIG: Any = None


def _inscriptis(root: _El) -> str:
    """Render with inscriptis' *strict* CSS profile (no indentation for nested <div>s,
    which the default "relaxed" profile adds and which would end up in the new text)."""
    global _INSCRIPTIS_CONFIG
    from inscriptis import Inscriptis

    if _INSCRIPTIS_CONFIG is None:
        from inscriptis.css_profiles import CSS_PROFILES
        from inscriptis.model.config import ParserConfig

        _INSCRIPTIS_CONFIG = ParserConfig(css=dict(CSS_PROFILES["strict"]))
    return str(Inscriptis(root, _INSCRIPTIS_CONFIG).get_text())


def _render(elements: Sequence[_El]) -> str:
    import lxml.html

    if not elements:
        return ""
    wrapper = lxml.html.Element("div")
    for e in elements:
        wrapper.append(e)
    try:
        text = _inscriptis(wrapper)
    except Exception:
        text = wrapper.text_content()
    return _tidy(text)


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _apply(found: Sequence[tuple[_El, str, str]], with_markers: bool) -> list[str]:
    """Remove the quotes ``found`` (from _find_quotes) from their tree, in place. With
    markers, each is replaced by a marker line and its rendered text is returned."""
    import lxml.html

    pieces: list[str] = []
    for idx, (el, kind, _why) in enumerate(found):
        parent = el.getparent()
        if parent is None:
            continue
        removed_after = _remove_after(el) if kind == "c" else []
        tail = el.tail if kind == "b" else None       # text after a cut is history too
        if kind == "c" and el.tail:
            removed_after.insert(0, _text_node(el.tail))
        el.tail = None
        if with_markers:
            marker = lxml.html.Element("div")
            marker.text = f"{_MARKER}{idx}{kind}"
            marker.tail = tail
            parent.replace(el, marker)
            pieces.append(_render([el, *removed_after]))
        else:
            if tail:
                prev = el.getprevious()
                if prev is not None:
                    prev.tail = (prev.tail or "") + tail
                else:
                    parent.text = (parent.text or "") + tail
            parent.remove(el)
    return pieces


def _text_node(text: str) -> _El:
    import lxml.html

    span = lxml.html.Element("span")
    span.text = text
    return span


def strip_html_quotes(html: str) -> str:
    """The HTML with quoted history removed (quote blocks dropped; at a cut point such as
    Outlook's header block or a separator rule, everything after it too). Returns the
    input unchanged when it cannot be parsed or is too large."""
    import lxml.html

    if len(html) > MAX_HTML_CHARS or html.count("<") > MAX_HTML_TAGS:
        return html
    root = _parse_html(html)
    if root is None:
        return html
    _apply(_find_quotes(root), with_markers=False)
    if root.find("head") is None:
        root.insert(0, lxml.html.Element("head"))
    return str(lxml.html.tostring(root, encoding="unicode"))


def split_html(html: str, *, sender: str = "", cut_markers: Sequence[str] = ()) -> ReplyParts:
    """Split an HTML body: quote elements are found structurally, the rest is rendered to
    text and read like plain text (so an attribution line above a blockquote goes too)."""
    if len(html) > MAX_HTML_CHARS or html.count("<") > MAX_HTML_TAGS:
        return ReplyParts("", "", "", "", "")
    root = _parse_html(html)
    if root is None:
        return ReplyParts("", "", "", "", "")
    found = _find_quotes(root)
    pieces = _apply(found, with_markers=True)
    try:
        text = _tidy(_inscriptis(root))
    except Exception:
        text = root.text_content()
    first = f"html:{found[0][2]}" if found else ""
    return _split_text(text, sender, cut_markers, pieces, first)


# Every HTML structure split_html recognises contains one of these (lower-cased); the words of the
# header-block and "reply above" markers are covered because split_html needs them in the text too.
_HTML_QUOTE_HINTS = ("blockquote", "gmail_quote", "yahoo_quoted", "moz-cite-prefix", "divrplyfwdmsg",
                     "olk_src_body_section", "appendonsend", "<hr", "border-top", "\u2063")


def _may_quote_html(html: str | None) -> bool:
    if not html:
        return False
    low = html.lower()
    return any(k in low for k in _HTML_QUOTE_HINTS)


def split_reply(text: str, html: str | None = None, *, sender: str = "",
                cut_markers: Sequence[str] = ()) -> ReplyParts:
    """Split a message body into new text, quoted history and signature.

    ``text`` is the plain body (the text/plain part, or the HTML rendered to text);
    ``html`` the HTML body if there is one. The plain text is read first; when it shows
    no quote and HTML is given, the HTML structure decides. ``sender`` (name and/or
    address) helps to recognise the signature; ``cut_markers`` are extra lines that start
    quoted history (such as our own "reply above this line").
    """
    text = text or ""
    parts = split_text(text, sender=sender, cut_markers=cut_markers) if text.strip() else None
    if parts is not None and (parts.marker or not html):
        return parts
    if parts is not None and not _may_quote_html(html):
        return parts  # nothing in the HTML that split_html would act on: skip rendering it again
    if html and html.strip():
        hparts = split_html(html, sender=sender, cut_markers=cut_markers)
        # HTML structure alone never turns a text that shows no quote into nothing at all
        # (seen: a whole message wrapped in class="gmail_quote").
        if parts is None or (hparts.marker and hparts.reply):
            return hparts
    return parts if parts is not None else ReplyParts("", "", "", "", "")
