"""DKIM (RFC 6376, 8301, 8463) and ARC (RFC 8617) verification over dkimpy.

Split in two so the event loop never waits on crypto or DNS:

1. :func:`plan` (on the loop, microseconds): find every DKIM-Signature and ARC header, parse
   the tags, reject malformed signatures (empty or invalid ``d=``/``s=``, bad tag list, bad
   base64, unknown or SHA-1 algorithm, From not signed…) as ``permerror`` for that signature
   only, and list the key names to fetch.
2. :func:`fetch_keys` (async): every key through our Resolver, concurrently. A temporary DNS
   failure is kept as such (``temperror``), never "no key" — dkimpy would treat SERVFAIL
   like NXDOMAIN.
3. :func:`verify_sync` (a pure function of bytes and the fetched keys, run inline for small
   messages or in the bounded executor — thread or process pool, it pickles): canonicalise,
   hash and check every planned signature and the ARC chain. dkimpy gets a ``dnsfunc`` that
   serves only the prefetched keys, so it does no DNS (and its ignored ``timeout`` does not
   matter). A key dkimpy asks for that was not prefetched is reported back and fetched, and
   the verification run again.

Results per signature: ``pass``; ``fail`` (body hash or signature mismatch, revoked key);
``permerror`` (malformed signature, missing or unusable key record, key/algorithm mismatch);
``temperror`` (DNS temporary failure fetching the key); ``policy`` (cryptographically checked
but not acceptable here: RSA key under 1024 bits, rsa-sha1 (RFC 8301), or ``l=`` shorter than
the body).

``l=`` policy: a signature whose ``l=`` covers the whole canonicalised body is verified as
usual. One whose ``l=`` is shorter than the body (content was appended after signing) is
``policy`` — it proves nothing about what the reader sees, so it never counts as a DKIM pass
for DMARC. ``l=`` longer than the body fails (body hash mismatch), as RFC 6376 requires.
"""
from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field
from typing import IO

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from gateway.runtime.fileio import read_chunks
from gateway.auth import bodyhash, dkimfast, fastcanon
from gateway.auth.dns import DnsTempError, Resolver
from gateway.auth.headers import body_start, header_fields

__all__ = ["SigPlan", "Plan", "plan", "fetch_keys", "verify_sync", "MAX_SIGNATURES", "MAX_ARC_SETS"]

MAX_SIGNATURES = 10  # more DKIM-Signature fields than this are not evaluated (permerror)
MAX_ARC_SETS = 50  # RFC 8617 5.1.1.1: i= is at most 50
MIN_KEY_BITS = 1024

