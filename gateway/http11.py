"""Reading one HTTP/1.1 response from an asyncio stream (status, headers, body).

Shared by the two tiny HTTP clients ticketmx needs (rspamd's /checkv2 and an OAuth2 token
endpoint): one request shape each, so a full HTTP library would only add dependencies.
"""
from __future__ import annotations

import asyncio


async def read_response(reader: asyncio.StreamReader, max_body: int) -> tuple[int, dict[str, str], bytes]:
    """Read status line, headers (lower-cased names) and a body (chunked, Content-Length or to EOF).

    Raises ValueError for a missing/bad status line or a body larger than ``max_body``."""
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad HTTP status line {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            if len(body) + size > max_body:
                raise ValueError("HTTP response too large")
            body += await reader.readexactly(size)
            await reader.readline()
        return status, headers, bytes(body)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > max_body:
            raise ValueError("HTTP response too large")
        return status, headers, await reader.readexactly(length)
    return status, headers, await reader.read(max_body)
