"""Cheaper per-connection setup for aiosmtpd's ``SMTP.__init__``.

aiosmtpd builds three lookup tables for every new connection: AUTH mechanisms through
``inspect.getmembers`` on the protocol and the handler, the handler's ``handle_*`` hooks and
its own ``smtp_*`` methods through ``dir()``, plus ``inspect.signature`` of ``handle_EHLO``.
That is about 250 us of CPU per connection (measured: ``python bench/perf.py --workload conn``
profiles), the same answer every time for the same classes.

:func:`install` gives aiosmtpd's module a ``dir`` and an ``inspect`` that remember the
answers per class, and a ``sanitized_log`` that skips its work when the logger would drop the
record (the members are still looked up on the new instance, so bound methods
are the new connection's). Only ``aiosmtpd.smtp``'s globals are touched; Python's own
``dir``/``inspect`` are unchanged everywhere else. ``tests/test_smtp_fastinit.py`` checks
that the tables come out identical.
"""
from __future__ import annotations

import inspect as _inspect
import logging
from typing import Any, Callable

import aiosmtpd.smtp as _smtp

_NAME_PREFIXES = ("auth_", "handle_", "smtp_")
_AUTH_NAME = ("auth_",)
_HOOK_NAME = _NAME_PREFIXES


def _has_own(obj: Any, prefixes: tuple[str, ...]) -> bool:
    """Whether the instance itself (not its class) has an attribute whose name starts with one of
    ``prefixes``: a few substring searches over its joined attribute names (an SMTP session has ~40
    by then) instead of a Python loop, twice per connection."""
    own = getattr(obj, "__dict__", None)
    if not own:
        return False
    try:
        joined = "\0" + "\0".join(own)
    except TypeError:  # a non-str key planted in __dict__: look at each
        return any(isinstance(k, str) and k.startswith(prefixes) for k in own)
    return any("\0" + p in joined for p in prefixes)


class _CachingInspect:
    """``inspect`` for aiosmtpd: ``getmembers`` limited to ``auth_*`` names (all aiosmtpd asks
    for) and ``signature`` remembered per function; every other name is ``inspect``'s own."""

    def __init__(self) -> None:
        self._members: dict[type, tuple[str, ...]] = {}
        self._signatures: dict[Any, _inspect.Signature] = {}

    def getmembers(self, obj: Any, predicate: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
        if predicate is not None or isinstance(obj, type) or _has_own(obj, _AUTH_NAME):
            return _inspect.getmembers(obj, predicate)  # unusual: the full answer
        names = self._members.get(type(obj))
        if names is None:
            names = tuple(n for n, _ in _inspect.getmembers(obj) if n.startswith("auth_"))  # sorted
            if len(self._members) < 256:
                self._members[type(obj)] = names
        return [(n, getattr(obj, n)) for n in names]

    def signature(self, fn: Any, *args: Any, **kwargs: Any) -> _inspect.Signature:
        if args or kwargs:
            return _inspect.signature(fn, *args, **kwargs)
        key = getattr(fn, "__func__", fn)
        sig = self._signatures.get(key)
        if sig is None:
            sig = _inspect.signature(fn)
            if len(self._signatures) < 256:
                self._signatures[key] = sig
        return sig

    def __getattr__(self, name: str) -> Any:
        return getattr(_inspect, name)


_DIR_CACHE: dict[type, list[str]] = {}


def _caching_dir(*args: Any) -> list[str]:
    """``dir(obj)`` remembered per class when the instance adds no hook/method names of its own.

    Only the names aiosmtpd filters for (``handle_*``, ``smtp_*``; both of its ``dir`` calls keep
    only one prefix) are kept: its comprehensions then look at ~20 names per connection instead of
    ~130 (about 20 µs per connection)."""
    if len(args) != 1:
        return dir(*args)
    obj = args[0]
    cls = type(obj)
    names = _DIR_CACHE.get(cls)
    if _has_own(obj, _HOOK_NAME):
        return dir(obj)  # instance-level hooks: never cached
    if names is None:
        names = [n for n in dir(obj) if n.startswith(_NAME_PREFIXES)]
        if len(_DIR_CACHE) < 256:
            _DIR_CACHE[cls] = names
    return list(names)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50, "exception": 40}


def _lazy_sanitized_log(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's ``sanitized_log`` (called twice for every command line) scrubs AUTH secrets from
    the arguments before it calls ``func``, even when ``func``'s logger drops the record anyway, as
    ours does ("mail.log" is at WARNING). Ask the logger first; when it would log, do exactly what
    aiosmtpd does."""
    logger = getattr(func, "__self__", None)
    level = _LEVELS.get(getattr(func, "__name__", ""))
    if level is not None and isinstance(logger, logging.Logger) and not logger.isEnabledFor(level):
        return
    _ORIGINAL_SANITIZED_LOG(func, msg, *args, **kwargs)


_ORIGINAL_SANITIZED_LOG = _smtp.sanitized_log


def install() -> None:
    """Idempotent."""
    _smtp.sanitized_log = _lazy_sanitized_log  # type: ignore[attr-defined]  # aiosmtpd.smtp's global only
    if not isinstance(getattr(_smtp, "inspect", None), _CachingInspect):
        _smtp.inspect = _CachingInspect()  # type: ignore[attr-defined]
    _smtp.dir = _caching_dir  # type: ignore[attr-defined]  # shadows the builtin in that module only