_quiet = logging.getLogger("gateway.auth.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False



def _install_fast_rsa() -> None:
    """dkimpy verifies RSA in pure Python (~0.5 ms for 2048 bits). Route its RSASSA-PKCS1-v1_5
    verification through ``cryptography`` (OpenSSL) instead; same inputs, same True/False, and
    the original is used for anything unexpected."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, utils
        from cryptography.hazmat.primitives.asymmetric import rsa as _rsa
    except ImportError:  # pragma: no cover
        return
    orig = getattr(dkim, "RSASSA_PKCS1_v1_5_verify", None)
    if orig is None or getattr(orig, "_ticketmx_fast", False):
        return
    algs = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
    cache: dict = {}

    def fast(hash, signature, public_key):  # noqa: A002 - dkimpy's signature
        alg = algs.get(getattr(hash, "name", ""))
        try:
            n, e = public_key["modulus"], public_key["publicExponent"]
        except (TypeError, KeyError):
            return orig(hash, signature, public_key)
        if alg is None:
            return orig(hash, signature, public_key)
        key = cache.get((n, e))
        if key is None:
            try:
                key = _rsa.RSAPublicNumbers(e, n).public_key()
            except Exception:  # noqa: BLE001 - odd keys: let dkimpy decide
                return orig(hash, signature, public_key)
            if len(cache) > 1024:
                cache.clear()
            cache[(n, e)] = key
        try:
            key.verify(signature, hash.digest(), padding.PKCS1v15(), utils.Prehashed(alg()))
            return True
        except InvalidSignature:
            return False

    fast._ticketmx_fast = True  # type: ignore[attr-defined]
    dkim.RSASSA_PKCS1_v1_5_verify = fast


def _remember_dicts(orig, max_entries: int, max_len: int):  # noqa: ANN001, ANN202 - wraps dkimpy functions
    """``orig(bytes) -> dict`` remembered per input (bounded; inputs over ``max_len`` bytes and
    other argument forms are passed through). Failures are not cached, so they raise exactly as
    before; each caller gets its own copy of the dict, so nothing dkimpy does to one can leak into
    the next message."""
    cache: dict[bytes, dict] = {}

    def cached(data, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - dkimpy's signatures
        if args or kwargs or not isinstance(data, (bytes, bytearray)) or len(data) > max_len:
            return orig(data, *args, **kwargs)
        key = bytes(data)
        hit = cache.get(key)
        if hit is None:
            hit = orig(key)
            if len(cache) >= max_entries:
                cache.clear()
            cache[key] = hit
        return dict(hit)

    cached._ticketmx_cached = True  # type: ignore[attr-defined]
    return cached


def _install_key_cache() -> None:
    """dkimpy re-parses the ASN.1 of a signer's RSA public key on every message (~0.1 ms, four
    parser passes), and a signer's key record is parsed as a tag list three times per message
    (our key check, dkimpy's key evaluation, the key cache). Both inputs are the same bytes for
    every message of a signer: remember the parses (:func:`_remember_dicts`)."""
    global parse_tag_value
    if not getattr(dkim.parse_tag_value, "_ticketmx_cached", False):
        dkim.parse_tag_value = dkimfast.parse_tag_value  # same dicts and exceptions, no regex per tag
    for name, entries, max_len in (("parse_public_key", 512, 1 << 16), ("parse_tag_value", 256, 4096)):
        fn = getattr(dkim, name, None)
        if fn is not None and not getattr(fn, "_ticketmx_cached", False):
            setattr(dkim, name, _remember_dicts(fn, entries, max_len))
    parse_tag_value = getattr(dkim, "parse_tag_value", parse_tag_value)


_install_fast_rsa()
_install_key_cache()
fastcanon.install()

_LABEL = re.compile(rb"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_B64 = re.compile(rb"^[A-Za-z0-9+/\s]*=*\s*$")
_WSP = re.compile(rb"\s+")
_DIGITS = re.compile(rb"\d{1,76}")
_H_SPLIT = re.compile(rb"\s*:\s*")


def _valid_dns_name(b: bytes) -> bool:
    if not b or len(b) > 253:
        return False
    return all(_LABEL.match(x) for x in b.rstrip(b".").split(b"."))


def _s(b: bytes | None) -> str | None:
    if b is None:
        return None
    return b.decode("ascii", "replace")


@dataclass
class SigPlan:
    index: int  # position among DKIM-Signature fields (0 = topmost), as dkimpy counts
    d: str | None = None
    s: str | None = None
    a: str | None = None
    i: str | None = None
    b: str | None = None  # first 12 chars of b= (RFC 6008 header.b)
    l: int | None = None
    key_name: bytes | None = None
    result: str | None = None  # set when decided without crypto
    reason: str = ""
    key_bits: int | None = None
    tags: dict | None = None  # the tag list as planned (validated when result is None); not reported

    def as_dict(self) -> dict:
        return {"d": self.d, "s": self.s, "a": self.a, "i": self.i, "b": self.b, "l": self.l,
                "result": self.result, "reason": self.reason, "key_bits": self.key_bits}


@dataclass
class Plan:
    sigs: list[SigPlan] = field(default_factory=list)
    arc_present: bool = False
    arc_keys: list[bytes] = field(default_factory=list)
    arc_error: str | None = None
    body_keys: list = field(default_factory=list)  # (canon, a=, l=) of each DKIM-Signature's body hash

    def key_names(self) -> list[bytes]:
        names = [s.key_name for s in self.sigs if s.result is None and s.key_name]
        return list(dict.fromkeys(names + self.arc_keys))


def plan(raw: bytes, *, check_arc: bool = True) -> Plan:
    p = Plan()
    fields_ = header_fields(raw)
    idx = 0
    for f in fields_:
        lname = f.name.lower()
        if lname == b"dkim-signature":
            sp = SigPlan(index=idx)
            idx += 1
            p.sigs.append(sp)
            if len(p.sigs) > MAX_SIGNATURES:
                sp.result, sp.reason = "permerror", f"more than {MAX_SIGNATURES} signatures; not evaluated"
                continue
            key = _plan_sig(sp, f.value)
            if key is not None and key not in p.body_keys:
                p.body_keys.append(key)
        elif check_arc and lname in (b"arc-seal", b"arc-message-signature"):
            p.arc_present = True
            try:
                tags = parse_tag_value(f.value)
            except InvalidTagValueList:
                continue
            d, s = tags.get(b"d", b"").strip(), tags.get(b"s", b"").strip()
            if _valid_dns_name(d) and _valid_dns_name(s):
                name = s + b"._domainkey." + d + b"."
                if name not in p.arc_keys and len(p.arc_keys) < 2 * MAX_ARC_SETS:
                    p.arc_keys.append(name)
        elif check_arc and lname == b"arc-authentication-results":
            p.arc_present = True
    return p


def _plan_sig(sp: SigPlan, value: bytes) -> tuple[bytes, bytes, int | None] | None:
    """Fill ``sp`` from the signature's tags; returns what its body hash depends on (or None)."""
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList as e:
        sp.result, sp.reason = "permerror", f"malformed tag list: {e}"
        return None
    except Exception as e:  # noqa: BLE001 - anything a hostile header triggers
        sp.result, sp.reason = "permerror", f"malformed signature: {e!r}"
        return None
    _fill_sig(sp, tags)
    if sp.result is None:
        sp.tags = tags
    return _body_key(tags, b"simple/simple") if b"bh" in tags else None


def _fill_sig(sp: SigPlan, tags: dict) -> None:
    d, s = tags.get(b"d"), tags.get(b"s")
    sp.d = _s(d.strip().lower()) if d is not None else None
    sp.s = _s(s.strip()) if s is not None else None
    sp.a = _s(tags.get(b"a", b"").strip()) or None
    sp.i = _s(tags.get(b"i")) if tags.get(b"i") is not None else None
    b = tags.get(b"b")
    if b is not None:
        sp.b = _s(_WSP.sub(b"", b)[:12])
    for k in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
        if k not in tags:
            sp.result, sp.reason = "permerror", f"missing {k.decode()}= tag"
            return
    if not d or not d.strip():
        sp.result, sp.reason = "permerror", "empty d= tag"
        return
    if not s or not s.strip():
        sp.result, sp.reason = "permerror", "empty s= tag"
        return
    if not _valid_dns_name(d.strip()):
        sp.result, sp.reason = "permerror", "d= is not a valid domain name"
        return
    if not _valid_dns_name(s.strip()):
        sp.result, sp.reason = "permerror", "s= is not a valid selector"
        return
    for k in (b"b", b"bh"):
        raw_b64 = _WSP.sub(b"", tags[k])
        if not raw_b64 or not _B64.match(raw_b64) or len(raw_b64) % 4:
            sp.result, sp.reason = "permerror", f"{k.decode()}= is not valid base64"
            return
        try:
            base64.b64decode(raw_b64, validate=True)
        except (binascii.Error, ValueError):
            sp.result, sp.reason = "permerror", f"{k.decode()}= is not valid base64"
            return
    if b"l" in tags:
        if not _DIGITS.fullmatch(tags[b"l"].strip()):
            sp.result, sp.reason = "permerror", "l= is not a decimal integer"
            return
        sp.l = int(tags[b"l"].strip())
    h = [x.strip().lower() for x in _H_SPLIT.split(tags[b"h"].strip())]
    if b"from" not in h:
        sp.result, sp.reason = "permerror", "From is not signed (RFC 6376 5.4)"
        return
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as e:
        sp.result, sp.reason = "permerror", f"invalid c= value: {e}"
        return
    a = tags[b"a"].strip().lower()
    if a == b"rsa-sha1":
        sp.result, sp.reason = "policy", "rsa-sha1 is not acceptable (RFC 8301)"
        # still verify it cryptographically, for the record
        sp.key_name = s.strip() + b"._domainkey." + d.strip() + b"."
        return
    if a not in (b"rsa-sha256", b"ed25519-sha256"):
        sp.result, sp.reason = "permerror", f"unsupported algorithm a={_s(a)}"
        return
    try:
        dkim.validate_signature_fields(tags)
    except dkim.ValidationError as e:
        sp.result, sp.reason = "permerror", str(e)
        return
    except Exception as e:  # noqa: BLE001
        sp.result, sp.reason = "permerror", f"malformed signature: {e!r}"
        return
    sp.key_name = s.strip() + b"._domainkey." + d.strip() + b"."


class KeyTemp:
    """A key fetch that failed temporarily (picklable marker)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


async def fetch_keys(resolver: Resolver, names: list[bytes], keys: dict) -> None:
    """Fill ``keys[name]`` with the first TXT record (bytes), None (no record) or KeyTemp."""
    import asyncio

    async def one(name: bytes) -> None:
        try:
            txts = await resolver.txt_bytes(name.decode("ascii", "replace").rstrip("."))
        except DnsTempError as e:
            keys[name] = KeyTemp(e.reason)
            return
        keys[name] = txts[0] if txts else None

    todo = [n for n in names if n not in keys]
    if len(todo) == 1:
        await one(todo[0])  # the usual case: no task for a single (often cached) answer
    elif todo:
        await asyncio.gather(*(one(n) for n in todo))


class _MissingKey(Exception):
    pass


class _TempKey(Exception):
    pass


def _dnsfunc(keys: dict, missing: list):
    def lookup(name, timeout=5):
        if name not in keys:
            missing.append(name)
            raise _MissingKey(name)
        v = keys[name]
        if isinstance(v, KeyTemp):
            raise _TempKey(v.reason)
        return v
    return lookup


def _classify_key(txt) -> tuple[str | None, str, int | None]:
    """(result-if-unusable, reason, bits)."""
    if txt is None:
        return "permerror", "no key record", None
    if isinstance(txt, KeyTemp):
        return "temperror", f"key lookup: {txt.reason}", None
    try:
        tags = parse_tag_value(txt)
    except Exception:  # noqa: BLE001
        return "permerror", "malformed key record", None
    if tags.get(b"p", None) is not None and not tags[b"p"].strip():
        return "fail", "key revoked (empty p=)", None
    try:
        _pk, bits, _kt, _tls = dkimfast.evaluate_key(txt)  # dkim.evaluate_pk, remembered per record
    except dkim.KeyFormatError as e:
        return "permerror", f"unusable key: {e}", None
    except Exception as e:  # noqa: BLE001
        return "permerror", f"unusable key: {e!r}", None
    return None, "", bits


def _body_key(sig: dict, default_c: bytes) -> tuple[bytes, bytes, int | None] | None:
    """(body canonicalisation, a=, l=) of a signature: what its body hash depends on."""
    try:
        canon = CanonicalizationPolicy.from_c_value(sig.get(b"c", default_c)).body_algorithm.name
        length = int(sig[b"l"]) if b"l" in sig else None
    except (InvalidCanonicalizationPolicyError, ValueError, TypeError):
        return None
    a = sig.get(b"a")
    if a not in dkim.HASH_ALGORITHMS or (length is not None and length < 0):
        return None
    return canon, a, length


def body_hash_wants(raw: bytes) -> list[tuple[bytes, bytes, int | None]]:
    """Every body hash the DKIM-Signature and ARC-Message-Signature fields of ``raw`` ask for."""
    wants = []
    for f in header_fields(raw):
        lname = f.name.lower()
        if lname not in (b"dkim-signature", b"arc-message-signature"):
            continue
        try:
            tags = parse_tag_value(f.value)
        except InvalidTagValueList:
            continue
        key = _body_key(tags, b"simple/simple" if lname == b"dkim-signature" else b"relaxed/relaxed")
        if key is not None:
            wants.append(key)
    return list(dict.fromkeys(wants))


def file_body_hashes(raw: bytes, body: IO[bytes], body_size: int) -> dict:
    """Body hashes for a large message whose body is in a file: one pass, one piece in memory. Pieces of
    256 KiB: with 1 MiB ones the piece and its canonical copies cost the SMTP process +3 MB for a 1 MB
    message (issue 18 item 9); hashing is per byte, so the piece size costs no CPU."""
    wants = body_hash_wants(raw)
    if not wants:
        return {}
    return bodyhash.body_hashes(read_chunks(body, body_size, _HASH_PIECE), wants)


_HASH_PIECE = 256 * 1024


class _BodyFromHashes:
    """dkimpy verification with the body hash checked against one computed beforehand (streamed
    from a file) instead of canonicalising ``self.body``; the header hash and the signature are
    checked by dkimpy as usual. Used with a message of headers only."""

    body_hashes: dict = {}

    def verify_sig_process(self, sig, include_headers, sig_header, dnsfunc):  # noqa: ANN001 - dkimpy's
        # dkimpy's own first checks, kept ahead of the body hash as dkimpy orders them
        if self.tlsrpt == "strict" and not self.seqtlsrpt:
            raise dkim.ValidationError("Message is tlsrpt and Service Type is not tlsrpt")
        if not self.tlsrpt and self.seqtlsrpt:
            raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
        if b"bh" in sig:
            key = _body_key(sig, b"simple/simple")
            got = self.body_hashes.get(key) if key is not None else None
            if got is None:
                raise dkim.ValidationError("body hash not computed for this signature")
            try:
                bh = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            except (TypeError, binascii.Error) as e:
                raise dkim.MessageFormatError(str(e)) from e
            if got[0] != bh:
                raise dkim.ValidationError("body hash mismatch (streamed body)")
            sig = {k: v for k, v in sig.items() if k != b"bh"}
        return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)  # type: ignore[misc]


class _StreamedDKIM(_BodyFromHashes, dkim.DKIM):
    pass


class _StreamedARC(_BodyFromHashes, dkim.ARC):
    pass


def _dkimpy_object(streamed, plain, raw: bytes, body_hashes: dict | None):  # noqa: ANN001, ANN202 - dkimpy classes
    """dkimpy's DKIM or ARC object for ``raw``; with ``body_hashes`` (``raw`` is then the header section)
    the streamed variant, which checks bh= against them."""
    if body_hashes is not None:
        obj = streamed(raw, logger=_quiet, minkey=MIN_KEY_BITS)
        obj.body_hashes = body_hashes
        return obj
    return plain(raw, logger=_quiet, minkey=MIN_KEY_BITS)


FAST_VERIFY = True  # dkimfast for the everyday signature (tests turn it off to compare with dkimpy)


def split_for_dkim(raw: bytes) -> tuple[bytes, bytes]:
    """(header section with its blank line, body), split where dkimpy's ``rfc822_parse`` splits: at
    the first empty line, CRLF or bare LF (``headers.body_start``, the one decision every reader
    uses). No blank line: all header, empty body (as dkimpy)."""
    start = body_start(raw)
    return raw[:start], raw[start:]


def verify_sync(raw: bytes, sigs: list[SigPlan], keys: dict, check_arc: bool,
                body_hashes: dict | None = None, body_keys: list | None = None) -> dict:
    """CPU part. Returns {"sigs": [SigPlan...], "arc": {...} | None, "missing": [names]}.

    ``body_hashes`` (from :func:`file_body_hashes`): ``raw`` is only the header section of a large
    message and the body hashes were computed from its file. ``body_keys`` (``Plan.body_keys``, no
    ARC to check): the body hashes are computed here in one pass (``bodyhash``) and dkimpy gets the
    header section only, which spares it splitting the body into lines and joining them again."""
    if body_hashes is None and body_keys is not None and not check_arc:
        head, body = split_for_dkim(raw)
        body_hashes = bodyhash.body_hashes((body,), body_keys)
        raw = head
    missing: list[bytes] = []
    dnsfunc = _dnsfunc(keys, missing)
    out_sigs: list[SigPlan] = []
    # The everyday signature is checked by dkimfast (dkimpy's steps without its overhead); dkimpy's
    # own object is built only when a signature needs it, or when the header section is unusual.
    fields = dkimfast.parse_header_section(raw) if body_hashes is not None and FAST_VERIFY else None
    d_obj = None
    msg_error = None

    def dkimpy():  # noqa: ANN202
        nonlocal d_obj, msg_error
        if d_obj is None and msg_error is None:
            try:
                d_obj = _dkimpy_object(_StreamedDKIM, dkim.DKIM, raw, body_hashes)
            except Exception as e:  # noqa: BLE001 - MessageFormatError and anything odd
                msg_error = f"message format: {e}"
        return d_obj

    if fields is None:
        dkimpy()
    for sp in sigs:
        sp = SigPlan(**sp.__dict__)
        out_sigs.append(sp)
        if sp.result is not None and sp.result != "policy":
            continue
        if sp.result == "policy" and not sp.key_name:
            continue
        pre_policy = sp.reason if sp.result == "policy" else None
        if msg_error:
            sp.result, sp.reason = "permerror", msg_error
            continue
        txt = keys.get(sp.key_name, None) if sp.key_name in keys else None
        if sp.key_name not in keys:
            missing.append(sp.key_name)
            continue
        bad, why, bits = _classify_key(txt)
        sp.key_bits = bits
        if bad:
            sp.result, sp.reason = bad, why
            continue
        try:
            ok = None
            if fields is not None and sp.tags is not None and not pre_policy:
                ok = dkimfast.verify(fields, sp.index, sp.tags, sp.key_name, txt, body_hashes,
                                     _body_key(sp.tags, b"simple/simple"), MIN_KEY_BITS)
            if ok is None:
                obj = dkimpy()
                if obj is None:
                    sp.result, sp.reason = "permerror", msg_error or "message format"
                    continue
                ok = obj.verify(idx=sp.index, dnsfunc=dnsfunc)
            if ok:
                sp.result, sp.reason = "pass", ""
            else:
                sp.result, sp.reason = "fail", "signature did not verify"
        except _TempKey as e:
            sp.result, sp.reason = "temperror", f"key lookup: {e}"
        except _MissingKey:
            sp.result = None
            continue
        except dkim.KeyFormatError as e:
            msg = str(e)
            if "too small" in msg:
                sp.result, sp.reason = "policy", f"key too small: {bits} bits (minimum {MIN_KEY_BITS})"
            else:
                sp.result, sp.reason = "permerror", f"key: {msg}"
        except dkim.ValidationError as e:
            msg = str(e)
            if "body hash mismatch" in msg:
                sp.result, sp.reason = "fail", "body hash did not verify"
            else:
                sp.result, sp.reason = "permerror", msg[:200]
        except dkim.DKIMException as e:
            sp.result, sp.reason = "permerror", str(e)[:200]
        except Exception as e:  # noqa: BLE001 - never let a hostile message raise
            sp.result, sp.reason = "permerror", f"verification error: {e!r}"[:200]
        if pre_policy:
            if sp.result == "pass":
                sp.result, sp.reason = "policy", pre_policy + " (signature verifies)"
            elif sp.result not in ("temperror",):
                sp.result, sp.reason = "policy", pre_policy + f" ({sp.reason or sp.result})"
            continue
        if sp.result == "pass" and sp.l is not None:
            body_len = _canon_body_len(fields if fields is not None else dkimpy().headers, sp.index,
                                       d_obj, body_hashes)
            if body_len is not None and sp.l < body_len:
                sp.result, sp.reason = "policy", f"l={sp.l} covers only part of the {body_len}-byte body"
    arc = None
    if check_arc:
        arc = _verify_arc(raw, dnsfunc, body_hashes)
    return {"sigs": out_sigs, "arc": arc, "missing": list(dict.fromkeys(missing))}


def _canon_body_len(headers, idx: int, d_obj, body_hashes: dict | None = None) -> int | None:  # noqa: ANN001
    try:
        sigheaders = [(x, y) for x, y in headers if x.lower() == b"dkim-signature"]
        tags = parse_tag_value(sigheaders[idx][1])
        if body_hashes is not None:
            got = body_hashes.get(_body_key(tags, b"simple/simple"))
            return got[1] if got is not None else None
        pol = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
        return len(pol.canonicalize_body(d_obj.body))
    except Exception:  # noqa: BLE001
        return None


def _verify_arc(raw: bytes, dnsfunc, body_hashes: dict | None = None) -> dict:
    """RFC 8617 5.2 chain validation through dkimpy, with our own handling of the edges."""
    out: dict = {"result": "none", "reason": "", "instances": 0, "sets": []}
    try:
        a = _dkimpy_object(_StreamedARC, dkim.ARC, raw, body_hashes)
        cv, results, reason = a.verify(dnsfunc=dnsfunc)
    except _TempKey as e:
        out.update(result="temperror", reason=f"key lookup: {e}")
        return out
    except _MissingKey:
        out.update(result="none", reason="key not fetched")
        return out
    except dkim.DKIMException as e:
        out.update(result="fail", reason=str(e)[:200])
        return out
    except Exception as e:  # noqa: BLE001 - malformed chains must not raise
        out.update(result="fail", reason=f"ARC verification error: {e!r}"[:200])
        return out
    sets = []
    for r in results or []:
        sets.append({
            "i": r.get("instance"),
            "as_d": _s(r.get("as-domain")), "as_s": _s(r.get("as-selector")),
            "ams_d": _s(r.get("ams-domain")), "ams_s": _s(r.get("ams-selector")),
            "cv": _s(r.get("cv")), "as_valid": bool(r.get("as-valid")), "ams_valid": bool(r.get("ams-valid")),
            "aar": _s(r.get("aar-value")),
        })
    sets.sort(key=lambda x: x["i"] or 0)
    out["sets"] = sets
    out["instances"] = max((s["i"] or 0 for s in sets), default=0)
    if cv is None:
        # dkimpy's "a seal reported cv=fail, the chain is terminated": RFC 8617 5.2 step 2
        # makes that a failed chain.
        out.update(result="fail", reason=reason or "a seal reported cv=fail")
    else:
        c = cv.decode() if isinstance(cv, bytes) else str(cv)
        out.update(result=c.lower(), reason="" if c.lower() == "pass" else (reason or ""))
        if out["result"] == "none" and out["instances"] == 0:
            out["reason"] = "no ARC sets"
    return out
