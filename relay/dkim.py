"""Outbound DKIM signing (dkimpy; rsa-sha256 and ed25519-sha256) and key generation.

Keys are configured per From domain (``[[relay.dkim]] domain, selector, key_file``). A message
whose From domain (or a parent domain of it) has a key is signed with ``d=`` that domain, so the
signature is DMARC-aligned; other messages go out unsigned. RSA keys are PEM (PKCS#1 or PKCS#8);
ed25519 keys are the base64 32-byte seed that dkimpy's ``dknewkey`` writes (RFC 8463).

Signing costs about a millisecond of CPU for RSA-2048: the worker runs it in a thread.
"""
from __future__ import annotations

import base64
import os
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any, Iterable

import dkim

from gateway.config.relay import DkimKeyConfig
from gateway.config.dkimkey import load_private_key

# -- fast RSA -------------------------------------------------------------------------------------
# dkimpy computes the RSA signature with its own pure-Python modular arithmetic: about 10-25 ms per
# 2048-bit signature here, which would cap a relay at a few dozen signed mails per second per core.
# The RSASSA-PKCS1-v1_5 signature is deterministic, so computing the very same bytes with
# ``cryptography`` (OpenSSL) changes nothing but the speed (~1 ms). dkimpy calls the module-level name
# ``dkim.RSASSA_PKCS1_v1_5_sign``; we wrap it once, falling back to the original for anything unusual.
_PURE_RSA_SIGN = dkim.RSASSA_PKCS1_v1_5_sign
_KEYS: dict[int, Any] = {}


def _fast_rsa_sign(hash_obj: Any, private_key: dict[str, int]) -> bytes:
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
        algo = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}[hash_obj.name]
        key = _KEYS.get(private_key["modulus"])
        if key is None:
            pub = rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"])
            key = rsa.RSAPrivateNumbers(private_key["prime1"], private_key["prime2"], private_key["privateExponent"],
                                        private_key["exponent1"], private_key["exponent2"],
                                        private_key["coefficient"], pub).private_key()
            if len(_KEYS) > 64:
                _KEYS.clear()
            _KEYS[private_key["modulus"]] = key
        return key.sign(hash_obj.digest(), padding.PKCS1v15(), utils.Prehashed(algo))
    except Exception:  # no cryptography, odd hash or key: dkimpy's own code decides
        return _PURE_RSA_SIGN(hash_obj, private_key)


if getattr(dkim.RSASSA_PKCS1_v1_5_sign, "__name__", "") != "_fast_rsa_sign":
    dkim.RSASSA_PKCS1_v1_5_sign = _fast_rsa_sign


# Signed header fields. From is listed twice (over-signing: a second From cannot be added later).
SIGNED_HEADERS = (b"from", b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to",
                  b"references", b"reply-to", b"mime-version", b"content-type", b"content-transfer-encoding",
                  b"auto-submitted")


def from_domain(message: bytes) -> str | None:
    headers = BytesHeaderParser(policy=compat32).parsebytes(message, headersonly=True)
    values = headers.get_all("From") or []
    addrs = [a for _, a in getaddresses([str(v) for v in values]) if "@" in a]
    if len(addrs) != 1:
        return None
    return addrs[0].rpartition("@")[2].lower().rstrip(".")


class DkimSigner:
    def __init__(self, keys: Iterable[DkimKeyConfig]) -> None:
        self._keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        for k in keys:
            data = k.private_key
            if not data:
                with open(k.key_file, "rb") as fh:
                    data = fh.read()
            algo = b"rsa-sha256" if k.algorithm == "rsa" else b"ed25519-sha256"
            self._keys[k.domain] = (k.selector.encode(), load_private_key(data, k.algorithm), algo)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def key_for(self, domain: str) -> tuple[str, tuple[bytes, bytes, bytes]] | None:
        labels = domain.split(".")
        for i in range(len(labels) - 1):
            d = ".".join(labels[i:])
            if d in self._keys:
                return d, self._keys[d]
        return None

    def sign(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature prepended, or unchanged when no key fits its From domain."""
        domain = from_domain(message)
        found = self.key_for(domain) if domain else None
        if found is None:
            return message
        d, (selector, key, algo) = found
        sig = dkim.sign(message, selector, d.encode(), key, signature_algorithm=algo,
                        include_headers=list(SIGNED_HEADERS), canonicalize=(b"relaxed", b"relaxed"),
                        linesep=b"\r\n")
        return sig + message


def keygen(domain: str, selector: str, algo: str = "rsa", out_path: str | os.PathLike[str] = "",
           bits: int = 2048, group: int | None = None) -> str:
    """Write a new private key to ``out_path`` (mode 0600, refusing to overwrite) and return the
    DNS TXT record to publish, as a zone-file line: ``<selector>._domainkey.<domain>. IN TXT "..."``.

    With ``group`` (a gid) the file is made ``0640`` with that group when the caller may give it
    that group, else it stays 0600."""
    from cryptography.hazmat.primitives import serialization
    if algo == "rsa":
        from cryptography.hazmat.primitives.asymmetric import rsa
        if bits < 1024:
            raise ValueError("RSA keys shorter than 1024 bits are not accepted by verifiers (use 2048)")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    elif algo == "ed25519":
        import nacl.signing
        sk = nacl.signing.SigningKey.generate()
        private = base64.b64encode(bytes(sk)) + b"\n"
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(sk.verify_key)).decode()}"
    else:
        raise ValueError(f"unknown algorithm {algo!r} (rsa or ed25519)")
    path = os.fspath(out_path)
    if not path:
        raise ValueError("an output path for the private key is required")
    from gateway.config.secretfile import create_private
    # 0600 (0640 with the service's group) whatever the umask; never overwrites
    create_private(path, private, 0o640 if group is not None else 0o600, group=group)
    # TXT strings are at most 255 octets each: split the value into quoted chunks.
    chunks = [record[i:i + 250] for i in range(0, len(record), 250)]
    name = f"{selector}._domainkey.{domain.rstrip('.')}."
    return f"{name} IN TXT ( " + " ".join(f'"{c}"' for c in chunks) + " )"


def txt_value(record_line: str) -> bytes:
    """The TXT value (chunks joined) of a line returned by :func:`keygen` — what a resolver returns."""
    import re
    return "".join(re.findall(r'"([^"]*)"', record_line)).encode()


__all__ = ["DkimSigner", "keygen", "load_private_key", "from_domain", "txt_value"]
