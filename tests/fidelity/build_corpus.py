"""Writes the fidelity corpus (tests/fidelity/mail/*.eml + *.expected.json) — every message here was
written for this project (no third-party test data). Run it to regenerate after editing a case:
``python tests/fidelity/build_corpus.py``. The .eml files are committed byte-exact (.gitattributes)."""
from __future__ import annotations

import base64
import json
import quopri
from pathlib import Path

OUT = Path(__file__).with_name("mail")
CASES: list[tuple[str, bytes, dict]] = []
_N = [0]


def b64w(text: str, charset: str, label: str | None = None) -> bytes:
    """An RFC 2047 B word: ``text`` encoded in ``charset``, labelled ``label`` (default: charset)."""
    return b"=?" + (label or charset).encode() + b"?B?" + base64.b64encode(text.encode(charset)) + b"?="


def mail(name: str, headers: list[bytes], body: bytes, expect: dict, *, to: bytes = b"support@example.test",
         date: bool = True) -> None:
    _N[0] += 1
    head = list(headers)
    if not any(h.lower().startswith(b"to:") for h in head):
        head.append(b"To: " + to)
    if date:
        head.append(b"Date: Mon, 03 Mar 2025 09:%02d:00 +0100" % (_N[0] % 60))
    head.append(b"Message-ID: <fid-%03d@corpus.ticketmx.test>" % _N[0])
    if not any(h.lower().startswith(b"mime-version") for h in head):
        head.append(b"MIME-Version: 1.0")
    raw = b"\r\n".join(head) + b"\r\n\r\n" + body
    CASES.append((f"{_N[0]:02d}-{name}", raw, expect))


def text_ct(charset: str) -> bytes:
    return b"Content-Type: text/plain; charset=" + charset.encode()


def enc(s: str, c: str) -> bytes:
    return s.encode(c)


# ----------------------------------------------------------------------------- legacy 8-bit headers
mail("gbk-declared", [b"From: " + enc("张伟", "gbk") + b" <zhang.wei@example.cn>",
                      b"Subject: " + enc("关于发票的问题", "gbk"), text_ct("gbk"),
                      b"Content-Transfer-Encoding: 8bit"],
     enc("您好，\r\n我的发票有问题，请帮忙处理。\r\n", "gbk"),
     {"subject": "关于发票的问题", "from_addr": "zhang.wei@example.cn", "from_name": "张伟",
      "body_startswith": "您好，"})
mail("gb2312-undeclared", [b"From: " + enc("王小明", "gb2312") + b" <wxm@example.cn>",
                           b"Subject: " + enc("您好，请帮我重置密码", "gb2312"), text_ct("us-ascii")],
     b"Please reset my password.\r\n",
     {"subject": "您好，请帮我重置密码", "from_addr": "wxm@example.cn", "from_name": "王小明",
      "body_contains": "reset my password"})
mail("gbk-re-subject", [b"From: " + enc("李娜", "gbk") + b" <li.na@example.cn>",
                        b"Subject: Re: " + enc("关于合同的修改", "gbk"), text_ct("gb2312"),
                        b"Content-Transfer-Encoding: 8bit"],
     enc("合同已经收到。\r\n", "gb2312"),
     {"subject": "Re: 关于合同的修改", "from_addr": "li.na@example.cn", "from_name": "李娜",
      "body_contains": "合同已经收到"})
mail("sjis-declared", [b"From: " + enc("山田太郎", "shift_jis") + b" <yamada@example.jp>",
                       b"Subject: " + enc("お問い合わせ：注文番号について", "shift_jis"), text_ct("Shift_JIS"),
                       b"Content-Transfer-Encoding: 8bit"],
     enc("注文番号12345の件でご連絡します。\r\n", "shift_jis"),
     {"subject": "お問い合わせ：注文番号について", "from_addr": "yamada@example.jp", "from_name": "山田太郎",
      "body_startswith": "注文番号12345"})
