"""dkimpy's DKIM-Signature check for the everyday signature, without dkimpy's per-message overhead.

For every signature it verifies, dkimpy builds a ``DKIM`` object that splits every line of the
message with a regex, canonicalises *every* header field (not only the signed ones), parses and
validates the tag list a second time, re-evaluates the key record, and formats debug strings that
its logger then drops: about 250 µs of a 4 KB message's ~700 µs authentication, where the RSA
check itself is ~70 µs.

:func:`verify` takes the same steps, in the same order, on the header section only
(``dkim.DomainSigner.verify_sig_process`` and ``dkim.hash_headers`` are the reference), with the
body hash computed beforehand in one pass (``bodyhash``). It uses dkimpy's own pieces where the
bytes are decided: its canonicalisation policies (with ``fastcanon``), its tag-list parser, its
key-record evaluation and its RSA/ed25519 verification functions. Its answer is dkimpy's answer:
``True``/``False``, or the same ``dkim.ValidationError`` for a body hash mismatch.

Whenever anything is outside the common case it returns ``None`` and the caller asks dkimpy:
a header line dkimpy's parser treats specially, tags that differ from the ones ``plan`` validated,
an ``x=`` tag, a ``t=`` in the future, rsa-sha1, a key under the minimum size, a tlsrpt key, any
unexpected exception. ``tests/auth/test_dkimfast.py`` compares both on thousands of random
signed, tampered and malformed messages.
"""
from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import DuplicateTag, InvalidTagSpec

__all__ = ["parse_header_section", "parse_tag_value", "evaluate_key", "verify"]

_NAME = re.compile(rb"[\x21-\x7e]+")
_H_SPLIT = re.compile(rb"\s*:\s*")
_WSP = re.compile(rb"\s+")
_T_SLOP = 36000  # dkimpy: a t= up to 10 hours in the future is accepted

_POLICIES: dict[bytes, CanonicalizationPolicy] = {}
_KEYS: dict[bytes, tuple[Any, int, bytes, bool]] = {}
_MAX_KEYS = 512


def parse_header_section(head: bytes) -> list[tuple[bytes, bytes]] | None:
    """The header fields as dkimpy's ``rfc822_parse`` gives them for ``head`` (the header section,
    up to and including its empty line): (name, value with CRLF line ends), unfolded lines joined
    with CRLF. None when dkimpy would raise or skip a line (a continuation line first, a line that
    is not ``name:``, an mbox ``From `` line): the caller then lets dkimpy do it all."""
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]  # dkimpy splits on \r?\n
        if not line:
            break
        if line[0] in (0x09, 0x20):
            if not fields:
                return None
            fields[-1][1] += line + b"\r\n"
            continue
        colon = line.find(b":")
        if colon <= 0 or _NAME.fullmatch(line, 0, colon) is None:
            return None
        fields.append([line[:colon], line[colon + 1:] + b"\r\n"])
    return [(n, v) for n, v in fields]


def parse_tag_value(tag_list: bytes) -> dict[bytes, bytes]:
    """dkimpy's ``dkim.util.parse_tag_value`` (RFC 6376 3.2), same dict and same exceptions, without
    a ``re.match`` per tag: that regex, ``^[a-zA-Z](\\w)*`` unanchored at the end, only asks that the
    tag name start with an ASCII letter."""
    tags: dict[bytes, bytes] = {}
    specs = tag_list.strip().split(b";")
    if not specs[-1]:
        specs.pop()  # a trailing semicolon is valid
    for spec in specs:
        key, eq, value = spec.partition(b"=")
        key = key.strip()
        if not eq or not key[:1].isalpha():
            raise InvalidTagSpec(spec)
        if key in tags:
            raise DuplicateTag(key)
        tags[key] = value.strip()
    return tags


def _policy(c: bytes) -> CanonicalizationPolicy:
    pol = _POLICIES.get(c)
    if pol is None:
        pol = CanonicalizationPolicy.from_c_value(c)
        if len(_POLICIES) < 64:
            _POLICIES[c] = pol
    return pol


