"""A child process's end of its control pipe to the main process (SMTP processes, HTTP processes):
requests with replies (``await link.ask("kind", ...)``) and one-way notes, read on the running loop.

The parent answers a request with ``("reply", request id, value)``; anything else it sends is handed
to ``on_message``. When the pipe closes (the parent died or is stopping us) every waiting request
gets None and ``on_eof`` runs once.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import multiprocessing.connection
from typing import Any, Callable


def read_when_ready(loop: asyncio.AbstractEventLoop, conn: multiprocessing.connection.Connection,
                    callback: Callable[..., None], *args: Any) -> None:
    """``loop.add_reader`` for a control pipe, keeping the pipe in blocking mode.

    uvloop's add_reader turns the descriptor non-blocking, and a ``Connection`` is not made for that:
    ``recv`` of a message larger than what has arrived so far, or ``send`` of one larger than the free
    socket buffer, raises BlockingIOError mid-message — a /metrics exposition or a snapshot over ~64 KiB
    then broke the link (the HTTP process stopped, or a reply was dropped). In blocking mode, a reader
    woken by the loop reads the whole message the peer is writing, and a send completes: every
    message here is written in one go by a peer that reads its end from its own loop."""
    loop.add_reader(conn.fileno(), callback, *args)
    os.set_blocking(conn.fileno(), True)


class ParentLink:
    """The child's end of its control pipe: requests with replies, and one-way notes."""

    def __init__(self, conn: multiprocessing.connection.Connection,
                 on_message: Callable[[tuple[Any, ...]], None], on_eof: Callable[[], None]) -> None:
        self.conn = conn
        self.on_message = on_message
        self.on_eof = on_eof
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        read_when_ready(asyncio.get_running_loop(), conn, self._readable)

    def send(self, msg: tuple[Any, ...]) -> bool:
        if self.closed:
            return False
        try:
            self.conn.send(msg)
            return True
        except (OSError, EOFError):
            self._lost()
            return False

    async def ask(self, *msg: Any) -> Any:
        """Send ``msg`` with a request id; the parent's answer, or None when it is gone."""
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        if not self.send((msg[0], rid, *msg[1:])):
            self._waiting.pop(rid, None)
            return None
        return await fut

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if msg[0] == "reply":
                    fut = self._waiting.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg[2])
                else:
                    self.on_message(msg)
        except (EOFError, OSError):
            self._lost()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
        except (ValueError, OSError):
            pass
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result(None)
        self._waiting.clear()
        self.on_eof()
