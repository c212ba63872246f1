"""Email authentication at SMTP time: SPF, DKIM, DMARC, ARC and Authentication-Results.

Use::

    resolver = Resolver(nameservers=(("127.0.0.1", 53),), timeout=5.0)
    auth = Authenticator(resolver, hostname="mx.example.net", executor=pool)
    verdict = await auth.check(peer_ip=ip, helo=helo, mail_from=sender, raw=data, policy=policy)
    if verdict.action in ("reject", "defer"):
        answer(*verdict.reply)
    else:
        raw = stamp(raw, verdict, "mx.example.net")   # strip forged A-R, prepend ours

See docs/auth.md for the policy keys, the reply codes and the decisions taken.
May import: gateway.config, gateway.runtime.
"""
from gateway.auth.authenticator import Authenticator, AuthVerdict, stamp
from gateway.config.auth import ACTIONS, AuthPolicy, parse_auth_policy
from gateway.auth.dns import DnsAnswer, DnsTempError, Resolver
from gateway.auth.headers import prepend_header, strip_forged_authres

__all__ = [
    "Authenticator",
    "AuthVerdict",
    "AuthPolicy",
    "parse_auth_policy",
    "ACTIONS",
    "Resolver",
    "DnsTempError",
    "DnsAnswer",
    "strip_forged_authres",
    "prepend_header",
    "stamp",
]
