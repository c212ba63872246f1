"""The main process's supervisor of child processes (gateway/runtime/childgroup.py), with a real spawned
child on uvloop: big messages written both ways at the same moment must not deadlock. The pipes are
blocking (childlink.read_when_ready), so before the supervisor wrote big messages from a thread, the
main loop blocked writing to a child that was itself blocked writing to the main process, and neither
read again (it happens when an HTTP process sends a metrics snapshot while the main process answers
another /metrics)."""
from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from gateway.runtime.childgroup import Child, ChildGroup
from gateway.runtime.childlink import ParentLink

uvloop = pytest.importorskip("uvloop")
BIG = b"b" * (1024 * 1024)       # far over a socket buffer (~200 KiB)
ROUNDS = 4


def chatty_child(slot: int, conn: Any) -> None:
    """Spawned: says ready, then writes ROUNDS big notes at once while the parent writes big ones to it."""
    uvloop.run(_chatty(conn))


async def _chatty(conn: Any) -> None:
    got = 0
    done = asyncio.Event()

    def on_message(msg: tuple[Any, ...]) -> None:
        nonlocal got
        if msg[0] == "big" and len(msg[1]) == len(BIG):
            got += 1
            if got == ROUNDS:
                done.set()
    link = ParentLink(conn, on_message, done.set)
    link.send(("ready", os.getpid()))
    for _ in range(ROUNDS):
        link.send(("blob", BIG))
        await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 30)
    link.send(("got", got))
    await asyncio.sleep(30)  # until the parent stops us


class ChattyGroup(ChildGroup):
    label = "test"

    def __init__(self) -> None:
        super().__init__(None, 1, chatty_child, lambda: None)
        self.blobs = 0
        self.child_got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def child_args(self, slot: int, conn: Any) -> tuple[Any, ...]:
        return (slot, conn)

    def on_ready(self, child: Child) -> None:
        for _ in range(ROUNDS):          # while the child writes its own big notes
            self.send(child, ("big", BIG))
        self.send(child, ("small",))     # after the big ones, in order

    def handle(self, child: Child, msg: tuple[Any, ...]) -> None:
        if msg[0] == "blob":
            self.blobs += len(msg[1]) == len(BIG)
        elif msg[0] == "got" and not self.child_got.done():
            self.child_got.set_result(msg[1])


def test_big_messages_both_ways_at_once_do_not_deadlock() -> None:
    async def main() -> tuple[int, int, bool]:
        group = ChattyGroup()
        try:
            await group.start(timeout=30)
            got = await asyncio.wait_for(group.child_got, 40)
            return got, group.blobs, all(c.backlog == 0 for c in group.children.values())
        finally:
            await group.close(grace=1)
    got, blobs, drained = uvloop.run(main())
    assert got == ROUNDS and blobs == ROUNDS and drained
