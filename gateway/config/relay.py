"""The ``[relay]`` table: outbound notifications, smarthosts, DKIM keys.

``parse_relay_config(table, prefix="relay")`` validates the table and returns a frozen
:class:`RelayConfig`. Every unknown key and bad value is reported with its dotted key
(``relay.smarthost[1].tls``); all problems are collected, and the raised
:class:`RelayConfigError` (a :class:`gateway.config.errors.ConfigError` for the first one) carries
them all in ``.errors``.

Secrets (smarthost passwords, OAuth client secrets and refresh tokens) are read from a file
(``*_file``) or an environment variable (``*_env``) at load time, so ``check-config`` proves
they are readable; they are kept in fields excluded from ``repr``/``str``/equality and never
appear in logs, metrics or error text.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config.errors import ConfigError
from gateway.config.secretfile import exposure
from gateway.config.tomltable import Table, expect_str
from gateway.config.units import parse_duration

from gateway.config.schedule import parse_intervals, parse_skip_times


TLS_MODES = ("none", "starttls", "implicit")
AUTH_MODES = ("none", "plain", "login", "xoauth2")
DKIM_ALGOS = ("rsa", "ed25519")
DEFAULT_RETRY = "1m, 5m*2, 30m*3, 2h*10"
DEFAULT_ACK_LIMITS = ("10/10m", "25/1h")
DEFAULT_ACK_LIMITS_PER_IP = ("5/10m", "20/1h")
DEFAULT_ACK_LIMITS_GLOBAL = ("500/1h",)


class RelayConfigError(ConfigError):
    """The first problem found; ``errors`` lists every one (each a ConfigError with its key)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.key, first.message, first.file)
        self.errors = errors
        if len(errors) > 1:
            self.args = ("\n".join(str(e) for e in errors),)


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    token_url: str
    client_id: str
    scope: str = ""
    client_secret: str = field(default="", repr=False, compare=False)
    refresh_token: str = field(default="", repr=False, compare=False)
    refresh_token_file: str | None = None   # rotated refresh tokens are written back here
    timeout: float = 15.0
    verify_cert: bool = True
    ca_file: str | None = None

    @property
    def grant(self) -> str:
        """The grant this configuration sets up: delegated (a refresh token, given or to be written to
        its file by `source authorize` / the web UI) or the app's own client credentials. What a running
        provider uses at a given moment is TokenProvider.grant."""
        return "refresh_token" if self.refresh_token or self.refresh_token_file else "client_credentials"


@dataclass(frozen=True, slots=True)
class SmarthostConfig:
    name: str
    host: str
    port: int = 587
    tls: str = "starttls"
    auth: str = "none"
    username: str = ""
    password: str = field(default="", repr=False, compare=False)
    timeout: float = 30.0
    max_tries: int = 3              # consecutive failed connections before the cool-off
    cooloff: float = 300.0          # circuit open this long, then one probe
    skip_times: tuple[tuple[int, int], ...] = ()
    verify_cert: bool = True
    ca_file: str | None = None
    throttle: float = 0.0           # messages per minute, 0 = unlimited
    concurrency: int = 4            # parallel connections
    idle_timeout: float = 30.0      # keep an idle connection this long for reuse
    messages_per_connection: int = 100
    allow_insecure_auth: bool = False
    oauth: OAuthConfig | None = None


