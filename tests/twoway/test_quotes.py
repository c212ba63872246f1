"""split_reply: quoted history and signatures, by client and language."""
from __future__ import annotations

import time

import pytest

from gateway.pipeline.stages.quotes import (
    ReplyParts,
    extract_signature,
    header_line,
    split_html,
    split_reply,
    strip_html_quotes,
)

# (name, body, expected new text, expected start of the quoted part)
LOCALISED = [
    ("en-gmail", "Thanks, works.\n\nOn Mon, Apr 2, 2012 at 6:26 PM, Megan One <xxx@gmail.com> wrote:\n\n> Hi\n",
     "Thanks, works.", "On Mon, Apr 2"),
    ("en-gmail-wrapped", "Thanks.\n\nOn Mon, Apr 2, 2012 at 6:26 PM, Megan One <\nxxx@gmail.com> wrote:\n\n> Hi\n",
     "Thanks.", "On Mon, Apr 2"),
    ("en-apple", "Thanks.\n\nOn Apr 3, 2012, at 4:19 PM, bob <bob@example.com> wrote:\n\n> Hi\n",
     "Thanks.", "On Apr 3"),
    ("en-thunderbird", "Thanks.\n\nOn 02/04/2012 18:26, Megan One wrote:\n> Hi\n", "Thanks.", "On 02/04/2012"),
    ("en-yahoo-old", "Thanks.\n\n--- On Wed, 4/4/12, xxx@example.com <xxx@example.com> wrote:\n\nFrom: xxx\nHi\n",
     "Thanks.", "--- On Wed"),
    ("en-outlook-orig", "Thanks.\n\n-----Original Message-----\nFrom: Megan\nSent: Monday\nHi", "Thanks.",
     "-----Original Message-----"),
    ("en-outlook-rule", "Thanks.\n\n________________________________\nFrom: Megan One <xxx@gmail.com>\n"
     "Sent: Monday, April 2, 2012 6:26 PM\nTo: support\nSubject: Test\n\nHi", "Thanks.", "_____"),
    ("en-outlook-block", "Thanks.\n\nFrom: Megan One [mailto:xxx@gmail.com]\nSent: Monday, April 2, 2012 6:26 PM\n"
     "To: support\nSubject: Test\n\nHi", "Thanks.", "From: Megan One"),
    ("en-gmail-forward", "FYI\n\n---------- Forwarded message ---------\nFrom: Megan <m@x.test>\nDate: Mon\n\nHi",
     "FYI", "---------- Forwarded"),
    ("en-apple-forward", "FYI\n\nBegin forwarded message:\n\nFrom: Megan <m@x.test>\nSubject: x\n\nHi", "FYI",
     "Begin forwarded"),
    ("de-am", "Danke, geht wieder.\n\nAm 02.04.2012 um 18:26 schrieb Megan One <xxx@gmail.com>:\n\n> Hallo\n",
     "Danke, geht wieder.", "Am 02.04.2012"),
    ("de-am-wrapped", "Danke.\n\nAm Mo., 2. Apr. 2012 um 18:26 Uhr schrieb Megan One <\nxxx@gmail.com>:\n\n> Hallo\n",
     "Danke.", "Am Mo."),
    ("de-outlook", "Danke.\n\nVon: Megan One <xxx@gmail.com>\nGesendet: Montag, 2. April 2012 18:26\n"
     "An: support@example.test\nBetreff: Drucker\n\nHallo\n", "Danke.", "Von: Megan"),
    ("de-original", "Danke.\n\n-----Ursprüngliche Nachricht-----\nVon: Megan\nHallo", "Danke.", "-----Urspr"),
    ("de-forward", "Zur Info.\n\n---------- Weitergeleitete Nachricht ----------\nVon: Megan\nDatum: Mo\n\nHallo",
     "Zur Info.", "---------- Weiter"),
    ("fr", "Merci.\n\nLe lun. 2 avr. 2012 à 18:26, Megan One <xxx@gmail.com> a écrit :\n\n> Bonjour\n",
     "Merci.", "Le lun."),
    ("fr-nbsp", "Merci.\n\nLe 2 avr. 2012 à 18:26, Megan One <xxx@gmail.com> a\u00a0écrit\u00a0:\n\n> Bonjour\n",
     "Merci.", "Le 2 avr."),
    ("fr-outlook", "Merci.\n\nDe : Megan One\nEnvoyé : lundi 2 avril 2012 18:26\nÀ : support@example.test\n"
     "Objet : Test\n\nBonjour", "Merci.", "De : Megan"),
    ("fr-original", "Merci.\n\n-----Message d'origine-----\nDe : Megan\nBonjour", "Merci.", "-----Message d'origine"),
    ("es", "Gracias.\n\nEl lun., 2 abr. 2012 a las 18:26, Megan One (<xxx@gmail.com>) escribió:\n\n> Hola\n",
     "Gracias.", "El lun."),
    ("es-outlook", "Gracias.\n\nDe: Megan One\nEnviado: lunes, 2 de abril de 2012 18:26\nPara: soporte\n"
     "Asunto: Test\n\nHola", "Gracias.", "De: Megan"),
    ("nl", "Bedankt.\n\nOp ma 2 apr. 2012 om 18:26 schreef Megan One <xxx@gmail.com>:\n\n> Hallo\n",
     "Bedankt.", "Op ma"),
    ("nl-outlook", "Bedankt.\n\nVan: Megan One\nVerzonden: maandag 2 april 2012 18:26\nAan: support\n"
     "Onderwerp: Test\n\nHallo", "Bedankt.", "Van: Megan"),
    ("sv", "Tack.\n\nDen mån 2 apr. 2012 kl 18:26 skrev Megan One <xxx@gmail.com>:\n\n> Hej\n", "Tack.", "Den mån"),
    ("sv-outlook", "Tack.\n\nFrån: Megan One\nSkickat: den 2 april 2012 18:26\nTill: support\nÄmne: Test\n\nHej",
     "Tack.", "Från: Megan"),
    ("no", "Takk.\n\nman. 2. apr. 2012 kl. 18:26 skrev Megan One <xxx@gmail.com>:\n\n> Hei\n", "Takk.", "man. 2."),
    ("da", "Tak.\n\nDen 2. apr. 2012 kl. 18.26 skrev Megan One <xxx@gmail.com>:\n\n> Hej\n", "Tak.", "Den 2."),
    ("da-outlook", "Tak.\n\nFra: Megan One\nSendt: 2. april 2012 18:26\nTil: support\nEmne: Test\n\nHej",
     "Tak.", "Fra: Megan"),
    ("it", "Grazie.\n\nIl giorno lun 2 apr 2012 alle ore 18:26 Megan One <xxx@gmail.com> ha scritto:\n\n> Ciao\n",
     "Grazie.", "Il giorno"),
    ("it-outlook", "Grazie.\n\nDa: Megan One\nInviato: lunedì 2 aprile 2012 18:26\nA: supporto\n"
     "Oggetto: Test\n\nCiao", "Grazie.", "Da: Megan"),
    ("pt", "Obrigado.\n\nEm seg., 2 de abr. de 2012 às 18:26, Megan One <xxx@gmail.com> escreveu:\n\n> Olá\n",
     "Obrigado.", "Em seg."),
    ("pl", "Dzięki.\n\nW dniu 2.04.2012 o 18:26, Megan One <xxx@gmail.com> napisał(a):\n\n> Cześć\n",
     "Dzięki.", "W dniu"),
    ("pl-gmail", "Dzięki.\n\npon., 2 kwi 2012 o 18:26 Megan One <xxx@gmail.com> napisał(a):\n\n> Cześć\n",
     "Dzięki.", "pon., 2"),
    ("ru", "Спасибо.\n\n2 апреля 2012 г., 18:26 пользователь Megan One <xxx@gmail.com> написал:\n\n> Привет\n",
     "Спасибо.", "2 апреля"),
    ("ru-android",
     "Hello\n02.04.2012 14:20 пользователь \"bob@xxx.mailgun.org\" <\nbob@xxx.mailgun.org> написал:\n\n> Hi\n",
     "Hello", "02.04.2012"),
    ("ru-gmail", "Спасибо.\n\nпн, 2 апр. 2012 г. в 18:26, Megan One <xxx@gmail.com>:\n\n> Привет\n",
     "Спасибо.", "пн, 2"),
    ("ru-outlook", "Спасибо.\n\nОт: Megan One\nОтправлено: 2 апреля 2012 г. 18:26\nКому: support\nТема: Тест\n\n"
     "Привет", "Спасибо.", "От: Megan"),
    ("ja", "ありがとうございます。\n\n2012/04/02 18:26、Megan One <xxx@gmail.com> のメッセージ:\n\n> こんにちは\n",
     "ありがとうございます。", "2012/04/02"),
    ("ja-gmail", "ありがとうございます。\n\n2012年4月2日(月) 18:26 Megan One <xxx@gmail.com>:\n\n> こんにちは\n",
     "ありがとうございます。", "2012年4月2日"),
    ("zh", "谢谢。\n\n在 2012年4月2日 下午6:26，Megan One <xxx@gmail.com> 写道：\n\n> 你好\n", "谢谢。", "在 2012"),
    ("zh-outlook", "谢谢。\n\n发件人: Megan One\n发送时间: 2012年4月2日 18:26\n收件人: support\n主题: 测试\n\n你好",
     "谢谢。", "发件人"),
    ("fi", "Kiitos.\n\nma 2. huhtik. 2012 klo 18.26 Megan One <xxx@gmail.com> kirjoitti:\n\n> Hei\n",
     "Kiitos.", "ma 2."),
    ("cs", "Díky.\n\npo 2. 4. 2012 v 18:26 odesílatel Megan One <xxx@gmail.com> napsal:\n\n> Ahoj\n",
     "Díky.", "po 2."),
    ("gt-only", "Fine.\n\n> Hi\n> there\n", "Fine.", "> Hi"),
    ("name-wrote-then-gt", "Fine.\n\nMegan One wrote:\n> Hi\n", "Fine.", "Megan One wrote:"),
]


