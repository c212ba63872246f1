"""Reopen with sense: which replies to a resolved ticket only thank or confirm (issue 19 part 4).

Real-looking replies as customers write them (new text: quotes already stripped by the quotes stage),
in English and German, both ways. Anything beyond thanks, a confirmation, a greeting, a sign-off or
the sender's own name must reopen."""
from __future__ import annotations

import time

import pytest

from gateway.pipeline.stages.quotes import split_reply
from gateway.pipeline.stages.thanks import is_thanks_only

THANKS_EN = [
    "Thanks, works now!", "Thank you very much, it works now.\n\nBest regards,\nAlice", "Perfect, thanks!",
    "thx", "Great, that fixed it. Cheers", "Hi team,\nall good now, you can close the ticket.\nThanks\nAlice",
    "Many thanks for the quick help!", "Works again, thank you so much :)", "OK thanks",
    "Problem solved, thank you!", "Got it, thanks a lot!", "That did the trick. Much appreciated!",
    "Thanks again for your support. Have a nice day!", "Awesome, it's working again 👍",
    "Thank you! Everything works now.", "It worked, thanks!", "Hello,\n\nthank you, it is working now.\n\nKind regards\nAlice Example",
]
THANKS_DE = [
    "Danke, funktioniert jetzt", "Vielen Dank, hat geklappt!", "Super, danke!", "Passt, danke.",
    "Hallo,\nes funktioniert wieder. Vielen Dank!\n\nViele Grüße\nAlice", "Danke schön für die schnelle Hilfe!",
    "Problem gelöst, danke", "Alles klar, danke!", "Läuft wieder, tausend Dank",
    "Herzlichen Dank, das Ticket kann geschlossen werden.", "Perfekt, vielen lieben Dank!", "Top, danke dir",
    "Funktioniert alles, danke nochmal!", "Danke, erledigt.\n\nMit freundlichen Grüßen\nAlice Example",
    "Prima, klappt jetzt. LG Alice", "Besten Dank für Ihre Unterstützung!",
]
MORE_EN = [
    "Thanks, but it broke again", "Thanks. Can you also reset my password?",
    "Thank you, but the printer is still on fire.", "It still doesn't work, thanks",
    "Thanks! One more thing: the scanner is also broken.", "not fixed, thanks", "Thanks for nothing.",
    "Thanks, it works now on my laptop but not on the desktop.", "Hi, the problem is back. Thanks",
    "Best regards, Alice", "Works now? thanks", "thank you, although it crashed again",
    "Thanks, works now!" + " And by the way the coffee machine is leaking." * 5,
    "Thanks - same error as before though", "Great, thanks. Could you send me the invoice as well",
    "It worked for a day, thanks, now it fails again",
]
MORE_DE = [
    "Danke, aber es geht wieder nicht", "Danke. Können Sie auch mein Passwort zurücksetzen?",
    "Funktioniert leider immer noch nicht, danke", "Danke, aber der Drucker brennt noch.",
    "Vielen Dank! Noch eine Frage: wie drucke ich beidseitig?", "Hallo, das Problem ist wieder da. Danke",
    "Danke, funktioniert jetzt nur am Laptop, nicht am PC", "Es funktioniert nicht, danke", "Danke für nichts",
    "Leider nein, danke", "Viele Grüße\nAlice", "Danke, gleicher Fehler wie vorher",
    "Super, danke. Bitte schicken Sie mir auch die Rechnung", "Danke, jetzt kommt aber eine andere Fehlermeldung",
    "Hat einen Tag funktioniert, danke, jetzt wieder kaputt", "Danke – der Fehler tritt weiterhin auf",
]


@pytest.mark.parametrize("text", THANKS_EN + THANKS_DE)
def test_thanks_only_replies_do_not_reopen(text):
    assert is_thanks_only(text, sender_name="Alice Example")


@pytest.mark.parametrize("text", MORE_EN + MORE_DE)
def test_replies_that_say_more_reopen(text):
    assert not is_thanks_only(text, sender_name="Alice Example")


def test_both_languages_have_at_least_fifteen_cases_each_way():
    assert min(len(THANKS_EN), len(THANKS_DE), len(MORE_EN), len(MORE_DE)) >= 15


def test_quoted_history_does_not_count():
    """The check runs on the new text: a thanks over a quoted agent answer is still a thanks."""
    body = ("Thanks, works now!\n\nOn Sun, Nov 22, 2026 at 10:05 AM Support <support@example.test> wrote:\n"
            "> Please restart the printer and tell us whether the error is still there.\n")
    assert is_thanks_only(split_reply(body, None, sender="alice@customer.test").new_text)


def test_configured_lists_replace_the_defaults_and_an_empty_table_turns_it_off():
    assert is_thanks_only("cheers mate", phrases={"en": ["cheers mate"]})
    assert not is_thanks_only("thanks", phrases={"en": ["cheers mate"]})
    assert not is_thanks_only("thanks", phrases={})
    assert not is_thanks_only("thanks " * 50, max_chars=200)       # long mails always reopen


def test_cost_is_bounded_by_the_length_limit():
    """Only texts up to max_chars are scanned; a huge reply costs the length check only."""
    big = "thanks " * 200_000
    t0 = time.process_time()
    for _ in range(100):
        is_thanks_only(big)
    assert time.process_time() - t0 < 0.5