@dataclass(frozen=True, slots=True)
class DkimKeyConfig:
    domain: str
    selector: str
    key_file: str
    algorithm: str = "rsa"
    private_key: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RelayConfig:
    from_addr: str = ""                 # "[relay] from": header From ("Name <addr>" or addr)
    envelope_from: str = ""             # MAIL FROM (default: the address of ``from``)
    hostname: str | None = None         # Message-ID domain, EHLO name, loop marker value
    loop_marker: str = "X-Ticketmx-Loop"
    retry: tuple[float, ...] = parse_intervals(DEFAULT_RETRY)
    max_lifetime: float = 5 * 86400.0
    poll_interval: float = 1.0
    lease: float = 600.0
    concurrency: int = 16
    batch_size: int = 64
    templates: str = "conf/templates"
    language: str = "en"
    ack_limits: tuple[tuple[int, float], ...] = ((10, 600.0), (25, 3600.0))          # per recipient
    # Backscatter brakes (issue 18): acknowledgements counted per SMTP client (IPv6 by /64) and in all,
    # so one client cannot make us mail many addresses. "COUNT/WINDOW" tiers like ack_limits; [] = none.
    ack_limits_per_ip: tuple[tuple[int, float], ...] = ((5, 600.0), (20, 3600.0))
    ack_limits_global: tuple[tuple[int, float], ...] = ((500, 3600.0),)
    ack_delay: float = 0.0
    coalesce: float = 0.0
    timezone: str = ""                   # skip windows: "" = the host's local time
    smarthosts: tuple[SmarthostConfig, ...] = ()
    dkim: tuple[DkimKeyConfig, ...] = ()

    @property
    def enabled(self) -> bool:
        """Notifications (acknowledgements included) go out once a smarthost is configured."""
        return bool(self.smarthosts)

    @property
    def from_address(self) -> str:
        return parseaddr(self.from_addr)[1]

    @property
    def mail_from(self) -> str:
        return self.envelope_from or self.from_address

    @property
    def ack_horizon(self) -> float:
        """How long acknowledgement counter rows matter (the longest window of the three limits)."""
        return max((w for tiers in (self.ack_limits, self.ack_limits_per_ip, self.ack_limits_global)
                    for _, w in tiers), default=3600.0)

    def tz(self) -> ZoneInfo | None:
        return ZoneInfo(self.timezone) if self.timezone else None

    def smarthost(self, name: str) -> SmarthostConfig | None:
        return next((h for h in self.smarthosts if h.name == name), None)

    def dkim_key(self, domain: str) -> DkimKeyConfig | None:
        domain = domain.lower().rstrip(".")
        return next((k for k in self.dkim if k.domain == domain), None)


# -- the table reader ---------------------------------------------------------------------------

class _T(Table):
    """gateway.config.tomltable's table reader (unknown keys and bad values name the dotted key), fileless."""

    def __init__(self, data: Any, prefix: str, errors: list[ConfigError]) -> None:
        super().__init__(data, prefix, errors, None)


SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_templates_dir(path: str) -> str | None:
    """The directory ``[relay] templates`` names: as given (a relative path from the working
    directory), else a relative path inside the source tree (``conf/templates``); None when neither
    is a directory - then every notification would fail at send time, so the config is refused."""
    if os.path.isdir(path):
        return path
    if not os.path.isabs(path):
        alt = os.path.join(SOURCE_ROOT, path)
        if os.path.isdir(alt):
            return alt
    return None


def _templates_dir(v: Any) -> str:
    s = _nonempty(v)
    if resolve_templates_dir(s) is None:
        raise ValueError(f"not a directory: {s} (copy the shipped conf/templates there, or fix the path)")
    return s


def _nonempty(v: Any) -> str:
    s = expect_str(v).strip()
    if not s:
        raise ValueError("must not be empty")
    return s


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {type(v).__name__}")
    return v


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"expected an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return v
    return conv


def _number(lo: float) -> Callable[[Any], float]:
    def conv(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"expected a number, got {type(v).__name__}")
        if v < lo:
            raise ValueError(f"must be >= {lo}")
        return float(v)
    return conv


def _positive_duration(v: Any) -> float:
    d = parse_duration(v)
    if d <= 0:
        raise ValueError("must be > 0")
    return d


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = expect_str(v).lower()
        if s not in options:
            raise ValueError("expected one of " + ", ".join(f'"{o}"' for o in options))
        return s
    return conv


_ADDR = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z0-9-]+$")
_HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$|^[0-9a-fA-F:.]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _address(v: Any) -> str:
    s = _nonempty(v)
    if not _ADDR.match(s):
        raise ValueError(f"{s!r} is not an email address")
    local, _, domain = s.rpartition("@")
    return f"{local}@{domain.lower()}"