@pytest.mark.parametrize("name,body,new,quoted", LOCALISED, ids=[c[0] for c in LOCALISED])
def test_localised_and_client_variants(name: str, body: str, new: str, quoted: str) -> None:
    parts = split_reply(body)
    assert parts.has_quote, name
    assert parts.new_text == new
    assert parts.quoted.startswith(quoted), parts.quoted


def test_attribution_wrapping_edges() -> None:
    # the reply's own last line is not swallowed even when it looks like a date ("Mo 2 …")
    parts = split_reply("Mo 2 Drucker kaputt.\nAm Mo., 2. Apr. 2012 um 18:26 schrieb X <x@y.de>:\n> Hallo")
    assert parts.new_text == "Mo 2 Drucker kaputt."
    # an attribution wrapped over three lines
    parts = split_reply("Thanks.\nOn Mon,\nApr 2, 2012 at 6:26 PM, Megan One <x@y.test> wrote:\n> Hi")
    assert parts.new_text == "Thanks." and parts.quoted.startswith("On Mon,")
    # a header block rendered from HTML onto one line
    parts = split_reply("Thanks.\n\nFrom: Megan One Sent: Monday, April 2 To: support Subject: Test\n\nHi")
    assert parts.new_text == "Thanks." and parts.marker == "header-block"
    assert not split_reply("From: the manual, to: the letter").has_quote


