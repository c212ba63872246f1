"""PROVISIONAL copy of the shared interface (H7 owns it); replaced by H7's at the merge."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Fetched:
    key: str
    raw: bytes
    folder: str
    received: float | None


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str


class SourceError(Exception):
    """A source's server refused or failed; ``kind`` is the metric label (auth, connect, protocol, ...)."""

    def __init__(self, kind: str, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.temporary = temporary


class Source(Protocol):
    cfg: Any

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def keys(self) -> list[str]: ...
    async def fetch(self, key: str) -> Fetched: ...
    async def settle(self, key: str, outcome: str) -> None: ...
    async def wait_for_new(self, timeout: float) -> None: ...
    async def test(self) -> list[Step]: ...