def _from(v: Any) -> str:
    s = _nonempty(v)
    if any(c in s for c in "\r\n\0"):
        raise ValueError("must not contain line breaks")
    name, addr = parseaddr(s)
    if not addr or not _ADDR.match(addr):
        raise ValueError(f"{s!r} is not an address (use \"Name <addr@domain>\" or \"addr@domain\")")
    return s


def _hostname(v: Any) -> str:
    s = _nonempty(v)
    if not _HOST.match(s):
        raise ValueError(f"{s!r} is not a host name or IP address")
    return s


def _domain(v: Any) -> str:
    s = _hostname(v).lower().rstrip(".")
    if "." not in s:
        raise ValueError(f"{s!r} is not a domain")
    return s


def _name(v: Any) -> str:
    s = _nonempty(v)
    if not _NAME.match(s):
        raise ValueError("use letters, digits, '.', '_' and '-' (at most 63)")
    return s


def _ack_limits(v: Any) -> tuple[tuple[int, float], ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError('expected a list like ["10/10m", "25/1h"]')
    out = []
    for item in v:
        count, sep, window = item.partition("/")
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"bad limit {item!r} (use \"COUNT/WINDOW\", e.g. \"10/10m\")")
        out.append((int(count), _positive_duration(window.strip())))
    return tuple(sorted(out, key=lambda t: t[1]))


def _timezone(v: Any) -> str:
    s = expect_str(v).strip()
    if s:
        try:
            ZoneInfo(s)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {s!r}") from exc
    return s


def _read_secret(t: _T, file_key: str, env_key: str, what: str, required: bool) -> tuple[str, str | None]:
    """(secret, file path) from ``file_key`` or ``env_key``; errors name the key."""
    path = t.get(file_key, None, _nonempty)
    env = t.get(env_key, None, _nonempty)
    if path and env:
        t.error(env_key, f"set {file_key} or {env_key}, not both")
        return "", None
    if path:
        why = exposure(path)
        if why:
            t.error(file_key, why)
            return "", path
        try:
            with open(path, encoding="utf-8") as fh:
                secret = fh.read().strip()
        except OSError as exc:
            t.error(file_key, f"cannot read {what} file {path}: {exc.strerror}")
            return "", path
        if not secret:
            t.error(file_key, f"{what} file {path} is empty")
        return secret, path
    if env:
        secret = os.environ.get(env, "")
        if not secret:
            t.error(env_key, f"environment variable {env} is not set or empty")
        return secret, None
    if required:
        t.error(file_key, f"{what} required (set {file_key} or {env_key})")
    return "", None


