"""aiosmtpd's per-connection tables are the same with the cached inspect/dir shims."""
from __future__ import annotations

import inspect

import aiosmtpd.smtp as smtp_mod
import pytest

from gateway.smtp import fastinit as smtp_fastinit


class _Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        return responses

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

    async def auth_CUSTOM(self, server, args):  # a handler-provided AUTH mechanism
        return None


def _tables(handler) -> tuple:
    s = smtp_mod.SMTP(handler, hostname="h.test", ident="t")
    return ({k: (v.method.__name__, v.is_builtin) for k, v in s._auth_methods.items()},
            sorted(s._handle_hooks), sorted(s._smtp_methods), s._ehlo_hook_ver,
            s._smtp_methods["EHLO"].__self__ is s, s._handle_hooks["DATA"].__self__ is handler)


async def test_tables_identical_to_plain_aiosmtpd(monkeypatch: pytest.MonkeyPatch) -> None:
    smtp_fastinit.install()
    handler = _Handler()
    cached = [_tables(handler) for _ in range(3)]
    monkeypatch.setattr(smtp_mod, "inspect", inspect)
    monkeypatch.delattr(smtp_mod, "dir", raising=False)
    plain = _tables(handler)
    assert cached[0] == cached[1] == cached[2] == plain
    assert "CUSTOM" in plain[0] and plain[0]["CUSTOM"] == ("auth_CUSTOM", False)
    assert plain[4] and plain[5]  # bound to the new connection / the handler


async def test_instance_level_hooks_are_not_cached() -> None:
    smtp_fastinit.install()
    h1, h2 = _Handler(), _Handler()
    smtp_mod.SMTP(h1, hostname="h.test")

    async def handle_RCPT(server, session, envelope, address, options):
        return "250 OK"
    h2.handle_RCPT = handle_RCPT  # type: ignore[attr-defined]
    s2 = smtp_mod.SMTP(h2, hostname="h.test")
    assert "RCPT" in s2._handle_hooks
    assert "RCPT" not in smtp_mod.SMTP(h1, hostname="h.test")._handle_hooks


def test_sanitized_log_is_skipped_only_when_the_logger_would_drop_it(caplog: pytest.LogCaptureFixture) -> None:
    """Enabled: the record is logged with AUTH secrets scrubbed, as by aiosmtpd's own function.
    Disabled: nothing is formatted or logged."""
    import logging
    smtp_fastinit.install()
    assert smtp_mod.sanitized_log is smtp_fastinit._lazy_sanitized_log
    logger = logging.getLogger("mail.log")
    old = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        with caplog.at_level(logging.DEBUG, logger="mail.log"):
            smtp_mod.sanitized_log(logger.info, "%r >> %r", ("1.2.3.4", 25), b"AUTH PLAIN c2VjcmV0\r\n")
        assert "c2VjcmV0" not in caplog.text and "AUTH PLAIN ********" in caplog.text
        caplog.clear()
        logger.setLevel(logging.WARNING)
        calls = []

        class Loud:
            def __repr__(self) -> str:
                calls.append(1)
                return "loud"
        smtp_mod.sanitized_log(logger.info, "%r", Loud())
        assert not caplog.records and not calls
        smtp_mod.sanitized_log(logger.warning, "%r", Loud())  # enabled level: logged
        assert calls and "loud" in caplog.text
    finally:
        logger.setLevel(old)
