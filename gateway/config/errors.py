"""Error types shared across the gateway."""
from __future__ import annotations


class ConfigError(Exception):
    """A bad configuration value; always names the dotted key (and the file when known)."""

    def __init__(self, key: str, message: str, file: str | None = None) -> None:
        self.key = key
        self.message = message
        self.file = file
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key}: {message}")


class ConfigErrors(Exception):
    """Several ConfigErrors found in one file (reported together)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