mail("sjis-undeclared", [b"From: " + enc("佐藤花子", "shift_jis") + b" <sato@example.jp>",
                         b"Subject: " + enc("見積もり依頼", "shift_jis"), text_ct("us-ascii")],
     b"See subject.\r\n",
     {"subject": "見積もり依頼", "from_addr": "sato@example.jp", "from_name": "佐藤花子", "body_contains": "See subject"})
mail("iso2022jp-label-sjis-bytes", [b"From: " + b64w("鈴木一郎", "shift_jis", "ISO-2022-JP") + b" <suzuki@example.jp>",
                                    b"Subject: " + b64w("請求書の再発行について", "shift_jis", "ISO-2022-JP"),
                                    b"Content-Type: text/plain; charset=ISO-2022-JP", b"Content-Transfer-Encoding: 7bit"],
     enc("よろしくお願いします。\r\n", "iso2022_jp"),
     {"subject": "請求書の再発行について", "from_addr": "suzuki@example.jp", "from_name": "鈴木一郎",
      "body_contains": "よろしくお願いします"})
mail("iso2022jp-proper", [b"From: " + b64w("高橋", "iso2022_jp", "ISO-2022-JP") + b" <takahashi@example.jp>",
                          b"Subject: " + b64w("会議の日程", "iso2022_jp", "ISO-2022-JP"),
                          b"Content-Type: text/plain; charset=ISO-2022-JP"],
     enc("来週の会議について。\r\n", "iso2022_jp"),
     {"subject": "会議の日程", "from_addr": "takahashi@example.jp", "from_name": "高橋", "body_contains": "来週の会議"})
mail("koi8r-declared", [b"From: " + enc("Иван Петров", "koi8_r") + b" <ivan@example.ru>",
                        b"Subject: " + enc("Проблема с доступом к почте", "koi8_r"), text_ct("koi8-r"),
                        b"Content-Transfer-Encoding: 8bit"],
     enc("Не могу войти в почту.\r\n", "koi8_r"),
     {"subject": "Проблема с доступом к почте", "from_addr": "ivan@example.ru", "from_name": "Иван Петров",
      "body_startswith": "Не могу войти"})
mail("koi8r-undeclared", [b"From: " + enc("Ольга Смирнова", "koi8_r") + b" <olga@example.ru>",
                          b"Subject: " + enc("Заявка на ремонт принтера", "koi8_r")],
     b"Printer broken.\r\n",
     {"subject": "Заявка на ремонт принтера", "from_addr": "olga@example.ru", "from_name": "Ольга Смирнова",
      "body_contains": "Printer broken"})
mail("cp1251-declared", [b"From: " + enc("Сергей Иванов", "cp1251") + b" <sergey@example.ru>",
                         b"Subject: " + enc("Счёт №5 за март", "cp1251"), text_ct("windows-1251"),
                         b"Content-Transfer-Encoding: 8bit"],
     enc("Прошу выставить счёт.\r\n", "cp1251"),
     {"subject": "Счёт №5 за март", "from_addr": "sergey@example.ru", "from_name": "Сергей Иванов",
      "body_contains": "выставить счёт"})
mail("cp1251-undeclared", [b"From: " + enc("Анна Кузнецова", "cp1251") + b" <anna@example.ru>",
                           b"Subject: " + enc("Не работает VPN", "cp1251")],
     b"VPN is down since morning.\r\n",
     {"subject": "Не работает VPN", "from_addr": "anna@example.ru", "from_name": "Анна Кузнецова",
      "body_contains": "VPN is down"})
mail("cp1250-declared", [b"From: " + enc("Łukasz Wiśniewski", "cp1250") + b" <lukasz@example.pl>",
                         b"Subject: " + enc("Żółta łódź – problém s účtem", "cp1250"), text_ct("windows-1250"),
                         b"Content-Transfer-Encoding: 8bit"],
     enc("Dzień dobry, mam problem z kontem.\r\n", "cp1250"),
     {"subject": "Żółta łódź – problém s účtem", "from_addr": "lukasz@example.pl", "from_name": "Łukasz Wiśniewski",
      "body_startswith": "Dzień dobry"})
