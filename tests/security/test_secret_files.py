"""Issue 18 item 7: secret files others can read are refused; files ticketmx creates are private.

Everything goes through the real CLI in a subprocess (exit code 78 and the dotted key for config
errors), and file creation runs under ``umask 022`` - the umask that made world-readable keys.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

EX_CONFIG = 78


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _rsa_pem(bits: int = 1024) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    k = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                           serialization.NoEncryption())


def _short_rsa_pem() -> bytes:
    """A 512-bit RSA key (cryptography refuses to generate one): primes by Miller-Rabin."""
    import random
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def prime(bits: int) -> int:
        while True:
            n = random.getrandbits(bits) | (1 << (bits - 1)) | 1
            d, r = n - 1, 0
            while d % 2 == 0:
                d, r = d // 2, r + 1
            for _ in range(30):
                x = pow(random.randrange(2, n - 1), d, n)
                if x in (1, n - 1):
                    continue
                for _ in range(r - 1):
                    x = pow(x, 2, n)
                    if x == n - 1:
                        break
                else:
                    break
            else:
                if (n - 1) % 65537:
                    return n

    p, q = prime(256), prime(256)
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    key = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                rsa.RSAPublicNumbers(e, p * q)).private_key()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _secret(tmp_path, name: str, data: bytes, mode: int) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    p.chmod(mode)
    return str(p)


def _config(tmp_path, mode: int, only: str | None = None) -> tuple[str, dict[str, str]]:
    """A config naming every kind of secret file; each file gets ``mode`` (or 0600 unless it is ``only``)."""
    from gateway.store.crypto import generate_key

    def m(key: str) -> int:
        return mode if only in (None, key) else 0o600

    files = {
        "smtp.tls_key": _secret(tmp_path, "tls.key", _rsa_pem(), m("smtp.tls_key")),
        "store.encryption_key_file": _secret(tmp_path, "store.key", (generate_key() + "\n").encode(),
                                             m("store.encryption_key_file")),
        "relay.smarthost[0].password_file": _secret(tmp_path, "pw", b"pass-word\n",
                                                    m("relay.smarthost[0].password_file")),
        "relay.smarthost[1].oauth_client_secret_file": _secret(
            tmp_path, "client-secret", b"csecret\n", m("relay.smarthost[1].oauth_client_secret_file")),
        "relay.smarthost[2].oauth_refresh_token_file": _secret(
            tmp_path, "refresh", b"rtoken\n", m("relay.smarthost[2].oauth_refresh_token_file")),
        "relay.dkim[0].key_file": _secret(tmp_path, "dkim.key", _rsa_pem(), m("relay.dkim[0].key_file")),
    }
    cert = tmp_path / "tls.crt"
    cert.write_text("certificate\n")
    text = f"""
