"""Keys, signing and message helpers for the auth tests."""
from __future__ import annotations

import asyncio
import base64
import functools

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.auth import Authenticator, AuthPolicy, Resolver


@functools.lru_cache(maxsize=None)
def rsa_key(bits: int = 2048, n: int = 0):
    """(private PEM bytes, DNS TXT value) — cached per (bits, n): key generation is slow."""
    if bits < 1024:  # cryptography refuses to generate these; openssl still does
        import subprocess

        out = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"],
                             capture_output=True, check=True).stdout
        key = serialization.load_pem_private_key(out, None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(pub).decode()


@functools.lru_cache(maxsize=None)
def ed_key(n: int = 0):
    """(dkimpy private key: base64 seed, PKCS8 PEM for other signers, DNS TXT value)."""
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed), pem, "v=DKIM1; k=ed25519; p=" + base64.b64encode(pub).decode()


def message(frm: str = "Alice <alice@example.org>", body: bytes = b"Hello,\r\n\r\nthis is a test.\r\n",
            extra: bytes = b"") -> bytes:
    return (f"From: {frm}\r\nTo: help@support.test\r\nSubject: test message\r\n"
            f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <abc123@example.org>\r\n").encode() \
        + extra + b"\r\n" + body


def sign(msg: bytes, domain: str, selector: str = "sel", key: bytes | None = None,
         algo: bytes = b"rsa-sha256", **kw) -> bytes:
    if key is None:
        key = rsa_key()[0] if algo == b"rsa-sha256" else ed_key()[0]
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key, signature_algorithm=algo,
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"], **kw)
    return sig + msg


def run(coro):
    return asyncio.run(coro)


async def check(dns_server, raw: bytes, *, peer_ip="192.0.2.10", helo="mail.example.org",
                mail_from="alice@example.org", policy: AuthPolicy | None = None, hostname="mx.support.test",
                **kw):
    resolver = Resolver(dns_server.nameservers, timeout=kw.pop("timeout", 1.0))
    auth = Authenticator(resolver, hostname, **kw)
    try:
        return await auth.check(peer_ip=peer_ip, helo=helo, mail_from=mail_from, raw=raw,
                                policy=policy or AuthPolicy())
    finally:
        auth.close()