mail("cp1250-undeclared", [b"From: " + enc("Paweł Zieliński", "cp1250") + b" <pawel@example.pl>",
                           b"Subject: " + enc("Zgłoszenie: drukarka się zacina", "cp1250")],
     b"Printer jams.\r\n",
     {"subject": "Zgłoszenie: drukarka się zacina", "from_addr": "pawel@example.pl", "from_name": "Paweł Zieliński",
      "body_contains": "Printer jams"})
mail("cp1252-undeclared", [b"From: " + enc("Jürgen Größer", "cp1252") + b" <juergen@example.de>",
                           b"Subject: " + enc("Ärger mit der Rechnung für März", "cp1252")],
     b"Bitte pruefen.\r\n",
     {"subject": "Ärger mit der Rechnung für März", "from_addr": "juergen@example.de", "from_name": "Jürgen Größer",
      "body_contains": "Bitte pruefen"})
mail("latin1-declared", [b"From: " + enc("François Dupont", "latin-1") + b" <francois@example.fr>",
                         b"Subject: " + enc("Réservation confirmée", "latin-1"), text_ct("iso-8859-1"),
                         b"Content-Transfer-Encoding: 8bit"],
     enc("Merci beaucoup, à bientôt.\r\n", "latin-1"),
     {"subject": "Réservation confirmée", "from_addr": "francois@example.fr", "from_name": "François Dupont",
      "body_contains": "à bientôt"})
mail("utf8-raw-headers", [b"From: " + enc("Zoë Ångström", "utf-8") + b" <zoe@example.se>",
                          b"Subject: " + enc("Fråga om fakturan 🧾", "utf-8"), text_ct("utf-8"),
                          b"Content-Transfer-Encoding: 8bit"],
     enc("Hej! Jag har en fråga.\r\n", "utf-8"),
     {"subject": "Fråga om fakturan 🧾", "from_addr": "zoe@example.se", "from_name": "Zoë Ångström",
      "body_startswith": "Hej!"})
mail("word-utf8-label-cp1252-bytes", [b"From: =?utf-8?Q?Ren=E9e_Fabre?= <renee@example.fr>",
                                      b"Subject: =?utf-8?Q?Probl=E8me_de_connexion?="],
     b"Je ne peux pas me connecter.\r\n",
     {"subject": "Problème de connexion", "from_addr": "renee@example.fr", "from_name": "Renée Fabre",
      "body_contains": "me connecter"})
mail("gbk-word-labelled-gb2312", [b"From: " + b64w("陈静", "gbk", "gb2312") + b" <chen@example.cn>",
                                  b"Subject: " + b64w("服务器宕机了", "gbk", "gb2312"), text_ct("gb2312")],
     b"Server down.\r\n",
     {"subject": "服务器宕机了", "from_addr": "chen@example.cn", "from_name": "陈静", "body_contains": "Server down"})

# ----------------------------------------------------------------------------- senders
mail("ew-comma-latin1", [b"From: =?iso-8859-1?Q?M=FCller,=20Hans?= <hans.mueller@example.de>",
                         b"Subject: Bestellung 4711"],
     b"Hallo, wo bleibt meine Bestellung?\r\n",
     {"subject": "Bestellung 4711", "from_addr": "hans.mueller@example.de", "from_name": "Müller, Hans",
      "body_startswith": "Hallo, wo bleibt"})
mail("ew-comma-utf8", [b"From: =?UTF-8?Q?Doe,_John?= <john.doe@example.com>", b"Subject: Access request"],
     b"Please grant access.\r\n",
     {"subject": "Access request", "from_addr": "john.doe@example.com", "from_name": "Doe, John",
      "body_contains": "grant access"})
