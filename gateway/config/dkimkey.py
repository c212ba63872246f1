"""A DKIM private key file's contents checked and put in the form dkimpy signs with.

A leaf: gateway/config/relay.py checks `[[relay.dkim]] key_file` with it, relay/dkim.py's signer loads
keys with it, and neither has to import the other for that.
"""
from __future__ import annotations

import base64

import dkim


def load_private_key(data: bytes, algorithm: str) -> bytes:
    """Validate a key file's contents and return it in the form dkimpy signs with."""
    if algorithm == "rsa":
        if b"BEGIN RSA PRIVATE KEY" in data:
            try:
                parsed = dkim.crypto.parse_pem_private_key(data)
            except Exception as exc:  # dkimpy raises its own UnparsableKeyError
                raise ValueError(f"not a usable RSA private key ({type(exc).__name__})") from None
        elif b"BEGIN PRIVATE KEY" in data:
            data = _pkcs8_to_pkcs1(data)
            parsed = dkim.crypto.parse_pem_private_key(data)
        else:
            raise ValueError("not a PEM RSA private key (a public key, certificate or other file?)")
        if parsed["modulus"].bit_length() < 1024:  # verifiers ignore shorter keys (RFC 8301)
            raise ValueError(f"a {parsed['modulus'].bit_length()}-bit RSA key is too short (use 2048)")
        return data
    if algorithm == "ed25519":
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except (ValueError, TypeError):
            raise ValueError("not a base64 ed25519 private key") from None
        if len(seed) != 32:
            raise ValueError("an ed25519 private key is 32 bytes (base64)")
        return data.strip()
    raise ValueError(f"unknown algorithm {algorithm!r}")


def _pkcs8_to_pkcs1(data: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("not a usable PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