def _smarthost(data: Any, prefix: str, errors: list[ConfigError]) -> SmarthostConfig | None:
    t = _T(data, prefix, errors)
    n0 = len(errors)
    for req in ("name", "host"):
        if not t.has(req):
            t.error(req, "required")
    tls = t.get("tls", "starttls", _choice(TLS_MODES))
    default_port = {"none": 25, "starttls": 587, "implicit": 465}[tls]
    auth = t.get("auth", "none", _choice(AUTH_MODES))
    h = dict(
        name=t.get("name", "", _name),
        host=t.get("host", "", _hostname),
        port=t.get("port", default_port, _int(1, 65535)),
        tls=tls,
        auth=auth,
        username=t.get("username", "", _nonempty),
        timeout=t.get("timeout", 30.0, _positive_duration),
        max_tries=t.get("max_tries", 3, _int(1, 1000)),
        cooloff=t.get("cooloff", 300.0, _positive_duration),
        skip_times=t.get("skip_times", (), parse_skip_times),
        verify_cert=t.get("verify_cert", True, _bool),
        ca_file=t.get("ca_file", None, _nonempty),
        throttle=t.get("throttle", 0.0, _number(0)),
        concurrency=t.get("concurrency", 4, _int(1, 1000)),
        idle_timeout=t.get("idle_timeout", 30.0, parse_duration),
        messages_per_connection=t.get("messages_per_connection", 100, _int(1, 100000)),
        allow_insecure_auth=t.get("allow_insecure_auth", False, _bool),
    )
    if h["ca_file"] and not os.path.isfile(h["ca_file"]):
        t.error("ca_file", f"file not found: {h['ca_file']}")
    password = ""
    if auth in ("plain", "login"):
        if not h["username"]:
            t.error("username", f"required with auth = \"{auth}\"")
        password, _ = _read_secret(t, "password_file", "password_env", "password", required=True)
        if tls == "none" and not h["allow_insecure_auth"]:
            t.error("auth", "would send the password in clear text: use tls = \"starttls\" or \"implicit\""
                    " (or allow_insecure_auth = true for a loopback relay)")
    else:
        for k in ("password_file", "password_env"):
            if t.has(k):
                t.error(k, f"only used with auth = \"plain\" or \"login\" (auth is \"{auth}\")")
                t.used.add(k)
    oauth_keys = ("oauth_token_url", "oauth_client_id", "oauth_client_secret_file", "oauth_client_secret_env",
                  "oauth_scope", "oauth_refresh_token_file", "oauth_refresh_token_env", "oauth_timeout")
    oauth = None
    if auth == "xoauth2":
        if not h["username"]:
            t.error("username", "required with auth = \"xoauth2\" (the mailbox the token is for)")
        for req in ("oauth_token_url", "oauth_client_id"):
            if not t.has(req):
                t.error(req, "required with auth = \"xoauth2\"")
        url = t.get("oauth_token_url", "", _token_url)
        secret, _ = _read_secret(t, "oauth_client_secret_file", "oauth_client_secret_env", "client secret",
                                 required=False)
        refresh, refresh_file = _read_secret(t, "oauth_refresh_token_file", "oauth_refresh_token_env",
                                             "refresh token", required=False)
        if not secret and not refresh and len(errors) == n0:
            t.error("oauth_client_secret_file", "the client-credentials flow needs a client secret"
                    " (or configure oauth_refresh_token_file for the refresh-token flow)")
        if tls == "none" and not h["allow_insecure_auth"]:
            t.error("auth", "would send the token in clear text: use tls = \"starttls\" or \"implicit\"")
        oauth = OAuthConfig(token_url=url, client_id=t.get("oauth_client_id", "", _nonempty),
                            scope=t.get("oauth_scope", "", expect_str), client_secret=secret, refresh_token=refresh,
                            refresh_token_file=refresh_file,
                            timeout=t.get("oauth_timeout", 15.0, _positive_duration),
                            verify_cert=h["verify_cert"], ca_file=h["ca_file"])
    else:
        for k in oauth_keys:
            if t.has(k):
                t.error(k, f"only used with auth = \"xoauth2\" (auth is \"{auth}\")")
                t.used.add(k)
    t.finish()
    if len(errors) != n0:
        return None
    return SmarthostConfig(password=password, oauth=oauth, **h)


def _token_url(v: Any) -> str:
    s = _nonempty(v)
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", s):
        raise ValueError("expected an http(s):// URL")
    return s


def _dkim(data: Any, prefix: str, errors: list[ConfigError]) -> DkimKeyConfig | None:
    t = _T(data, prefix, errors)
    n0 = len(errors)
    for req in ("domain", "selector", "key_file"):
        if not t.has(req):
            t.error(req, "required")
    domain = t.get("domain", "", _domain)
    selector = t.get("selector", "", _name)
    key_file = t.get("key_file", "", _nonempty)
    algorithm = t.get("algorithm", "", _choice(DKIM_ALGOS))
    key = b""
    if key_file and (why := exposure(key_file)):
        t.error("key_file", why)
    elif key_file:
        try:
            with open(key_file, "rb") as fh:
                key = fh.read()
        except OSError as exc:
            t.error("key_file", f"cannot read {key_file}: {exc.strerror}")
        else:
            if not key.strip():
                t.error("key_file", f"{key_file} is empty: not a DKIM private key")
                key = b""
    if key:
        detected = "rsa" if b"-----BEGIN" in key else "ed25519"
        if algorithm and algorithm != detected:
            t.error("algorithm", f"{key_file} holds an {detected} key")
        algorithm = detected
        try:
            from gateway.config.dkimkey import load_private_key
            load_private_key(key, algorithm)
        except ValueError as exc:
            t.error("key_file", f"{key_file} is not a DKIM private key (PEM RSA, or the base64 ed25519 seed"
                    f" `ticketmx dkim keygen` writes): {exc}")
    t.finish()
    if len(errors) != n0:
        return None
    return DkimKeyConfig(domain=domain, selector=selector, key_file=key_file, algorithm=algorithm or "rsa",
                         private_key=key)