mail("ew-comma-b", [b"From: " + b64w("Kowalski, Jan", "utf-8") + b" <jan.kowalski@example.pl>",
                    b"Subject: Laptop"],
     b"Laptop is slow.\r\n",
     {"subject": "Laptop", "from_addr": "jan.kowalski@example.pl", "from_name": "Kowalski, Jan",
      "body_contains": "Laptop is slow"})
mail("root-localhost", [b"From: root@localhost", b"Subject: Cron <root@backup01> /usr/local/bin/backup.sh"],
     b"backup: 3 files could not be read\r\n",
     {"subject": "Cron <root@backup01> /usr/local/bin/backup.sh", "from_addr": "root@localhost", "from_name": "",
      "body_startswith": "backup: 3 files"})
mail("nagios-dotless", [b"From: Nagios Monitoring <nagios@monitor>",
                        b"Subject: ** PROBLEM Service Alert: web01/HTTP is CRITICAL **"],
     b"***** Nagios *****\r\n\r\nNotification Type: PROBLEM\r\nHost: web01\r\n",
     {"subject": "** PROBLEM Service Alert: web01/HTTP is CRITICAL **", "from_addr": "nagios@monitor",
      "from_name": "Nagios Monitoring", "body_contains": "Notification Type: PROBLEM"})
mail("addr-comment-name", [b"From: anna.berg@example.org (Anna Berg)", b"Subject: Password expired"],
     b"My password expired.\r\n",
     {"subject": "Password expired", "from_addr": "anna.berg@example.org", "from_name": "Anna Berg",
      "body_contains": "password expired"})
mail("addr-comment-ew", [b"From: jose@example.es (=?utf-8?Q?Jos=C3=A9_Garc=C3=ADa?=)", b"Subject: Consulta"],
     b"Hola.\r\n",
     {"subject": "Consulta", "from_addr": "jose@example.es", "from_name": "José García", "body_contains": "Hola"})
mail("quoted-dot-atom-local", [b'From: "john.smith"@example.com', b"Subject: Quoted local part"],
     b"Hi.\r\n",
     {"subject": "Quoted local part", "from_addr": "john.smith@example.com", "from_name": "", "body_contains": "Hi."})
mail("quoted-local-needs-quotes", [b'From: Support Bot <"help desk"@example.com>', b"Subject: Quoted with space"],
     b"Automated.\r\n",
     {"subject": "Quoted with space", "from_addr": '"help desk"@example.com', "from_name": "Support Bot",
      "body_contains": "Automated"})
mail("quoted-name-comma", [b'From: "Smith, Anna" <anna.smith@example.org>', b"Subject: Monitor flickers"],
     b"The monitor flickers.\r\n",
     {"subject": "Monitor flickers", "from_addr": "anna.smith@example.org", "from_name": "Smith, Anna",
      "body_contains": "flickers"})
mail("angle-only", [b"From: <orders@shop.example.com>", b"Subject: Your order has shipped"],
     b"Tracking: 1Z999\r\n",
     {"subject": "Your order has shipped", "from_addr": "orders@shop.example.com", "from_name": "",
      "body_contains": "Tracking"})
mail("uppercase-domain", [b"From: Peter Pan <Peter.Pan@NeverLand.Example.COM>", b"Subject: Case"],
     b"Case test.\r\n",
     {"subject": "Case", "from_addr": "Peter.Pan@neverland.example.com", "from_name": "Peter Pan",
      "body_contains": "Case test"})

# ----------------------------------------------------------------------------- attachments
inner = (b"From: Customer <customer@example.net>\r\nTo: sales@example.test\r\nSubject: Order 12/34: missing item\r\n"
         b"Date: Sun, 02 Mar 2025 10:00:00 +0100\r\nMessage-ID: <inner-1@example.net>\r\n\r\nItem 3 is missing.\r\n")