def evaluate_key(txt: bytes) -> tuple[Any, int, bytes, bool]:
    """dkimpy's ``evaluate_pk`` for a key record, remembered per record (the same bytes for every
    message of a signer; the key objects are never changed by a verification)."""
    hit = _KEYS.get(txt)
    if hit is None:
        hit = dkim.evaluate_pk(b"key", txt)
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()
        _KEYS[txt] = hit
    return hit


def _as_planned(sig: dict, planned: dict) -> bool:
    """``sig`` (parsed from dkimpy's view of the field, folds kept as CRLF) is what ``plan`` validated
    (parsed from the unfolded field). A fold may only sit in b=, bh= and h=, where dkimpy's checks read
    CRLF as the whitespace it is; anywhere else dkimpy decides."""
    if len(sig) != len(planned):
        return False
    for k, v in sig.items():
        if b"\r\n" in v:
            if k not in (b"b", b"bh", b"h"):
                return False
            v = v.replace(b"\r\n", b"")
        if planned.get(k) != v:
            return False
    return True


def verify(fields: list[tuple[bytes, bytes]], idx: int, planned: dict, key_name: bytes, key_txt: Any,
           body_hashes: dict, body_key: Any, minkey: int) -> bool | None:
    """Verify the ``idx``-th DKIM-Signature of ``fields`` as ``dkim.DKIM(...).verify(idx)`` would.

    ``planned``: the tags ``plan`` parsed and validated for this signature; ``key_name``/``key_txt``:
    the key it fetched; ``body_hashes``/``body_key``: the body hash computed for it. Returns None
    when dkimpy must decide (see the module docstring)."""
    try:
        sigheaders = [f for f in fields if f[0].lower() == b"dkim-signature"]
        if len(sigheaders) <= idx or not isinstance(key_txt, bytes):
            return None
        sig_header = sigheaders[idx]
        sig = parse_tag_value(sig_header[1])
        if not _as_planned(sig, planned) or b"x" in sig or sig.get(b"a") not in (b"rsa-sha256", b"ed25519-sha256"):
            return None
        if b"t" in sig and int(sig[b"t"]) > int(time.time()) + _T_SLOP:
            return None
        if sig[b"s"] + b"._domainkey." + sig[b"d"] + b"." != key_name:
            return None
        pk, keysize, ktag, seqtlsrpt = evaluate_key(key_txt)
        if seqtlsrpt or keysize is None or (ktag == b"rsa" and keysize < minkey):
            return None
        policy = _policy(sig.get(b"c", b"simple/simple"))
        include = [x.lower() for x in _H_SPLIT.split(sig[b"h"])]
        if b"bh" in sig:
            got = body_hashes.get(body_key)
            if got is None:
                return None
            if got[0] != base64.b64decode(_WSP.sub(b"", sig[b"bh"])):
                raise dkim.ValidationError("body hash mismatch (streamed body)")
        if b"from" in include:
            include.append(b"from")  # dkimpy: an extra From field breaks the signature
        # dkim.select_headers, on names only: canonicalisation keeps a name's lower-case form
        lowered = [f[0].lower() for f in fields]
        chosen: list[tuple[bytes, bytes]] = []
        last: dict[bytes, int] = {}
        for name in include:
            i = last.get(name, len(fields))
            while i > 0:
                i -= 1
                if lowered[i] == name:
                    chosen.append(fields[i])
                    break
            last[name] = i
        canon = policy.header_algorithm.canonicalize_headers
        signed = canon(chosen) + [(x, y.rstrip()) for x, y in
                                  canon([(sig_header[0], dkim.RE_BTAG.sub(b"\\1", sig_header[1]))])]
        h = hashlib.sha256(b"".join(x + b":" + y for x, y in signed))
        signature = base64.b64decode(_WSP.sub(b"", sig[b"b"]))
        if ktag == b"rsa":
            return bool(dkim.RSASSA_PKCS1_v1_5_verify(h, signature, pk))
        if ktag == b"ed25519":
            try:
                pk.verify(h.digest(), signature)
            except dkim.nacl.exceptions.BadSignatureError:
                return False
            return True
        return None
    except dkim.ValidationError:
        raise
    except Exception:  # noqa: BLE001 - anything unusual: dkimpy decides, and raises what it raises
        return None
