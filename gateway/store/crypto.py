"""Optional encryption at rest for stored mail (raw messages, bodies, attachment blobs).

Fernet (AES-128-CBC + HMAC-SHA256, from the well-kept ``cryptography`` package). The key file
holds one key per line: the first encrypts, every key decrypts — rotation is: put a new key on
the first line, keep the old ones below, run ``ticketmx store rotate-key``, then drop the old
lines. Values carry a prefix, so rows written before encryption was enabled stay readable.

Equality-only lookup keys (the ticket's normalised subject, ``tickets.subject_key``) cannot be
Fernet-encrypted (random IV): they are stored as a keyed hash instead (:meth:`Cipher.match_key`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from gateway.config.secretfile import read_fernet_keys

BLOB_PREFIX = b"ENC1:"
TEXT_PREFIX = "enc1:"
MATCH_PREFIX = "hk1:"
_MATCH_LABEL = b"ticketmx subject match key v1"


class Cipher:
    """Encrypts when configured; always able to read plaintext written before."""

    def __init__(self, keys: list[bytes] | None = None) -> None:
        self._f = MultiFernet([Fernet(k) for k in keys]) if keys else None
        # One HMAC key per store key, derived (so the key file stays the only secret); the first hashes,
        # all are tried on lookup so a rotation does not break matching while the old key is listed.
        self._hk = [hmac.new(base64.urlsafe_b64decode(k), _MATCH_LABEL, hashlib.sha256).digest()
                    for k in keys or ()]

    @classmethod
    def from_file(cls, path: str | None) -> "Cipher":
        if not path:
            return cls()
        return cls(read_fernet_keys(path))

    @property
    def enabled(self) -> bool:
        return self._f is not None

    def enc_bytes(self, data: bytes) -> bytes:
        return BLOB_PREFIX + self._f.encrypt(data) if self._f and data else data

    def dec_bytes(self, data: bytes) -> bytes:
        if not data.startswith(BLOB_PREFIX):
            return data
        if self._f is None:
            raise InvalidToken("stored data is encrypted but no [store] encryption_key_file is configured")
        return self._f.decrypt(data[len(BLOB_PREFIX):])

    def enc_text(self, text: str) -> str:
        return TEXT_PREFIX + self._f.encrypt(text.encode()).decode() if self._f and text else text

    def dec_text(self, text: str) -> str:
        if not text.startswith(TEXT_PREFIX):
            return text
        if self._f is None:
            raise InvalidToken("stored text is encrypted but no [store] encryption_key_file is configured")
        return self._f.decrypt(text[len(TEXT_PREFIX):].encode()).decode()

    def match_key(self, key: str) -> str:
        """What to store for an equality-only lookup key: ``hk1:`` + hex HMAC-SHA256 of ``key`` under the
        first store key when encryption is on (the key itself does not reach the disk); unchanged when off
        or empty ("" means "no key" to the callers)."""
        if not self._hk or not key:
            return key
        return MATCH_PREFIX + hmac.new(self._hk[0], key.encode(), hashlib.sha256).hexdigest()

    def match_candidates(self, key: str) -> tuple[str, ...]:
        """Stored values that mean ``key``: its hash under every store key, and the plain value (rows
        written before encryption was enabled and not yet converted by ``ticketmx store rotate-key``)."""
        if not self._hk or not key:
            return (key,)
        return (*(MATCH_PREFIX + hmac.new(k, key.encode(), hashlib.sha256).hexdigest() for k in self._hk), key)

    def search_token(self, word: str) -> str:
        """The full-text index's stand-in for ``word`` (gateway/store/search.py): ``h`` + 16 hex digits of
        its HMAC under the first store key; the word itself does not reach the disk."""
        return "h" + hmac.new(self._hk[0], word.encode(), hashlib.sha256).hexdigest()[:16]

    def search_tokens(self, word: str) -> tuple[str, ...]:
        """``word``'s index tokens under every store key (rows indexed before a rotation still match)."""
        return tuple("h" + hmac.new(k, word.encode(), hashlib.sha256).hexdigest()[:16] for k in self._hk)

    def rotate_match_key(self, stored: str) -> str:
        """Hash a plain stored lookup key (rotate-key converts rows from before encryption). A hash stays as
        it is: its input is gone, so it keeps matching only while its store key is in the key file."""
        return stored if _is_match_hash(stored) else self.match_key(stored)

    def rotate_bytes(self, data: bytes) -> bytes:
        """Re-encrypt with the first key (plaintext gets encrypted)."""
        return self.enc_bytes(self.dec_bytes(data)) if self._f else data

    def rotate_text(self, text: str) -> str:
        return self.enc_text(self.dec_text(text)) if self._f else text


def dec_stored_text(conn: object, text: str) -> str:
    """Decrypt a text column read on a store connection inside a transaction (the connection carries the
    store's cipher: gateway.store.sqlite / pg_sync); plaintext rows read as they are."""
    return (getattr(conn, "cipher", None) or Cipher()).dec_text(text)


def _is_match_hash(value: str) -> bool:
    digest = value[len(MATCH_PREFIX):]
    return value.startswith(MATCH_PREFIX) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def generate_key() -> str:
    return Fernet.generate_key().decode()