mail("forward-rfc822", [b"From: Sales Team <sales@example.org>", b"Subject: Fwd: Order 12/34: missing item",
                        b'Content-Type: multipart/mixed; boundary="fwd1"'],
     b"--fwd1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the attached customer mail.\r\n"
     b"--fwd1\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + inner + b"--fwd1--\r\n",
     {"subject": "Fwd: Order 12/34: missing item", "from_addr": "sales@example.org", "from_name": "Sales Team",
      "body_startswith": "See the attached", "attachments": ["Order 12 34 missing item.eml"]})
inner2 = (b"From: =?utf-8?Q?B=C3=A4rbel?= <baerbel@example.de>\r\nSubject: =?utf-8?Q?=C3=9Cberweisung_fehlt?=\r\n"
          b"Content-Type: text/plain; charset=utf-8\r\n\r\nBitte pruefen.\r\n")
mail("forward-rfc822-encoded-subject", [b"From: Office <office@example.de>", b"Subject: WG: Ueberweisung",
                                        b'Content-Type: multipart/mixed; boundary="fwd2"'],
     b"--fwd2\r\nContent-Type: text/plain\r\n\r\nZur Info.\r\n"
     b"--fwd2\r\nContent-Type: message/rfc822\r\n\r\n" + inner2 + b"--fwd2--\r\n",
     {"subject": "WG: Ueberweisung", "from_addr": "office@example.de", "from_name": "Office",
      "body_startswith": "Zur Info", "attachments": ["Überweisung fehlt.eml"]})
mail("forward-rfc822-no-subject", [b"From: Office <office@example.de>", b"Subject: forwarded",
                                   b'Content-Type: multipart/mixed; boundary="fwd3"'],
     b"--fwd3\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
     b"--fwd3\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@example.net\r\n\r\nno subject here\r\n--fwd3--\r\n",
     {"subject": "forwarded", "from_addr": "office@example.de", "from_name": "Office",
      "body_startswith": "See attached", "attachments": ["message.eml"]})
mail("later-part-no-ctype", [b"From: Scanner <scanner@example.org>", b"Subject: Scan job 88",
                             b'Content-Type: multipart/mixed; boundary="scan"'],
     b"--scan\r\nContent-Type: text/plain\r\n\r\nYour scan is attached.\r\n"
     b"--scan\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(b"%PDF-1.4 fake scan\n" * 4).replace(b"\n", b"\r\n")
     + b"--scan--\r\n",
     {"subject": "Scan job 88", "from_addr": "scanner@example.org", "from_name": "Scanner",
      "body_startswith": "Your scan is attached", "body_not_contains": "PDF-1.4", "attachments": ["file"]})
mail("later-part-no-ctype-text", [b"From: App <app@example.org>", b"Subject: Export ready",
                                  b'Content-Type: multipart/mixed; boundary="exp"'],
     b"--exp\r\nContent-Type: text/plain\r\n\r\nThe export is ready.\r\n"
     b"--exp\r\n\r\nid;name\r\n1;alpha\r\n--exp--\r\n",
     {"subject": "Export ready", "from_addr": "app@example.org", "from_name": "App",
      "body_startswith": "The export is ready", "body_not_contains": "1;alpha", "attachments": ["file"]})
mail("nested-multipart-no-boundary-parts", [b"From: Relay <relay@example.org>", b"Subject: Report",
                                            b'Content-Type: multipart/mixed; boundary="outer"'],
     b"--outer\r\nContent-Type: text/plain\r\n\r\nReport below.\r\n"
     b'--outer\r\nContent-Type: multipart/related; boundary="inner-missing"\r\n\r\nstray report data\r\n--outer--\r\n',
     {"subject": "Report", "from_addr": "relay@example.org", "from_name": "Relay",
      "body_startswith": "Report below", "body_not_contains": "stray report data", "attachments": ["file"]})
mail("html-title-only", [b"From: Alerts <alerts@example.org>", b"Subject: Alert",
                         b"Content-Type: text/html; charset=utf-8"],
     b"<html><head><title>Disk usage on db02 above 95%</title></head><body></body></html>\r\n",
     {"subject": "Alert", "from_addr": "alerts@example.org", "from_name": "Alerts",
      "body_startswith": "Disk usage on db02 above 95%"})