[smtp]
hostname = "mx.example.test"
tls_cert = "{cert}"
tls_key = "{files['smtp.tls_key']}"
[store]
url = "sqlite:///{tmp_path}/t.db"
encryption_key_file = "{files['store.encryption_key_file']}"
[[mailbox]]
address = "support@example.test"
queue = "IT"
[relay]
from = "Helpdesk <support@example.test>"
[[relay.smarthost]]
name = "pw"
host = "smtp.example.test"
tls = "starttls"
auth = "login"
username = "relay"
password_file = "{files['relay.smarthost[0].password_file']}"
[[relay.smarthost]]
name = "cc"
host = "smtp.example.test"
auth = "xoauth2"
username = "helpdesk@example.test"
oauth_token_url = "https://login.example.test/token"
oauth_client_id = "cid"
oauth_client_secret_file = "{files['relay.smarthost[1].oauth_client_secret_file']}"
[[relay.smarthost]]
name = "rt"
host = "smtp.example.test"
auth = "xoauth2"
username = "helpdesk@example.test"
oauth_token_url = "https://login.example.test/token"
oauth_client_id = "cid"
oauth_refresh_token_file = "{files['relay.smarthost[2].oauth_refresh_token_file']}"
[[relay.dkim]]
domain = "example.test"
selector = "s1"
key_file = "{files['relay.dkim[0].key_file']}"
"""
    path = tmp_path / "t.toml"
    path.write_text(text)
    return str(path), files


SECRET_KEYS = ["smtp.tls_key", "store.encryption_key_file", "relay.smarthost[0].password_file",
               "relay.smarthost[1].oauth_client_secret_file", "relay.smarthost[2].oauth_refresh_token_file",
               "relay.dkim[0].key_file"]


def test_private_and_group_readable_secret_files_are_accepted(tmp_path):
    for mode in (0o600, 0o640, 0o400, 0o440):
        path, _ = _config(tmp_path, mode)
        proc = run_cli("check-config", "--config", path, check=False)
        assert proc.returncode == 0, (oct(mode), proc.stderr)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o601])
def test_every_secret_file_others_can_access_is_refused_naming_key_and_file(tmp_path, mode):
    path, files = _config(tmp_path, mode)
    proc = run_cli("check-config", "--config", path, check=False)
    assert proc.returncode == EX_CONFIG
    for key in SECRET_KEYS:
        line = next((ln for ln in proc.stderr.splitlines() if f"{key}:" in ln or f"{key} " in ln), "")
        assert files[key] in line and "accessible by others" in line and f"{mode:04o}" in line, (key, proc.stderr)
    assert "csecret" not in proc.stderr + proc.stdout and "pass-word" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_one_world_readable_file_is_enough_to_refuse(tmp_path, key):
    path, files = _config(tmp_path, 0o644, only=key)
    proc = run_cli("check-config", "--config", path, check=False)
    assert proc.returncode == EX_CONFIG
    errors = [ln for ln in proc.stderr.splitlines() if "config error" in ln]
    assert len(errors) == 1 and key in errors[0] and files[key] in errors[0], proc.stderr


# -- DKIM key_file must be a DKIM private key ---------------------------------------------------------

def _not_dkim_keys() -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    import datetime
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "x.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(rsa_key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(rsa_key, hashes.SHA256()))
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    return {
        "rsa public key": rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo),
        "certificate": cert.public_bytes(serialization.Encoding.PEM),
        "ec private key": ec_key.private_bytes(serialization.Encoding.PEM, pkcs8, none),
        "pem ed25519 key": ed25519.Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, pkcs8,
                                                                               none),
        "openssh key": b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
                       b"-----END OPENSSH PRIVATE KEY-----\n",
        "512-bit rsa": _short_rsa_pem(),
        "text": b"this is not a key\n",
        "empty": b"",
        "binary": os.urandom(64),
        "16-byte base64": b"AAAAAAAAAAAAAAAAAAAAAA==\n",
    }


def test_a_dkim_key_file_that_is_not_a_dkim_key_is_refused(tmp_path):
    for what, data in _not_dkim_keys().items():
        key = _secret(tmp_path, "dkim.key", data, 0o600)
        cfg = tmp_path / "d.toml"
        cfg.write_text(f'[smtp]\nhostname = "mx.example.test"\n[relay]\nfrom = "h@example.test"\n'
                       f'[[relay.smarthost]]\nname = "a"\nhost = "smtp.example.test"\n'
                       f'[[relay.dkim]]\ndomain = "example.test"\nselector = "s1"\nkey_file = "{key}"\n')
        proc = run_cli("check-config", "--config", str(cfg), check=False)
        assert proc.returncode == EX_CONFIG, what
        assert "relay.dkim[0].key_file" in proc.stderr and key in proc.stderr, (what, proc.stderr)
        assert "not a DKIM private key" in proc.stderr or "too short" in proc.stderr, (what, proc.stderr)


# -- files ticketmx creates are private whatever the umask ---------------------------------------------

def _run_umask(*args: str, umask: int = 0o022, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          umask=umask, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def test_store_genkey_out_and_dkim_keygen_out_are_0600_under_umask_022(tmp_path):
    out = tmp_path / "store.key"
    proc = _run_umask("-m", "gateway", "store", "genkey", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert _mode(out) == 0o600 and proc.stdout == ""          # the key is not printed with --out
    key = out.read_text().strip()
    from gateway.store.crypto import Cipher
    assert Cipher([key.encode()]).enabled
    again = _run_umask("-m", "gateway", "store", "genkey", "--out", str(out))
    assert again.returncode == 1 and "exists" in again.stderr and out.read_text().strip() == key
    printed = _run_umask("-m", "gateway", "store", "genkey")   # stdout keeps working
    assert printed.returncode == 0 and len(printed.stdout.strip()) == 44

    for algo in ("rsa", "ed25519"):
        dk = tmp_path / f"dkim-{algo}.key"
        proc = _run_umask("-m", "gateway", "dkim", "keygen", "--domain", "example.test", "--selector", "s1",
                          "--algo", algo, "--out", str(dk))
        assert proc.returncode == 0, proc.stderr
        assert _mode(dk) == 0o600 and "IN TXT" in proc.stdout


def test_sqlite_database_wal_and_shm_are_0600_under_umask_022(tmp_path):
    db = tmp_path / "sub" / "t.db"
    code = f"""
import asyncio
from gateway.store.sqlite import SqliteStore
async def main():
    s = SqliteStore({str(db)!r})
    await s.open()
    await s.transaction(lambda c: c.execute("CREATE TABLE IF NOT EXISTS x (a)"))
    import os
    assert os.path.exists({str(db)!r} + "-wal") and os.path.exists({str(db)!r} + "-shm")
    print("modes", *(oct(os.stat({str(db)!r} + sfx).st_mode & 0o777) for sfx in ("", "-wal", "-shm")))
    await s.close()
asyncio.run(main())
"""
    proc = _run_umask("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["modes", "0o600", "0o600", "0o600"], proc.stdout


def test_an_existing_world_readable_database_loses_its_other_bits(tmp_path, caplog):
    import sqlite3
    db = tmp_path / "old.db"
    sqlite3.connect(db).close()
    db.chmod(0o644)
    code = f"""
import asyncio
from gateway.store.sqlite import SqliteStore
async def main():
    s = SqliteStore({str(db)!r})
    await s.open()
    await s.close()
asyncio.run(main())
"""
    proc = _run_umask("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert _mode(db) == 0o640 and "accessible by others" in proc.stderr
