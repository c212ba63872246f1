"""Optional encryption at rest for stored mail (raw messages, bodies, attachment blobs).

Fernet (AES-128-CBC + HMAC-SHA256, from the well-kept ``cryptography`` package). The key file
holds one key per line: the first encrypts, every key decrypts — rotation is: put a new key on
the first line, keep the old ones below, run ``ticketmx store rotate-key``, then drop the old
lines. Values carry a prefix, so rows written before encryption was enabled stay readable.
"""
from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

BLOB_PREFIX = b"ENC1:"
TEXT_PREFIX = "enc1:"


class Cipher:
    """Encrypts when configured; always able to read plaintext written before."""

    def __init__(self, keys: list[bytes] | None = None) -> None:
        self._f = MultiFernet([Fernet(k) for k in keys]) if keys else None

    @classmethod
    def from_file(cls, path: str | None) -> "Cipher":
        if not path:
            return cls()
        keys = [line.strip().encode() for line in Path(path).read_text().splitlines()
                if line.strip() and not line.startswith("#")]
        if not keys:
            raise ValueError(f"{path}: no key (generate one with `ticketmx store genkey`)")
        return cls(keys)

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

    def rotate_bytes(self, data: bytes) -> bytes:
        """Re-encrypt with the first key (plaintext gets encrypted)."""
        return self.enc_bytes(self.dec_bytes(data)) if self._f else data

    def rotate_text(self, text: str) -> str:
        return self.enc_text(self.dec_text(text)) if self._f else text


def generate_key() -> str:
    return Fernet.generate_key().decode()
