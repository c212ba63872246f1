"""Subject normalisation, subject tokens, Message-ID tokens."""
from __future__ import annotations

import pytest

from gateway.config.errors import ConfigError
from gateway.pipeline.stages.subjects import is_forward_subject, is_reply_subject, normalize_subject, subject_key
from gateway.pipeline.stages.tokens import (
    DEFAULT_STYLE,
    TokenStyle,
    find_tokens,
    format_token,
    mint_message_id,
    normalize_keys,
    parse_keys,
    parse_token_style,
    signed_token,
    strip_tokens,
    subject_mac,
    tag_subject,
    trusted_numbers,
    verify_message_id,
    verify_subject_token,
)

KEY = "k" * 32
KEYS = ["new-key-0123456789abcdef", "old-key-0123456789abcdef"]


@pytest.mark.parametrize("raw,expected", [
    ("Re: Printer", "Printer"),
    ("RE: Re: re:Printer", "Printer"),
    ("Fwd: Fw: FW: Printer", "Printer"),
    ("AW: WG: Drucker", "Drucker"),
    ("SV: VS: Skrivare", "Skrivare"),
    ("Antw: Doorst: Printer", "Printer"),
    ("RE[2]: Re(3): Re^2: Re*4: Printer", "Printer"),
    ("Réf. : TR: Imprimante", "Imprimante"),
    ("RIF: R: I stampante", "I stampante"),
    ("Odp: PD: Drukarka", "Drukarka"),
    ("Ответ: ПР: Отв: Принтер", "Принтер"),
    ("回复：转发：答复: 打印机", "打印机"),
    ("返信: 転送: プリンター", "プリンター"),
    ("ENC: RES: RV: Impressora", "Impressora"),
    ("[users] Re: [users] Printer", "Printer"),
    ("Re: [HD-1042] Re: Printer", "[HD-1042] Printer"),
    ("[listname] [HD-7] AW: Drucker", "[HD-7] Drucker"),
    ("[HD-7]", "[HD-7]"),
    ("[urgent]", "[urgent]"),
    ("Printer (fwd)", "Printer"),
    ("   Re:    Printer    on   fire  ", "Printer on fire"),
    ("Re:", ""),
    ("", ""),
    ("Return of the printer", "Return of the printer"),
    ("Fwdx: not a prefix", "Fwdx: not a prefix"),
])
def test_normalize_subject(raw: str, expected: str) -> None:
    assert normalize_subject(raw) == expected


def test_normalize_subject_with_delimiter_style() -> None:
    style = TokenStyle("##{number}##")
    assert normalize_subject("Fw: Re: [list] ##RE-1042## AW: x", style) == "##RE-1042## x"
    # with this style a bracket tag is a list tag, even if it looks like a ticket number
    assert normalize_subject("[HD-7] x", style) == "x"
    assert normalize_subject("Re: [HD-7] x", None) == "x"


def test_subject_key_and_prefix_tests() -> None:
    assert subject_key("Re: [HD-1042] AW: Printer  ON fire") == subject_key("printer on fire") == "printer on fire"
    assert is_reply_subject("AW: x") and not is_reply_subject("x")
    assert is_forward_subject("WG: x") and is_forward_subject("[list] Re: Fwd: x") and not is_forward_subject("Re: x")


def test_token_format_and_parse_default_and_delimiter_styles() -> None:
    assert format_token("HD-1042") == "[HD-1042]"
    style = TokenStyle("##{number}##")
    assert format_token("RE-1042", style) == "##RE-1042##"
    toks = find_tokens("Re: ##RE-1042## and [HD-7]", style)
    assert [t.number for t in toks] == ["RE-1042"]
    assert [t.number for t in find_tokens("Re: [HD-1042] x [HD-7]")] == ["HD-1042", "HD-7"]
    assert find_tokens("[users] [2] [HD-] [hd-7x]") == ()
    assert strip_tokens("Re: [HD-1042] Printer [HD-7]") == "Re: Printer"
    ticket = TokenStyle("[Ticket#{number}]", number_pattern=r"\d{6,10}")
    assert find_tokens("Re: [Ticket#2026112201] x", ticket)[0].number == "2026112201"
    with pytest.raises(ValueError):
        format_token("nope", DEFAULT_STYLE)


@pytest.mark.parametrize("fmt", ["{number}", "[{number}] {number}", "[{number}]{x}", "[number]"])
def test_bad_styles(fmt: str) -> None:
    with pytest.raises(ValueError):
        TokenStyle(fmt)