def test_crlf_and_result_type() -> None:
    parts = split_reply("Thanks.\r\n\r\nOn Mon, Apr 2, 2012 at 6:26 PM, X <x@y.test> wrote:\r\n> Hi\r\n")
    assert isinstance(parts, ReplyParts)
    assert parts.new_text == "Thanks." and parts.quoted.endswith("> Hi") and parts.marker == "on-wrote"


def test_no_quote() -> None:
    parts = split_reply("The printer is on fire.\nPlease come quickly.")
    assert not parts.has_quote and parts.quoted == "" and parts.signature == ""
    assert parts.new_text == parts.reply == "The printer is on fire.\nPlease come quickly."


def test_empty_inputs() -> None:
    assert split_reply("") == ReplyParts("", "", "", "", "")
    assert split_reply("", "") == ReplyParts("", "", "", "", "")
    assert split_reply("   \n", "<html></html>").new_text == ""


def test_sentence_ending_in_wrote_is_not_a_quote() -> None:
    for body in ("On the form, the customer wrote:\nplease call me\n",
                 "I wrote the following steps on 3 machines:\n1. boot\n2. print\n"):
        parts = split_reply(body)
        assert not parts.has_quote and parts.new_text == body.strip()


def test_inline_reply_keeps_every_answer() -> None:
    body = "See inline.\n\n> question 1?\nanswer 1\n\n> question 2?\n\nanswer 2\n"
    parts = split_reply(body)
    assert parts.new_text == "See inline.\n\nanswer 1\n\nanswer 2"
    assert parts.quoted == "> question 1?\n\n> question 2?"


