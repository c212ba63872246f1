"""``[[source]]``: mailboxes the gateway pulls mail from (IMAP, POP3, Microsoft Graph), docs/sources.md.

Configuration only: the manager and the kind modules are in gateway/ingress/sources/. Every problem is
reported with its dotted key (``source[1].success_folder``). Secrets (``password_file``/``_env``, the
``oauth_*`` ones) are read at load time, as the relay's are, so ``check-config`` proves they are readable;
they never appear in ``repr``, logs or errors. The relay keys that mean the same carry over with the same
names and defaults (timeout, max_tries, cooloff, skip_times, verify_cert, ca_file, oauth_*).
"""
from __future__ import annotations

import calendar
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.config.errors import ConfigError
from gateway.config.relay import (OAuthConfig, _bool, _choice, _hostname, _int, _nonempty, _positive_duration,
                                  _read_secret, _token_url)
from gateway.config.schedule import parse_skip_times
from gateway.config.tomltable import Table, expect_str

KINDS = ("imap", "pop3", "graph")
STATUSES = ("active", "draft", "paused")
TLS_MODES = ("implicit", "starttls", "none")
AUTH_MODES = ("password", "xoauth2")
DEFAULT_PORTS = {("imap", "implicit"): 993, ("imap", "starttls"): 143, ("imap", "none"): 143,
                 ("pop3", "implicit"): 995, ("pop3", "starttls"): 110, ("pop3", "none"): 110}