def test_tag_subject() -> None:
    assert tag_subject("Re: Printer", "HD-1042") == "[HD-1042] Re: Printer"
    assert tag_subject("Re: [HD-1042] Printer", "HD-1042") == "[HD-1042] Re: Printer"
    assert tag_subject("[HD-7] Printer", "HD-1042") == "[HD-1042] [HD-7] Printer"
    signed = tag_subject("Printer", "HD-1042", keys=KEY)
    tok = find_tokens(signed)[0]
    assert signed == f"[HD-1042:{tok.mac}] Printer" and len(tok.mac) == 8
    assert tag_subject("", "HD-1") == "[HD-1]"


def test_subject_mac_verifies_and_resists_tampering() -> None:
    token = signed_token("HD-1042", KEYS)
    tok = find_tokens(token)[0]
    assert tok.signed and verify_subject_token(tok, KEYS)
    assert verify_subject_token(tok, KEYS[0]) and not verify_subject_token(tok, KEYS[1])
    # another ticket number with the same MAC
    other = find_tokens(token.replace("1042", "1043"))[0]
    assert not verify_subject_token(other, KEYS)
    # a wrong MAC, a truncated MAC (no downgrade), no MAC
    assert not verify_subject_token(find_tokens("[HD-1042:aaaaaaaa]")[0], KEYS)
    assert not verify_subject_token(find_tokens(f"[HD-1042:{tok.mac[:6]}]")[0], KEYS)
    assert not verify_subject_token(find_tokens("[HD-1042]")[0], KEYS)
    # the subject MAC is not the Message-ID MAC
    assert subject_mac("HD-1042", KEYS) != subject_mac("HD-1042", KEYS[1:])


def test_trusted_numbers() -> None:
    good = signed_token("HD-1", KEY)
    subject = f"Re: {good} [HD-2] [HD-3:aaaaaaaa]"
    assert trusted_numbers(subject, KEY) == (("HD-1",), ("HD-2", "HD-3"))
    assert trusted_numbers(subject, None) == ((), ("HD-1", "HD-2", "HD-3"))


def test_message_id_round_trip_and_rotation() -> None:
    mid = mint_message_id(1042, KEYS, "mx.example.test", random=b"\x00" * 10)
    assert mid.startswith("<t1042.k") and mid.endswith(".raaaaaaaaaaaaaaaa@mx.example.test>")
    assert verify_message_id(mid, KEYS) == "1042"
    assert verify_message_id(mid.strip("<>"), KEYS) == "1042"          # ParsedMessage strips brackets
    assert verify_message_id(mid, KEYS[0]) == "1042"
    assert verify_message_id(mid, KEYS[1]) is None                      # signed with the first key only
    old = mint_message_id("HD-7", KEYS[1:], "mx.example.test")
    assert verify_message_id(old, KEYS) == "HD-7"                       # old key still verifies after rotation
    assert mint_message_id(1, KEY, "h.test") != mint_message_id(1, KEY, "h.test")


@pytest.mark.parametrize("mutate", [
    lambda m: m.replace("<t1042.", "<t1043."),
    lambda m: m.replace(".k", ".kx", 1),
    lambda m: m[:10] + ("a" if m[10] != "a" else "b") + m[11:],
    lambda m: "<CAKsfaBW4hj0Gek6TwbR3erng4P1y0CZzJ0d=pXtCNnYnbe7PLg@mail.gmail.com>",
    lambda m: "",
    lambda m: "<t1042.k.r@x>",
])
def test_forged_message_ids_fail(mutate) -> None:  # noqa: ANN001
    mid = mint_message_id(1042, KEY, "mx.example.test")
    assert verify_message_id(mutate(mid), KEY) is None


def test_message_id_input_checks() -> None:
    with pytest.raises(ValueError):
        mint_message_id("10.42", KEY, "h.test")
    with pytest.raises(ValueError):
        mint_message_id(1, KEY, "bad host")
    with pytest.raises(ValueError):
        mint_message_id(1, "short", "h.test")
    with pytest.raises(ValueError):
        normalize_keys([])


def test_config_helpers() -> None:
    assert parse_token_style({"subject_token": "##{number}##"}, "threading") == TokenStyle("##{number}##")
    assert parse_token_style(None, "threading") == DEFAULT_STYLE
    with pytest.raises(ConfigError) as exc:
        parse_token_style({"subject_token": "{number}"}, "threading")
    assert exc.value.key == "threading.subject_token"
    with pytest.raises(ConfigError) as exc:
        parse_token_style({"number_pattern": "("}, "threading")
    assert exc.value.key == "threading.number_pattern"
    with pytest.raises(ConfigError) as exc:
        parse_token_style({"mac_length": 3}, "threading")
    assert exc.value.key == "threading.mac_length"
    assert parse_keys(KEYS, "threading.keys") == tuple(k.encode() for k in KEYS)
    with pytest.raises(ConfigError) as exc:
        parse_keys(["short"], "threading.keys")
    assert exc.value.key == "threading.keys"
    with pytest.raises(ConfigError):
        parse_keys(42, "threading.keys")