def test_bottom_posting() -> None:
    parts = split_reply("On 04/02/2012 06:26 PM, Megan One wrote:\n> Hi\n\nHello, fixed now.\n")
    assert parts.new_text == "Hello, fixed now." and parts.quoted.startswith("On 04/02/2012")


def test_unmarked_history_after_attribution_is_all_quoted() -> None:
    body = "Thanks.\n\nOn Mon, Apr 2, 2012 at 6:26 PM, Megan <m@x.test> wrote:\nHi, old text\nmore old text\n"
    parts = split_reply(body)
    assert parts.new_text == "Thanks." and "more old text" in parts.quoted


def test_cut_markers_and_reply_above_this_line() -> None:
    body = "Fixed, thanks.\n\n##- Please type your reply above this line -##\n\nYour ticket [HD-7] was updated"
    assert split_reply(body).new_text == "Fixed, thanks."
    body = "Fixed.\n\n=== ticketmx: [HD-7] ===\nold notification"
    assert split_reply(body).has_quote is False
    parts = split_reply(body, cut_markers=["=== ticketmx:"])
    assert parts.new_text == "Fixed." and parts.marker == "reply-above"


def test_new_text_may_be_empty() -> None:
    parts = split_reply("-----Original Message-----\nFrom: x\nSent: y\n\nold")
    assert parts.new_text == "" and parts.reply == "" and parts.quoted.startswith("-----Original")


# ------------------------------------------------------------------ signatures
@pytest.mark.parametrize("body,new,sig", [
    ("Hello\n\nSent from my iPhone", "Hello", "Sent from my iPhone"),
    ("Hallo\n\nVon meinem iPhone gesendet", "Hallo", "Von meinem iPhone gesendet"),
    ("Bonjour\n\nEnvoyé de mon iPhone", "Bonjour", "Envoyé de mon iPhone"),
    ("Hi\n\nGet Outlook for Android", "Hi", "Get Outlook for Android"),
    ("Hello\n-- \nBob Smith\nAcme Corp", "Hello", "-- \nBob Smith\nAcme Corp"),
    ("It works now.\n\nThanks,\nAnn", "It works now.", "Thanks,\nAnn"),
    ("It works now.\n\nBest regards,\nAnn Lee\nAcme", "It works now.", "Best regards,\nAnn Lee\nAcme"),
    ("Es geht wieder.\n\nMit freundlichen Grüßen\nAnn Lee", "Es geht wieder.", "Mit freundlichen Grüßen\nAnn Lee"),
    ("Всё работает.\n\nС уважением,\nАнна", "Всё работает.", "С уважением,\nАнна"),
    ("Please reset it.\n\nAnn Lee\nann@acme.test\n+1 555 123 4567\nwww.acme.test", "Please reset it.",
     "Ann Lee\nann@acme.test\n+1 555 123 4567\nwww.acme.test"),
])
def test_signatures(body: str, new: str, sig: str) -> None:
    parts = split_reply(body)
    assert (parts.new_text, parts.signature) == (new, sig)
    assert parts.reply == body


@pytest.mark.parametrize("body", [
    "Hi,\n\nThanks, that fixed it!\n\nThe printer works again.",
    "Thanks for the quick reply.\nThe printer still fails.",
    "Thanks!",
    "Just one line.",
    "Step 1\n----------\nStep 2 is long enough to not be a signature line because it goes on and on and on and on",
])
def test_no_false_signatures(body: str) -> None:
    assert extract_signature(body) == (body.strip(), "")


def test_signature_by_sender_name() -> None:
    body = "Can you check my account?\n\nStavros Papadopoulos\nvia mobile"
    assert extract_signature(body, "Stavros Papadopoulos <s@x.test>")[1] == "Stavros Papadopoulos\nvia mobile"
    body = "Can you check my account?\n\nStavros P.\nHead of IT"
    assert extract_signature(body)[1] == ""
    assert extract_signature(body, "stavros@x.test")[1] == "Stavros P.\nHead of IT"


