"""Reading one TOML table of the configuration: its keys, their converters, leftovers reported.

A leaf under every config parser (gateway/config/load.py, gateway/config/relay.py): it imports only
gateway.config.errors, so a parser anywhere can use it without importing another parser.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from gateway.config.errors import ConfigError

T = TypeVar("T")


class Table:
    """Reads one TOML table, remembering which keys were used so leftovers are reported."""

    def __init__(self, data: Any, prefix: str, errors: list[ConfigError], file: str | None) -> None:
        self.prefix = prefix
        self.errors = errors
        self.file = file
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error("", "expected a table")
            data = {}
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix and name else (self.prefix or name)

    def error(self, name: str, message: str) -> None:
        self.errors.append(ConfigError(self.key(name), message, self.file))

    def get(self, name: str, default: T, convert: Callable[[Any], T] | None = None) -> T:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        try:
            return convert(value) if convert else value
        except (ValueError, TypeError, OSError) as exc:  # OSError: a converter that reads a file
            self.error(name, str(exc))
            return default

    def has(self, name: str) -> bool:
        return name in self.data

    def sub(self, name: str) -> "Table":
        self.used.add(name)
        return Table(self.data.get(name), self.key(name), self.errors, self.file)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                self.error(name, "unknown key")


def expect_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v
