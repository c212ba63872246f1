"""Plain dkimpy's verdicts, in a process of its own (the reference of ``test_dkimfast_spill``).

The gateway patches dkimpy when it is imported (OpenSSL RSA, a cached tag parser, faster
canonicalisation), so a reference computed in the test process would partly be our own code.
Run as a script: reads a pickled ``(keys, messages)`` from stdin, where ``keys`` maps a key name
(``b"sel._domainkey.example.org."``) to its TXT record, and writes back, pickled, one list per
message: ``dkim.DKIM(message).verify(idx)`` for every DKIM-Signature dkimpy finds (True/False; an
exception counts as False, as ``dkim.verify`` does).
"""
from __future__ import annotations

import logging
import pickle
import sys

import dkim

_QUIET = logging.getLogger("plain_dkimpy")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def verdicts(keys: dict[bytes, bytes], message: bytes) -> list[bool]:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return keys.get(name)

    try:
        d = dkim.DKIM(message, logger=_QUIET, minkey=1024)
        n = sum(1 for name, _v in d.headers if name.lower() == b"dkim-signature")
    except Exception:  # noqa: BLE001 - dkimpy cannot parse it: no signature verifies
        return []
    out = []
    for idx in range(n):
        try:
            out.append(bool(dkim.DKIM(message, logger=_QUIET, minkey=1024).verify(idx=idx, dnsfunc=dnsfunc)))
        except Exception:  # noqa: BLE001 - dkim.verify's own answer to any DKIMException
            out.append(False)
    return out


def main() -> None:
    assert not any(m == "gateway" or m.startswith("gateway.") for m in sys.modules), "not plain dkimpy"
    keys, messages = pickle.load(sys.stdin.buffer)
    pickle.dump([verdicts(keys, m) for m in messages], sys.stdout.buffer)


if __name__ == "__main__":
    main()