# ------------------------------------------------------------------ HTML
APPLE_HTML = """<html><body><div>Fixed now.</div><div><br><div>On 22 Aug 2015, at 19:21, Adam &lt;a@x.test&gt; wrote:
</div><br class="Apple-interchange-newline"><blockquote type="cite"><div>Hi there!</div></blockquote></div><br>
</body></html>"""
OWA_HTML = """<html><body><div>Works, thanks.</div><div id="appendonsend"></div>
<hr style="display:inline-block;width:98%" tabindex="-1"><div id="divRplyFwdMsg" dir="ltr"><font><b>From:</b> Megan
&lt;m@x.test&gt;<br><b>Sent:</b> Monday<br><b>To:</b> support<br><b>Subject:</b> Test</font><div>&nbsp;</div></div>
<div>Old text</div></body></html>"""
YAHOO_HTML = """<div><div>All good.</div><div class="yahoo_quoted"><div>On Monday, Megan &lt;m@x.test&gt; wrote:</div>
<blockquote><div>Old</div></blockquote></div></div>"""
GMAIL_HTML = """<div dir="ltr">Done.<div><br></div><div>-- <br><div class="gmail_signature">Ann Lee<br>Acme</div></div>
</div><br><div class="gmail_quote"><div class="gmail_attr">On Mon, Megan &lt;m@x.test&gt; wrote:<br></div>
<blockquote class="gmail_quote">Old text</blockquote></div>"""
BOTTOM_HTML = """<div>Answers below.</div><blockquote type="cite">Question 1?</blockquote><div>Answer 1.</div>"""
GERMAN_OUTLOOK_HTML = """<div class="WordSection1"><p>Danke.</p><div style="border:none;border-top:solid #E1E1E1 1.0pt">
<p><b>Von:</b> Megan &lt;m@x.test&gt;<br><b>Gesendet:</b> Montag<br><b>An:</b> support<br><b>Betreff:</b> Test</p>
</div><p>Hallo</p></div>"""


@pytest.mark.parametrize("html,new,marker,gone", [
    (APPLE_HTML, "Fixed now.", "html:blockquote", "Hi there"),
    (OWA_HTML, "Works, thanks.", "html:appendonsend", "Old text"),
    (YAHOO_HTML, "All good.", "html:yahoo_quoted", "Old"),
    (GMAIL_HTML, "Done.", "html:gmail_quote", "Old text"),
    (BOTTOM_HTML, "Answers below.\n\nAnswer 1.", "html:blockquote", "Question"),
    (GERMAN_OUTLOOK_HTML, "Danke.", "html:header-block", "Hallo"),
])
def test_html_structures(html: str, new: str, marker: str, gone: str) -> None:
    parts = split_reply("", html)
    assert parts.new_text == new and parts.marker == marker
    assert gone in parts.quoted and gone not in parts.reply
    assert gone not in strip_html_quotes(html)


def test_html_signature_and_text_part_preferred() -> None:
    parts = split_html(GMAIL_HTML)
    assert parts.signature == "--\nAnn Lee\nAcme"
    text = "Done.\n\nOn Mon, Megan <m@x.test> wrote:\n> Old text"   # the text part wins when it shows a quote
    assert split_reply(text, GMAIL_HTML).marker == "on-wrote"


def test_html_hostile_input() -> None:
    for html in ("<", "<?xml version='1.0' encoding='utf-8'?><html/>", "\x00\x01", "<div>" * 3000 + "x"):
        parts = split_reply("", html)
        assert isinstance(parts, ReplyParts)
    assert strip_html_quotes("") == ""


def test_header_line() -> None:
    assert header_line("From: Ann <a@x.test>") == ("from", "Ann <a@x.test>")
    assert header_line("*Von:* Ann") == ("from", "Ann")
    assert header_line("De : Ann") == ("from", "Ann")
    assert header_line("Betreff: Test") == ("subject", "Test")
    assert header_line("主题: 测试") == ("subject", "测试")
    assert header_line("Hello: there") is None
    assert header_line("no colon here") is None


def test_speed() -> None:
    body = ("word " * 15 + "\n") * 2000 + "\nOn Mon, Apr 2, 2012 at 6:26 PM, X <x@y.test> wrote:\n" + "> q\n" * 2000
    t0 = time.perf_counter()
    for _ in range(5):
        parts = split_reply(body)
    assert parts.marker == "on-wrote"
    assert (time.perf_counter() - t0) / 5 < 0.5
