"""The ValiMail ARC validation suite through our ARC path: the whole Authenticator.check(), keys
served by a real DNS server on 127.0.0.1 through our Resolver, the chain result read from
``auth["arc"]["result"]``.

Decision on the three tests with an empty ``cv`` (cv_fail_i1_as_cv_fail, cv_fail_i2_as2_fail,
cv_fail_i2_as1_fail: chains in which a seal already says cv=fail): RFC 8617 5.2 step 2 says the
chain validation status is then ``fail``, so we expect ``fail`` for them.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.auth import AuthPolicy

from .conftest import SUITE_TALLY
from .helpers import check

CORPUS = Path("/work/shared/corpora/arc/arc-draft-validation-tests.yml")
_alt = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "arc" / "arc-draft-validation-tests.yml"
if not CORPUS.exists() and _alt.exists():
    CORPUS = _alt

EMPTY_CV_AS_FAIL = {"cv_fail_i1_as_cv_fail", "cv_fail_i2_as2_fail", "cv_fail_i2_as1_fail"}


def _load():
    if not CORPUS.exists():
        return [], []
    import yaml

    docs = [d for d in yaml.safe_load_all(CORPUS.read_bytes()) if d]
    cases = [pytest.param(di, name, t, id=name) for di, d in enumerate(docs) for name, t in d["tests"].items()]
    return cases, docs


CASES, DOCS = _load()


def _zone(doc):
    return {name: [("TXT", " ".join(str(v).split()) if "p=" in str(v) else str(v))]
            for name, v in (doc.get("txt-records") or {}).items()}


@pytest.mark.parametrize("di,name,t", CASES or [pytest.param(0, "", {}, id="absent")])
def test_arc_validation(dns_server, di, name, t):
    if not CASES:
        pytest.skip(f"ARC corpus absent at {CORPUS}")
    dns_server.set_zone(_zone(DOCS[di]))
    raw = t["message"].encode("utf-8")
    expected = "fail" if name in EMPTY_CV_AS_FAIL else str(t["cv"]).strip().lower()
    assert expected in ("pass", "fail", "none"), (name, t["cv"])
    v = asyncio.run(check(dns_server, raw, peer_ip="192.0.2.1", helo="[192.0.2.1]", mail_from="",
                          policy=AuthPolicy(malformed_from="tag")))
    got = v.auth["arc"]["result"]
    SUITE_TALLY["ARC validation suite"]["pass" if got == expected else "fail"] += 1
    assert got == expected, f"{name}: got {got} ({v.auth['arc']['reason']}), want {expected}"