def parse_relay_config(table: dict[str, Any] | None, prefix: str = "relay") -> RelayConfig:
    """Validate the ``[relay]`` table; raises :class:`RelayConfigError` listing every problem."""
    errors: list[ConfigError] = []
    t = _T(table or {}, prefix, errors)
    d = RelayConfig()
    cfg: dict[str, Any] = dict(
        from_addr=t.get("from", "", _from),
        envelope_from=t.get("envelope_from", "", _address),
        hostname=t.get("hostname", None, _hostname),
        loop_marker=t.get("loop_marker", d.loop_marker, _nonempty),
        retry=t.get("retry", d.retry, parse_intervals),
        max_lifetime=t.get("max_lifetime", d.max_lifetime, _positive_duration),
        poll_interval=t.get("poll_interval", d.poll_interval, _positive_duration),
        lease=t.get("lease", d.lease, _positive_duration),
        concurrency=t.get("concurrency", d.concurrency, _int(1, 10000)),
        batch_size=t.get("batch_size", d.batch_size, _int(1, 10000)),
        templates=t.get("templates", d.templates, _templates_dir),
        language=t.get("language", d.language, _nonempty),
        ack_limits=t.get("ack_limits", d.ack_limits, _ack_limits),
        ack_limits_per_ip=t.get("ack_limits_per_ip", d.ack_limits_per_ip, _ack_limits),
        ack_limits_global=t.get("ack_limits_global", d.ack_limits_global, _ack_limits),
        ack_delay=t.get("ack_delay", d.ack_delay, parse_duration),
        coalesce=t.get("coalesce", d.coalesce, parse_duration),
        timezone=t.get("timezone", d.timezone, _timezone),
    )
    if not re.match(r"^[A-Za-z][A-Za-z0-9-]*$", cfg["loop_marker"]):
        t.error("loop_marker", "must be a header field name")

    hosts: list[SmarthostConfig] = []
    raw = t.get("smarthost", [], None)
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        t.error("smarthost", "expected an array of tables ([[relay.smarthost]])")
        raw = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        h = _smarthost(item, f"{prefix}.smarthost[{i}]", errors)
        if h is None:
            continue
        if h.name in names:
            errors.append(ConfigError(f"{prefix}.smarthost[{i}].name", f"{h.name!r} is used twice"))
        names.add(h.name)
        hosts.append(h)

    keys: list[DkimKeyConfig] = []
    raw = t.get("dkim", [], None)
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        t.error("dkim", "expected an array of tables ([[relay.dkim]])")
        raw = []
    for i, item in enumerate(raw):
        k = _dkim(item, f"{prefix}.dkim[{i}]", errors)
        if k is None:
            continue
        if any(o.domain == k.domain for o in keys):
            errors.append(ConfigError(f"{prefix}.dkim[{i}].domain", f"{k.domain!r} has a key already"))
        keys.append(k)

    if (raw_list := t.data.get("smarthost")) and not cfg["from_addr"] and "from" not in t.data:
        t.error("from", "required when a smarthost is configured (e.g. \"Helpdesk <help@example.com>\")")
    del raw_list
    t.finish()
    if errors:
        raise RelayConfigError(errors)
    return RelayConfig(smarthosts=tuple(hosts), dkim=tuple(keys), **cfg)


__all__ = ["RelayConfig", "SmarthostConfig", "OAuthConfig", "DkimKeyConfig", "RelayConfigError",
           "parse_relay_config", "TLS_MODES", "AUTH_MODES"]
