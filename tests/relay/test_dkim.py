"""Outbound DKIM: signatures made by the relay verify with dkimpy against the keygen TXT record."""
from __future__ import annotations

import stat

import dkim
import pytest

from relay.cli import dkim_keygen
from gateway.config.relay import parse_relay_config
from relay.dkim import DkimSigner, keygen, txt_value
from relay.notify import MailboxInfo, Notifier, TicketInfo

from .conftest import host, relay_table, wait_for
from .helpers import enqueue_many, start_worker


def _dns(records: dict[str, bytes]):
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))
    return lookup


@pytest.mark.parametrize("algo", ["rsa", "ed25519"])
def test_sign_and_verify(tmp_path, algo):
    key = tmp_path / f"{algo}.key"
    record = keygen("example.test", "s1", algo, key, bits=1024 if algo == "rsa" else 2048)
    assert record.startswith("s1._domainkey.example.test. IN TXT")
    assert f"k={algo}" in record
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cfg = parse_relay_config(relay_table(host("a", 25), dkim=[{"domain": "example.test", "selector": "s1",
                                                              "key_file": str(key)}]))
    assert cfg.dkim[0].algorithm == algo and "private_key" not in repr(cfg.dkim[0])
    n = Notifier(cfg).acknowledgement(ticket=TicketInfo(1, "HD-1", "Hello"), mailbox=MailboxInfo("support@example.test"),
                                      to="alice@customer.test")
    signed = DkimSigner(cfg.dkim).sign(n.message)
    assert signed.startswith(b"DKIM-Signature:")
    assert b"d=example.test" in signed and b"s=s1" in signed
    dns = _dns({"s1._domainkey.example.test": txt_value(record)})
    assert dkim.verify(signed, dnsfunc=dns, minkey=1024)
    # tampering breaks it
    assert not dkim.verify(signed.replace(b"Subject: Re: Hello", b"Subject: Re: Hellx"), dnsfunc=dns, minkey=1024)


def test_subdomain_from_signed_with_parent_key_and_unknown_domain_unsigned(tmp_path):
    key = tmp_path / "k"
    keygen("example.test", "s1", "ed25519", key)
    cfg = parse_relay_config(relay_table(host("a", 25), dkim=[{"domain": "example.test", "selector": "s1",
                                                              "key_file": str(key)}]))
    signer = DkimSigner(cfg.dkim)
    msg = b"From: a@help.example.test\r\nTo: b@x.test\r\nSubject: s\r\n\r\nbody\r\n"
    assert b"d=example.test" in signer.sign(msg)
    other = b"From: a@other.test\r\nTo: b@x.test\r\nSubject: s\r\n\r\nbody\r\n"
    assert signer.sign(other) is other


def test_keygen_refuses_overwrite_and_cli_prints_record(tmp_path):
    out: list[str] = []
    errs: list[str] = []
    path = str(tmp_path / "k.pem")
    assert dkim_keygen("example.test", "sel", "rsa", path, out=out.append, err=errs.append) == 0
    assert any("IN TXT" in line and "v=DKIM1; k=rsa; p=" in line for line in out)
    assert dkim_keygen("example.test", "sel", "rsa", path, out=out.append, err=errs.append) == 1
    assert "exists" in errs[0]


def test_pkcs8_rsa_key_accepted(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    k = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "p8.pem"
    path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    path.chmod(0o600)
    cfg = parse_relay_config(relay_table(host("a", 25), dkim=[{"domain": "example.test", "selector": "s",
                                                              "key_file": str(path)}]))
    msg = b"From: a@example.test\r\nTo: b@x.test\r\nSubject: s\r\n\r\nbody\r\n"
    assert DkimSigner(cfg.dkim).sign(msg).startswith(b"DKIM-Signature:")


async def test_worker_signs_what_it_sends(store, sinks, tmp_path):
    key = tmp_path / "k"
    record = keygen("example.test", "s1", "rsa", key, bits=1024)
    s = sinks()
    table = relay_table(host("a", s.port), dkim=[{"domain": "example.test", "selector": "s1", "key_file": str(key)}])
    cfg = parse_relay_config(table)
    n = Notifier(cfg).acknowledgement(ticket=TicketInfo(None, "HD-7", "Printer"),
                                      mailbox=MailboxInfo("support@example.test", "IT"), to="alice@customer.test")
    w = await start_worker(store, table)
    try:
        await enqueue_many(store, [n])
        w.wake()
        await wait_for(lambda: len(s.messages) == 1)
    finally:
        await w.close()
    data = s.messages[0].data
    assert dkim.verify(data, dnsfunc=_dns({"s1._domainkey.example.test": txt_value(record)}), minkey=1024)


def test_fast_rsa_signature_is_byte_identical_to_dkimpy(tmp_path):
    import hashlib

    import relay.dkim as rd
    key = tmp_path / "k"
    keygen("example.test", "s1", "rsa", key, bits=1024)
    pk = dkim.crypto.parse_pem_private_key(key.read_bytes())
    for name in ("sha256", "sha1"):
        h = dkim.HashThrough(hashlib.new(name))
        h.update(b"canonical headers")
        assert rd._fast_rsa_sign(h, pk) == rd._PURE_RSA_SIGN(h, pk)
    assert dkim.RSASSA_PKCS1_v1_5_sign is rd._fast_rsa_sign


def test_keygen_cli_needs_out_and_writes_nothing_without_it(tmp_path):
    """No silent key in the current directory: without --out, a usage error and no file (issue 20)."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "gateway", "dkim", "keygen", "--domain", "example.test",
                           "--selector", "s1"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--out" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []
    errs: list[str] = []
    assert dkim_keygen("example.test", "s1", "rsa", "", out=lambda s: None, err=errs.append) == 2
    assert "--out" in errs[0] and list(tmp_path.iterdir()) == []


def _other_group() -> tuple[str, int]:
    """A group this process may give a file: any group when root, else its own primary group."""
    import grp
    import os
    if os.geteuid() == 0:
        g = next(g for g in grp.getgrall() if g.gr_gid != os.getgid())
    else:
        g = grp.getgrgid(os.getgid())
    return g.gr_name, g.gr_gid


def test_keygen_out_is_readable_by_the_service_group(tmp_path):
    import os
    import stat
    name, gid = _other_group()
    old = os.umask(0o077)  # the group bit must come from keygen, not from a permissive umask
    try:
        path = str(tmp_path / "grp.key")
        out: list[str] = []
        assert dkim_keygen("example.test", "s1", "ed25519", path, out=out.append, group=name) == 0
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid, (oct(st.st_mode), st.st_gid)
        assert f"group {name}, mode 0640" in out[0]
        # no such group: private to the owner
        path2 = str(tmp_path / "nogrp.key")
        out.clear()
        assert dkim_keygen("example.test", "s1", "ed25519", path2, out=out.append, group="no-such-group-x") == 0
        assert stat.S_IMODE(os.stat(path2).st_mode) == 0o600 and "mode 0600" in out[0]
    finally:
        os.umask(old)
    # the 0640 key is accepted as a [[relay.dkim]] key_file (group bits are allowed, "other" bits are not)
    from gateway.config.relay import parse_relay_config
    cfg = parse_relay_config({"dkim": [{"domain": "example.test", "selector": "s1", "key_file": path}]})
    assert cfg.dkim[0].algorithm == "ed25519"
