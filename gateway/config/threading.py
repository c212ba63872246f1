"""The thread-token settings of `[threading]`: the subject token's format and number pattern, and the HMAC keys (gateway/pipeline/stages/tokens.py mints and reads the tokens)."""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from gateway.config.errors import ConfigError


Keys = str | bytes | Sequence[str | bytes]


DEFAULT_NUMBER_PATTERN = r"[A-Z][A-Z0-9]{0,15}-\d{1,12}"


MIN_KEY_BYTES = 16


_MAC_ALPHABET = "[a-z2-7]"


@dataclass(frozen=True, slots=True)
class TokenStyle:
    """How subject tokens look. ``format`` has exactly one ``{number}``, with delimiters
    around it (``"[{number}]"``, ``"##{number}##"``, ``"[Ticket#{number}]"``).
    ``number_pattern`` is a regex for ticket numbers (no capturing groups needed).
    ``mac_length``: base32 characters of the MAC in signed tokens (0: tokens we render
    carry no MAC; MAC'd tokens received are still parsed)."""

    format: str = "[{number}]"
    number_pattern: str = DEFAULT_NUMBER_PATTERN
    mac_length: int = 8

    def __post_init__(self) -> None:
        if self.format.count("{number}") != 1:
            raise ValueError("format must contain {number} exactly once")
        prefix, suffix = self.format.split("{number}")
        if not prefix.strip() and not suffix.strip():
            raise ValueError("format needs delimiters around {number}, e.g. \"[{number}]\"")
        if "{" in prefix + suffix or "}" in prefix + suffix:
            raise ValueError("format may contain no placeholder other than {number}")
        try:
            re.compile(self.number_pattern)
        except re.error as exc:
            raise ValueError(f"number_pattern is not a valid regex: {exc}") from None
        if not 0 <= self.mac_length <= 32 or (0 < self.mac_length < 6):
            raise ValueError("mac_length must be 0 (no MAC) or between 6 and 32")

    @property
    def regex(self) -> re.Pattern[str]:
        return _token_regex(self.format, self.number_pattern)


@functools.lru_cache(maxsize=32)
def _token_regex(fmt: str, number_pattern: str) -> re.Pattern[str]:
    prefix, suffix = fmt.split("{number}")
    left = r"(?<![A-Za-z0-9])" if prefix[:1].isalnum() else ""
    right = r"(?![A-Za-z0-9])" if suffix[-1:].isalnum() else ""
    return re.compile(left + re.escape(prefix) + r"(?P<number>(?:" + number_pattern + r"))"
                      + r"(?::(?P<mac>" + _MAC_ALPHABET + r"{4,32}))?" + re.escape(suffix) + right)


# --------------------------------------------------------------------------- #
# Keys and MACs
# --------------------------------------------------------------------------- #
def normalize_keys(keys: Keys) -> tuple[bytes, ...]:
    """The key list as bytes (a single key may be passed bare). Raises ValueError when
    there is none or one is shorter than MIN_KEY_BYTES."""
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    out = tuple(k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in keys)
    if not out:
        raise ValueError("no token key configured")
    for k in out:
        if len(k) < MIN_KEY_BYTES:
            raise ValueError(f"token keys must be at least {MIN_KEY_BYTES} bytes")
    return out


# --------------------------------------------------------------------------- #
# Config helpers (the lead's config.py may call these)
# --------------------------------------------------------------------------- #
def parse_token_style(table: Mapping[str, Any] | None, prefix: str) -> TokenStyle:
    """``[threading]``-style table: ``subject_token`` (format), ``number_pattern``,
    ``mac_length``. Unknown keys are ignored here (the caller owns the table)."""
    table = table or {}
    kwargs: dict[str, Any] = {}
    for name, field, typ in (("subject_token", "format", str), ("number_pattern", "number_pattern", str),
                             ("mac_length", "mac_length", int)):
        if name in table:
            v = table[name]
            if not isinstance(v, typ) or isinstance(v, bool):
                raise ConfigError(f"{prefix}.{name}", f"expected {'a string' if typ is str else 'an integer'}")
            kwargs[field] = v
    try:
        return TokenStyle(**kwargs)
    except ValueError as exc:
        msg = str(exc)
        name = ("number_pattern" if "number_pattern" in msg else "mac_length" if "mac_length" in msg
                else "subject_token")
        raise ConfigError(f"{prefix}.{name}", msg) from None


def parse_keys(value: Any, key: str) -> tuple[bytes, ...]:
    """A key or list of keys from config (first signs, all verify)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, "expected a string or a list of strings")
    try:
        return normalize_keys(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