mail("html-title-and-body", [b"From: Alerts <alerts@example.org>", b"Subject: Alert 2",
                             b"Content-Type: text/html; charset=utf-8"],
     b"<html><head><title>Ignored title</title></head><body><p>Real body text.</p></body></html>\r\n",
     {"subject": "Alert 2", "from_addr": "alerts@example.org", "from_name": "Alerts",
      "body_startswith": "Real body text.", "body_not_contains": "Ignored title"})
mail("rfc2231-filename", [b"From: Maria <maria@example.es>", b"Subject: Factura",
                          b'Content-Type: multipart/mixed; boundary="f"'],
     b"--f\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nAdjunto la factura.\r\n"
     b"--f\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=utf-8''factura%20marzo%20%C3%B1.pdf\r\n"
     b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(b"%PDF-1.4\n%fake\n").replace(b"\n", b"\r\n")
     + b"--f--\r\n",
     {"subject": "Factura", "from_addr": "maria@example.es", "from_name": "Maria",
      "body_startswith": "Adjunto la factura", "attachments": ["factura marzo ñ.pdf"]})
mail("ew-filename-gbk-raw", [b"From: " + enc("刘洋", "gbk") + b" <liu@example.cn>", b"Subject: " + enc("附件", "gbk"),
                             b'Content-Type: multipart/mixed; boundary="g"'],
     b"--g\r\nContent-Type: text/plain; charset=gbk\r\n\r\n" + enc("请查收附件。", "gbk") + b"\r\n"
     b'--g\r\nContent-Type: text/plain; name="' + enc("报告.txt", "gbk") + b'"\r\nContent-Disposition: attachment; filename="'
     + enc("报告.txt", "gbk") + b'"\r\n\r\nreport\r\n--g--\r\n',
     {"subject": "附件", "from_addr": "liu@example.cn", "from_name": "刘洋", "body_startswith": "请查收附件",
      "attachments": ["报告.txt"]})

# ----------------------------------------------------------------------------- ordinary mail
mail("plain-ascii", [b"From: Alice Example <alice@customer.example>", b"Subject: Printer on fire", text_ct("us-ascii")],
     b"The printer on floor 2 is on fire.\r\n",
     {"subject": "Printer on fire", "from_addr": "alice@customer.example", "from_name": "Alice Example",
      "body_startswith": "The printer on floor 2"})
mail("utf8-b-subject", [b"From: =?UTF-8?B?" + base64.b64encode("Ève Durand".encode()) + b"?= <eve@example.fr>",
                        b"Subject: =?UTF-8?B?" + base64.b64encode("Mot de passe oublié".encode()) + b"?=",
                        text_ct("utf-8"), b"Content-Transfer-Encoding: quoted-printable"],
     quopri.encodestring("J'ai oublié mon mot de passe.\r\n".encode()),
     {"subject": "Mot de passe oublié", "from_addr": "eve@example.fr", "from_name": "Ève Durand",
      "body_startswith": "J'ai oublié"})
mail("alternative", [b"From: Bob <bob@example.net>", b"Subject: Meeting notes",
                     b'Content-Type: multipart/alternative; boundary="alt"'],
     b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nNotes: all good.\r\n"
     b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Notes: <b>all good</b>.</p>\r\n--alt--\r\n",
     {"subject": "Meeting notes", "from_addr": "bob@example.net", "from_name": "Bob", "body_startswith": "Notes: all good."})
mail("html-only", [b"From: Newsletter <news@example.com>", b"Subject: Weekly update",
                   b"Content-Type: text/html; charset=iso-8859-1", b"Content-Transfer-Encoding: quoted-printable"],
     b"<html><body><h1>Update</h1><p>Caf=E9 opens at 8.</p></body></html>\r\n",
     {"subject": "Weekly update", "from_addr": "news@example.com", "from_name": "Newsletter",
      "body_contains": "Café opens at 8."})