GRAPH_ENDPOINT = "https://graph.microsoft.com"
GRAPH_LOGIN = "https://login.microsoftonline.com"
OAUTH_KEYS = ("oauth_token_url", "oauth_client_id", "oauth_client_secret_file", "oauth_client_secret_env",
              "oauth_scope", "oauth_refresh_token_file", "oauth_refresh_token_env", "oauth_timeout")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One ``[[source]]`` table. Kind-specific keys are present on every kind (empty when unused)."""

    name: str
    kind: str                                  # imap | pop3 | graph
    mailbox: str                               # the [[mailbox]] address whose queue and settings apply
    status: str = "active"                     # active | draft (validated, never fetched) | paused
    # imap / pop3
    host: str = ""
    port: int = 0
    tls: str = "implicit"                      # implicit | starttls | none
    username: str = ""
    auth: str = "password"                     # password | xoauth2 (graph: always xoauth2)
    password: str = field(default="", repr=False, compare=False)
    password_file: str | None = None           # re-read when a reload finds it changed
    oauth: OAuthConfig | None = None           # the relay's OAuth client settings, same keys
    # graph
    tenant: str = ""
    user: str = ""                             # the mailbox (UPN or id; shared mailboxes too)
    endpoint: str = GRAPH_ENDPOINT             # national clouds: https://graph.microsoft.us, ...
    # folders
    folder: str = "INBOX"
    success_folder: str = "Processed"          # "" = leave the message where it is, flagged \Seen
    failure_folder: str = "Failed"             # the pipeline quarantined it
    exclusion_folder: str = "Excluded"         # the filters suppressed it (auto-replies, bulk, duplicates)
    since: float | None = None                 # epoch seconds (UTC midnight of the date): older mail is never imported
    since_text: str = ""                       # the date as written
    idle: bool = True                          # IMAP IDLE when offered, else poll
    poll_interval: float = 60.0
    stop_after_failures: int = 10              # 0: never pause by itself
    # connection, as [[relay.smarthost]]
    timeout: float = 30.0
    max_tries: int = 3                         # failed connections in a row before the cool-off
    cooloff: float = 300.0                     # then wait this long before the next try
    skip_times: tuple[tuple[int, int], ...] = ()
    verify_cert: bool = True
    ca_file: str | None = None
    # identity of pulled mail (docs/auth.md, "Pulled mail")
    trusted_authserv_ids: tuple[str, ...] = ()
    trusted_arc_sealers: tuple[str, ...] = ()
    max_size: int = 0                          # the largest message imported whole; 0: [smtp] max_message_size
    # H8: pop3 has no folders; graph's identity platform (national clouds); `source authorize` endpoints
    delete_after_import: bool = False          # pop3: DELE a message once the pipeline has ended it
    authority: str = GRAPH_LOGIN               # graph: https://login.microsoftonline.us, login.chinacloudapi.cn
    oauth_device_url: str = ""                 # RFC 8628 device endpoint ("" = derived from oauth_token_url)
    oauth_authorize_url: str = ""              # authorization endpoint for `source authorize --loopback`

    @property
    def fetches(self) -> bool:
        """Whether the manager runs it (draft and paused sources are validated only)."""
        return self.status == "active"

    def target(self, outcome: str) -> str:
        """The folder a settled message goes to ("" = leave it, flagged \\Seen)."""
        return {"ticket": self.success_folder, "quarantined": self.failure_folder,
                "suppressed": self.exclusion_folder}.get(outcome, self.success_folder)


def parse_date(v: Any) -> float:
    """``"2026-01-01"`` (or a TOML date) -> epoch seconds at UTC midnight."""
    s = str(v) if not isinstance(v, str) else v.strip()
    m = _DATE.match(s)
    if not m:
        raise ValueError(f"expected a date like \"2026-01-01\", got {s!r}")
    try:
        tm = time.strptime(s, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"not a valid date: {s!r}") from None
    return float(calendar.timegm(tm))


def _domains(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise ValueError("expected a list of domain names, e.g. [\"example.com\"]")
    return tuple(x.strip().lower().rstrip(".") for x in v)


def _folder(v: Any) -> str:
    s = expect_str(v)
    if any(c in s for c in "\r\n\0"):
        raise ValueError("a folder name cannot hold line breaks or NUL")
    return s


def parse_sources(items: Any, mailbox_addresses: tuple[str, ...], errors: list[ConfigError],
                  file: str | None, prefix: str = "source") -> tuple[SourceConfig, ...]:
    """Validate the ``[[source]]`` array; every problem goes to ``errors`` naming its dotted key."""
    if items is None:
        return ()
    if not isinstance(items, list):
        errors.append(ConfigError(prefix, "expected an array of tables ([[source]])", file))
        return ()
    known = {a.lower(): a for a in mailbox_addresses}
    out: list[SourceConfig] = []
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        cfg = _source(Table(item, f"{prefix}[{i}]", errors, file), known, names, errors)
        if cfg is not None:
            out.append(cfg)
    return tuple(out)


def _source(t: Table, known: dict[str, str], names: dict[str, str],
            errors: list[ConfigError]) -> SourceConfig | None:
    n0 = len(errors)
    for req in ("name", "kind", "mailbox"):
        if not t.has(req):
            t.error(req, "required")
    name = t.get("name", "", _nonempty)
    if name and not _NAME.match(name):
        t.error("name", f"{name!r}: letters, digits and _.- only, at most 63 (it is a CLI argument and a URL segment)")
    elif name.lower() in names:
        t.error("name", f"{name!r} is already used by {names[name.lower()]}")
    names[name.lower()] = t.prefix
    kind = t.get("kind", "imap", _choice(KINDS))
    mailbox = t.get("mailbox", "", expect_str).strip()
    if t.has("mailbox"):
        if mailbox.lower() not in known:
            t.error("mailbox", f"{mailbox!r} is not the address of a [[mailbox]]")
        else:
            mailbox = known[mailbox.lower()]
    mailbox_kind = kind in ("imap", "pop3")
    tls = t.get("tls", "implicit", _choice(TLS_MODES))
    auth = t.get("auth", "xoauth2" if kind == "graph" else "password", _choice(AUTH_MODES))
    if kind == "graph" and auth != "xoauth2":
        t.error("auth", "a graph source always uses OAuth 2.0 (auth = \"xoauth2\")")
    folder_default = "INBOX" if kind != "graph" else "inbox"
    targets_default = ("", "", "") if kind == "pop3" else ("Processed", "Failed", "Excluded")
    c: dict[str, Any] = dict(
        name=name, kind=kind, mailbox=mailbox,
        status=t.get("status", "active", _choice(STATUSES)),
        host=t.get("host", "", _hostname),
        port=t.get("port", DEFAULT_PORTS.get((kind, tls), 0), _int(1, 65535)),
        tls=tls, auth=auth,
        username=t.get("username", "", _nonempty),
        tenant=t.get("tenant", "", _nonempty),
        user=t.get("user", "", _nonempty),
        endpoint=t.get("endpoint", GRAPH_ENDPOINT, _token_url).rstrip("/"),
        folder=t.get("folder", folder_default, _folder),
        success_folder=t.get("success_folder", targets_default[0], _folder),
        failure_folder=t.get("failure_folder", targets_default[1], _folder),
        exclusion_folder=t.get("exclusion_folder", targets_default[2], _folder),
        idle=t.get("idle", True, _bool),
        poll_interval=t.get("poll_interval", 60.0, _positive_duration),
        stop_after_failures=t.get("stop_after_failures", 10, _int(0, 1_000_000)),
        timeout=t.get("timeout", 30.0, _positive_duration),
        max_tries=t.get("max_tries", 3, _int(1, 1000)),
        cooloff=t.get("cooloff", 300.0, _positive_duration),
        skip_times=t.get("skip_times", (), parse_skip_times),
        verify_cert=t.get("verify_cert", True, _bool),
        ca_file=t.get("ca_file", None, _nonempty),
        trusted_authserv_ids=t.get("trusted_authserv_ids", (), _domains),
        trusted_arc_sealers=t.get("trusted_arc_sealers", (), _domains),
    )
    from gateway.config.units import parse_size
    c["max_size"] = t.get("max_size", 0, parse_size)
    c["delete_after_import"] = t.get("delete_after_import", False, _bool)
    if t.has("delete_after_import") and kind != "pop3":
        t.error("delete_after_import", "only used with kind = \"pop3\" (other kinds move to success_folder)")
    c["authority"] = t.get("authority", GRAPH_LOGIN, _token_url).rstrip("/")
    if t.has("authority") and kind != "graph":
        t.error("authority", "only used with kind = \"graph\" (set oauth_token_url for imap/pop3)")
    c["oauth_device_url"] = t.get("oauth_device_url", "", _token_url)
    c["oauth_authorize_url"] = t.get("oauth_authorize_url", "", _token_url)
    if auth != "xoauth2":
        for k in ("oauth_device_url", "oauth_authorize_url"):
            if t.has(k):
                t.error(k, "only used with auth = \"xoauth2\"")
    since_raw = t.get("since", None)
    if since_raw is not None:
        try:
            c["since"], c["since_text"] = parse_date(since_raw), str(since_raw).strip()
        except ValueError as exc:
            t.error("since", str(exc))
    if not folder_ok(c["folder"]):
        t.error("folder", "must not be empty")
    if c["poll_interval"] < 1:
        t.error("poll_interval", "must be at least 1s")
    if c["ca_file"] and not os.path.isfile(c["ca_file"]):
        t.error("ca_file", f"file not found: {c['ca_file']}")
    if mailbox_kind:
        if not t.has("host"):
            t.error("host", f"required for kind = \"{kind}\"")
        if not c["username"]:
            t.error("username", f"required for kind = \"{kind}\"")
        for k in ("tenant", "user"):
            if t.has(k):
                t.error(k, "only used with kind = \"graph\"")
        if t.has("endpoint"):
            t.error("endpoint", "only used with kind = \"graph\"")
        if kind == "pop3":
            if c["folder"] != "INBOX":
                t.error("folder", "POP3 has only the inbox (folder = \"INBOX\")")
            for k in ("success_folder", "failure_folder", "exclusion_folder"):
                if c[k]:
                    t.error(k, "POP3 has no folders: leave it \"\" (see docs/sources.md, POP3)")
            if t.has("idle") and c["idle"]:
                t.error("idle", "POP3 has no IDLE: the source polls every poll_interval")
    else:
        for k in ("host", "port", "tls", "username"):
            if t.has(k):
                t.error(k, "not used with kind = \"graph\" (it talks HTTPS to endpoint)")
        for k in ("tenant", "user"):
            if not c[k]:
                t.error(k, "required for kind = \"graph\"")
    for k in ("success_folder", "failure_folder", "exclusion_folder"):
        if c[k] and c[k] == c["folder"]:
            t.error(k, f"must differ from folder ({c['folder']!r}): a message moved there would be fetched again")
    password = ""
    password_file = None
    if auth == "password":
        password, password_file = _read_secret(t, "password_file", "password_env", "password", required=mailbox_kind)
        for k in OAUTH_KEYS:
            if t.has(k):
                t.error(k, "only used with auth = \"xoauth2\"")
                t.used.add(k)
        if tls == "none" and mailbox_kind and c["host"] not in ("127.0.0.1", "::1", "localhost"):
            t.error("tls", "would send the password in clear text: use tls = \"implicit\" or \"starttls\""
                           " (\"none\" only to a loopback address)")
    else:
        for k in ("password_file", "password_env"):
            if t.has(k):
                t.error(k, "only used with auth = \"password\"")
                t.used.add(k)
        oauth = _oauth(t, kind, c)
        c["oauth"] = oauth
    t.finish()
    if len(errors) != n0:
        return None
    return SourceConfig(password=password, password_file=password_file, **c)


def _oauth(t: Table, kind: str, c: dict[str, Any]) -> OAuthConfig | None:
    """The ``oauth_*`` keys, as [[relay.smarthost]] has them; Graph defaults the token URL (from
    ``tenant``) and the scope."""
    graph = kind == "graph"
    default_url = f"{c['authority']}/{c['tenant']}/oauth2/v2.0/token" if graph and c["tenant"] else ""
    if not graph and not t.has("oauth_token_url"):
        t.error("oauth_token_url", "required with auth = \"xoauth2\"")
    if not t.has("oauth_client_id"):
        t.error("oauth_client_id", "required with auth = \"xoauth2\"")
    url = t.get("oauth_token_url", default_url, _token_url)
    secret, _ = _read_secret(t, "oauth_client_secret_file", "oauth_client_secret_env", "client secret",  # type: ignore[arg-type]
                             required=False)
    pending = t.get("oauth_refresh_token_file", None, _nonempty)
    if pending and c["status"] == "draft" and not os.path.exists(pending):
        # `ticketmx source authorize NAME` writes it: a draft source may name a file that does not exist yet
        refresh, refresh_file = "", pending
    else:
        refresh, refresh_file = _read_secret(t, "oauth_refresh_token_file", "oauth_refresh_token_env",  # type: ignore[arg-type]
                                             "refresh token", required=False)
    if not secret and not refresh and c["status"] == "active":
        t.error("oauth_client_secret_file", "the client-credentials flow needs a client secret (or configure"
                " oauth_refresh_token_file: `ticketmx source authorize NAME` gets the first refresh token;"
                " status = \"draft\" until then)")
    scope = t.get("oauth_scope", f"{c['endpoint']}/.default" if graph else "", expect_str)
    return OAuthConfig(token_url=url, client_id=t.get("oauth_client_id", "", _nonempty), scope=scope,
                       client_secret=secret, refresh_token=refresh, refresh_token_file=refresh_file,
                       timeout=t.get("oauth_timeout", 15.0, _positive_duration),
                       verify_cert=c["verify_cert"], ca_file=c["ca_file"])


def folder_ok(name: str) -> bool:
    return bool(name.strip())
