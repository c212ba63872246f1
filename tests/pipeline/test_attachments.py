"""Stage "attachments": one case per rule, dangerous names, TNEF (winmail.dat)."""
from __future__ import annotations

import base64
import io
import struct
import zipfile
from urllib.parse import quote

import pytest

from gateway.config.errors import ConfigError
from gateway.pipeline.stages.attachments import AttachmentsStage, analyse_attachments, decode_tnef, safe_filename
from gateway.pipeline.parse.mime import parse_message
from gateway.config.pipeline import AttachmentPolicy, parse_pipeline_policy
from gateway.pipeline.stages.core import CONTINUE

from .helpers import inbound, run

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 40
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40
EXE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 120
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 60
RTF = b"{\\rtf1\\ansi Hello}"


def _docx() -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document/>")
    return b.getvalue()


def mail(parts: list[tuple[str, str, bytes]] | list[tuple], html: str = "") -> bytes:
    """multipart/mixed with a text body and attachments (filename, content type, content[, inline cid])."""
    out = [b"From: Alice <alice@example.org>\r\nTo: support@example.test\r\nSubject: files\r\n"
           b"Message-ID: <att@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\n"]
    out.append(b"--BOUND\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n")
    if html:
        out.append(b"--BOUND\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode() + b"\r\n")
    for item in parts:
        name, ctype, content = item[:3]
        cid = item[3] if len(item) > 3 else ""
        disp = "inline" if cid else "attachment"
        if name and not name.isascii() or any(ord(c) < 32 for c in name):
            param = f"filename*=utf-8''{quote(name, safe='')}"
        elif name:
            param = f'filename="{name}"'
        else:
            param = ""
        head = f"--BOUND\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n" \
               f"Content-Disposition: {disp}{'; ' + param if param else ''}\r\n"
        if cid:
            head += f"Content-ID: <{cid}>\r\n"
        out.append(head.encode() + b"\r\n" + base64.encodebytes(content).replace(b"\n", b"\r\n") + b"\r\n")
    out.append(b"--BOUND--\r\n")
    return b"".join(out)


def analyse(parts, policy: AttachmentPolicy | None = None, html: str = "") -> dict:
    return analyse_attachments(parse_message(mail(parts, html)), policy or AttachmentPolicy())


def reasons(data: dict) -> dict[str, str]:
    return {s["filename"]: s["reason"] for s in data["stripped"]}


def test_ordinary_attachments_and_inline_cid_image_kept() -> None:
    html = '<p>Logo: <img src="cid:logo123@example.org"></p>'
    data = analyse([("report.pdf", "application/pdf", PDF), ("", "image/png", PNG, "logo123@example.org"),
                    ("spec.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", _docx()),
                    ("notes.txt", "text/plain", b"plain notes\n")], html=html)
    assert data["stripped"] == []
    assert data["kept"] == [(0, "report.pdf"), (1, "image-2.png"), (2, "spec.docx"), (3, "notes.txt")]
    parsed = parse_message(mail([("", "image/png", PNG, "logo123@example.org")], html))
    assert parsed.attachments[0].inline and parsed.attachments[0].content_id == "logo123@example.org"


def test_empty_file() -> None:
    data = analyse([("empty.txt", "text/plain", b"")])
    assert reasons(data) == {"empty.txt": "empty file"}
    s = data["stripped"][0]
    assert s["size"] == 0 and s["sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert analyse([("empty.txt", "text/plain", b"")], AttachmentPolicy(strip_empty=False))["kept"] == [(0, "empty.txt")]


def test_size_limits() -> None:
    pol = parse_pipeline_policy({"attachments": {"max_attachment_size": "100B", "max_total_size": "150B"}}).attachments
    big = PDF + b"x" * 200
    data = analyse([("big.pdf", "application/pdf", big), ("a.pdf", "application/pdf", PDF),
                    ("b.pdf", "application/pdf", PDF + b" " * 30)], pol)
    assert reasons(data)["big.pdf"].startswith("too large (")
    assert reasons(data)["b.pdf"] == "attachments exceed max_total_size 150"
    assert data["kept"] == [(1, "a.pdf")]


def test_count_limit() -> None:
    data = analyse([(f"f{i}.pdf", "application/pdf", PDF) for i in range(3)], AttachmentPolicy(max_attachments=2))
    assert [k[1] for k in data["kept"]] == ["f0.pdf", "f1.pdf"]
    assert reasons(data) == {"f2.pdf": "too many attachments (max_attachments 2)"}


def test_deny_extension_and_detected_type() -> None:
    data = analyse([("tool.exe", "application/octet-stream", EXE), ("run.js", "text/javascript", b"alert(1)"),
                    ("report.pdf", "application/pdf", EXE), ("readme", "application/octet-stream", ELF),
                    ("photo.jpg", "image/jpeg", JPEG)])
    assert reasons(data) == {
        "tool.exe": "denied extension .exe",
        "run.js": "denied extension .js",
        "report.pdf": "denied type application/x-msdownload",       # the content decides, not the name
        "readme": "denied type application/x-executable",
    }
    assert data["kept"] == [(4, "photo.jpg")]
    assert {s["detected"] for s in data["stripped"]} >= {"application/x-msdownload", "application/x-executable"}


def test_mismatch() -> None:
    data = analyse([("photo.jpg", "image/jpeg", PDF),                    # name says image, content is PDF
                    ("scan.jpg", "image/jpeg", PNG),                     # an image is an image
                    ("letter.doc", "application/msword", RTF),           # Word saves RTF as .doc
                    ("x", "application/pdf", PNG),                       # declared type contradicts content
                    ("y", "application/octet-stream", PNG),              # generic declarations say nothing
                    ("data.csv", "text/csv", _docx()),                   # text name, zip content
                    ("archive.zip", "application/zip", _docx())])        # a docx is a zip
    assert reasons(data) == {
        "photo.jpg": "type mismatch: content is application/pdf but the name says .jpg",
        "x": "type mismatch: content is image/png but it was declared application/pdf",
        "data.csv": "type mismatch: content is application/vnd.openxmlformats-officedocument."
                    "wordprocessingml.document but the name says .csv",
    }
    assert [k[1] for k in data["kept"]] == ["scan.jpg", "letter.doc", "y", "archive.zip"]
    assert analyse([("photo.jpg", "image/jpeg", PDF)], AttachmentPolicy(mismatch="keep"))["stripped"] == []


def test_allow_lists() -> None:
    parts = [("a.pdf", "application/pdf", PDF), ("b.png", "image/png", PNG), ("c.txt", "text/plain", b"hi"),
             ("noext", "application/octet-stream", b"some bytes")]
    data = analyse(parts, parse_pipeline_policy({"attachments": {"allow_extensions": [".PDF", "txt"]}}).attachments)
    assert reasons(data) == {"b.png": "extension .png not allowed", "noext": "extension (none) not allowed"}
    data = analyse(parts, parse_pipeline_policy({"attachments": {"allow_types": ["image/*", "text/plain"]}}).attachments)
    assert reasons(data) == {"a.pdf": "type application/pdf not allowed",
                             "noext": "type application/octet-stream not allowed"}


SAFE_NAMES = [
    # (original, safe, problems that must be reported)
    ("report.pdf", "report.pdf", []),
    ("Angebot 2024 (final).pdf", "Angebot 2024 (final).pdf", []),
    ("日本語の資料.pdf", "日本語の資料.pdf", []),
    ("invoice\u202egpj.exe", "invoicegpj.exe", ["bidi-control"]),
    ("pay\u2067ment\u2069.pdf", "payment.pdf", ["bidi-control"]),
    ("zero\u200bwidth.txt", "zerowidth.txt", ["format-character"]),
    ("../../etc/passwd", "passwd", ["path-separator"]),
    ("C:\\Windows\\System32\\evil.txt", "evil.txt", ["path-separator", ]),
    ("con.txt", "_con.txt", ["reserved-name"]),
    ("CON", "_CON", ["reserved-name"]),
    ("lpt1.tar.gz", "_lpt1.tar.gz", ["reserved-name"]),
    ("Com9 .log", "_Com9 .log", ["reserved-name"]),
    ("nul", "_nul", ["reserved-name"]),
    ("console.txt", "console.txt", []),
    ("report.pdf. . .", "report.pdf", ["trailing-dot-or-space"]),
    ("report.exe ", "report.exe", ["trailing-dot-or-space"]),
    (".htaccess", "htaccess", ["leading-dot"]),
    ("a\x00b\x07c.txt", "abc.txt", ["control-character"]),
    ("line\nbreak.txt", "line break.txt", ["control-character"]),
    ('what?<>|*":.txt', "what_______.txt", ["invalid-character"]),
    ("..", "attachment", ["empty"]),
]


@pytest.mark.parametrize("original,safe,problems", SAFE_NAMES)
def test_safe_filename(original: str, safe: str, problems: list[str]) -> None:
    got, found = safe_filename(original, 150)
    assert got == safe
    for p in problems:
        assert p in found, (original, found)
    if not problems:
        assert found == []


def test_overlong_name_keeps_extension() -> None:
    got, problems = safe_filename("x" * 300 + ".pdf", 150)
    assert got.endswith(".pdf") and len(got) <= 150 and "too-long" in problems
    got, _ = safe_filename("ü" * 200 + ".docx", 255)
    assert got.endswith(".docx") and len(got.encode("utf-8")) <= 255


def test_dangerous_names_in_a_message() -> None:
    data = analyse([("invoice\u202efdp.exe", "application/pdf", PDF),
                    ("../../.ssh/authorized_keys", "text/plain", b"ssh-ed25519 AAAA"),
                    ("report.pdf", "application/pdf", PDF), ("report.pdf", "application/pdf", PDF + b"2")])
    stripped = data["stripped"]
    assert stripped[0]["filename"] == "invoicefdp.exe" and stripped[0]["reason"] == "denied extension .exe"
    assert stripped[0]["original"] == "invoice\\u202efdp.exe"
    assert data["kept"] == [(1, "authorized_keys"), (2, "report.pdf"), (3, "report (2).pdf")]


# --------------------------------------------------------------------------- #
# TNEF: winmail.dat written here from the format (MS-OXTNEF), no third-party sample files
# --------------------------------------------------------------------------- #
def _attr(level: int, attr_id: int, attr_type: int, data: bytes) -> bytes:
    return struct.pack("<BHHI", level, attr_id, attr_type, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def tnef(files: list[tuple[str, bytes]]) -> bytes:
    out = struct.pack("<IH", 0x223E9F78, 0x0101)
    out += _attr(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))        # attTnefVersion
    out += _attr(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))           # attOemCodepage
    for name, data in files:
        out += _attr(2, 0x9002, 0x0006, b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 8)   # attAttachRendData
        out += _attr(2, 0x8010, 0x0001, name.encode() + b"\x00")           # attAttachTitle
        out += _attr(2, 0x800F, 0x0006, data)                              # attAttachData
    return out


def test_tnef_decoded_into_files() -> None:
    blob = tnef([("Quote.pdf", PDF), ("setup.exe", EXE)])
    assert [n for n, _ in decode_tnef(blob).files] == ["Quote.pdf", "setup.exe"]
    data = analyse([("winmail.dat", "application/ms-tnef", blob), ("other.pdf", "application/pdf", PDF)])
    assert data["kept"] == [(1, "other.pdf")]
    assert data["tnef"] == [{"index": 0, "filename": "winmail.dat", "files": ["Quote.pdf"]}]
    ex = data["extracted"]
    assert [(e["parent"], e["filename"], e["content_type"], e["size"]) for e in ex] == \
        [(0, "Quote.pdf", "application/pdf", len(PDF))]
    assert ex[0]["content"] == PDF
    assert [(s["parent"], s["filename"], s["reason"]) for s in data["stripped"]] == \
        [(0, "setup.exe", "denied extension .exe")]


def test_tnef_undecodable_or_keep_stays_as_is() -> None:
    data = analyse([("winmail.dat", "application/ms-tnef", b"not tnef at all")])
    assert data["kept"] == [(0, "winmail.dat")] and "tnef" not in data
    blob = tnef([("Quote.pdf", PDF)])
    data = analyse([("winmail.dat", "application/ms-tnef", blob)], AttachmentPolicy(tnef="keep"))
    assert data["kept"] == [(0, "winmail.dat")] and "extracted" not in data


def test_stage_verdict() -> None:
    raw = mail([("tool.exe", "application/octet-stream", EXE), ("a.pdf", "application/pdf", PDF),
                ("winmail.dat", "application/vnd.ms-tnef", tnef([("b.pdf", PDF)]))])
    v = run(AttachmentsStage(), inbound(raw))
    assert v.action == CONTINUE
    assert v.reason == "attachments: stripped 1: tool.exe (denied extension .exe)"
    assert v.data["kept"] == [(1, "a.pdf")] and v.data["extracted"][0]["filename"] == "b.pdf"
    v = run(AttachmentsStage(), inbound(mail([])))
    assert v.action == CONTINUE and v.data == {}


@pytest.mark.parametrize("table,key", [
    ({"max_attachment_size": "big"}, "pipeline.attachments.max_attachment_size"),
    ({"deny_extensions": ["ex e"]}, "pipeline.attachments.deny_extensions[0]"),
    ({"allow_types": ["pdf"]}, "pipeline.attachments.allow_types[0]"),
    ({"mismatch": "warn"}, "pipeline.attachments.mismatch"),
    ({"max_filename_length": 4}, "pipeline.attachments.max_filename_length"),
    ({"tnef": True}, "pipeline.attachments.tnef"),
])
def test_config_errors(table: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline_policy({"attachments": table})
    assert exc.value.key == key


def test_cid_body_images_escape_allow_lists_and_count_but_not_content_checks() -> None:
    html = '<p><img src="cid:logo@x"><img src="CID:fake@x"></p>'
    pol = AttachmentPolicy(allow_extensions=("pdf",), max_attachments=1)
    data = analyse([("logo.png", "image/png", PNG, "logo@x"), ("fake.png", "image/png", EXE, "fake@x"),
                    ("a.pdf", "application/pdf", PDF), ("b.png", "image/png", PNG)], pol, html=html)
    assert data["kept"] == [(0, "logo.png"), (2, "a.pdf")]
    assert reasons(data) == {"fake.png": "denied type application/x-msdownload",
                             "b.png": "extension .png not allowed"}