mail("folded-long-subject", [b"From: Carol <carol@example.org>",
                             b"Subject: =?utf-8?Q?Sehr_lange_Betreffzeile_mit_Umlauten_=C3=A4=C3=B6=C3=BC_und?=\r\n"
                             b" =?utf-8?Q?_noch_mehr_Text_am_Ende?="],
     b"Text.\r\n",
     {"subject": "Sehr lange Betreffzeile mit Umlauten äöü und noch mehr Text am Ende", "from_addr": "carol@example.org",
      "from_name": "Carol", "body_contains": "Text."})
mail("reply-threaded", [b"From: Dave <dave@example.org>", b"Subject: Re: [HD-999] VPN",
                        b"In-Reply-To: <unknown@example.test>"],
     b"Still broken.\r\n\r\nOn Mon, support wrote:\r\n> Try again.\r\n",
     {"subject": "Re: [HD-999] VPN", "from_addr": "dave@example.org", "from_name": "Dave",
      "body_startswith": "Still broken."})
ob = b"----=_NextPart_000_0012_01D9A1B2.C3D4E5F6"
mail("outlook-boundary", [b"From: \"Eve Outlook\" <eve@corp.example>", b"Subject: Outlook message",
                          b"Content-Type: multipart/mixed; boundary=" + ob],
     b"--" + ob + b"\r\nContent-Type: text/plain; charset=\"windows-1252\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
     b"Gr=FC=DFe aus dem B=FCro.\r\n--" + ob + b"\r\nContent-Type: text/csv; name=\"data.csv\"\r\n"
     b"Content-Disposition: attachment; filename=\"data.csv\"\r\n\r\na,b\r\n1,2\r\n--" + ob + b"--\r\n",
     {"subject": "Outlook message", "from_addr": "eve@corp.example", "from_name": "Eve Outlook",
      "body_startswith": "Grüße aus dem Büro.", "attachments": ["data.csv"]})
mail("latin9-body", [b"From: Frank <frank@example.be>", b"Subject: =?iso-8859-15?Q?Prix_=A4_10?=", text_ct("iso-8859-15"),
                     b"Content-Transfer-Encoding: 8bit"],
     enc("Le prix est de 10 €.\r\n", "iso8859_15"),
     {"subject": "Prix € 10", "from_addr": "frank@example.be", "from_name": "Frank", "body_contains": "10 €"})
mail("base64-body", [b"From: Grace <grace@example.org>", b"Subject: Base64 body", text_ct("utf-8"),
                     b"Content-Transfer-Encoding: base64"],
     base64.encodebytes("Zeile eins\r\nZeile zwei – Ende\r\n".encode()).replace(b"\n", b"\r\n"),
     {"subject": "Base64 body", "from_addr": "grace@example.org", "from_name": "Grace", "body_startswith": "Zeile eins"})
mail("inline-image", [b"From: Heidi <heidi@example.ch>", b"Subject: Screenshot",
                      b'Content-Type: multipart/related; boundary="rel"'],
     b"--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>See <img src=\"cid:img1\"> here.</p>\r\n"
     b"--rel\r\nContent-Type: image/png\r\nContent-ID: <img1>\r\nContent-Disposition: inline; filename=\"shot.png\"\r\n"
     b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg==\r\n--rel--\r\n",
     {"subject": "Screenshot", "from_addr": "heidi@example.ch", "from_name": "Heidi", "body_contains": "See",
      "attachments": ["shot.png"]})


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    for name, raw, expect in CASES:
        (OUT / f"{name}.eml").write_bytes(raw)
        (OUT / f"{name}.expected.json").write_text(json.dumps(expect, ensure_ascii=False, indent=1) + "\n",
                                                     encoding="utf-8")
    print(f"{len(CASES)} messages in {OUT}")


if __name__ == "__main__":
    main()
