"""The control pipe between the main process and its children (gateway/runtime/childlink.py) under uvloop:
messages far larger than a socket buffer (a /metrics exposition, a metrics snapshot) cross it whole in both
directions. uvloop's add_reader makes the descriptor non-blocking, which broke a ``Connection`` mid-message
(BlockingIOError): the link was lost and the HTTP process stopped when /metrics grew past ~64 KiB."""
from __future__ import annotations

import asyncio
import multiprocessing
import threading

import pytest

from gateway.runtime.childlink import ParentLink, read_when_ready

uvloop = pytest.importorskip("uvloop")
BIG = b"m" * (3 * 1024 * 1024)


def test_big_messages_cross_the_link_both_ways_under_uvloop() -> None:
    parent, child = multiprocessing.Pipe(duplex=True)
    got: list[tuple] = []

    def parent_side() -> None:          # the main process's end, as a plain blocking peer (another thread)
        msg = parent.recv()             # the child's big note
        got.append(("note", len(msg[1])))
        kind, rid = parent.recv()       # then its request
        parent.send(("reply", rid, BIG + b"!"))

    async def main() -> tuple[int, bool]:
        lost = asyncio.Event()
        link = ParentLink(child, lambda m: None, lost.set)
        t = threading.Thread(target=parent_side)
        t.start()
        assert link.send(("metrics", BIG))
        answer = await asyncio.wait_for(link.ask("render"), 20)
        await asyncio.get_running_loop().run_in_executor(None, t.join, 10)
        return len(answer or b""), lost.is_set()
    n, lost = uvloop.run(main())
    assert got == [("note", len(BIG))]
    assert n == len(BIG) + 1 and not lost


def test_the_main_side_reader_gets_a_big_message_whole() -> None:
    a, b = multiprocessing.Pipe(duplex=True)
    seen: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def readable() -> None:
            while a.poll():
                seen.append(len(a.recv()[1]))
                done.set()
        read_when_ready(loop, a, readable)
        threading.Thread(target=b.send, args=(("metrics", BIG),)).start()
        await asyncio.wait_for(done.wait(), 20)
        loop.remove_reader(a.fileno())
    uvloop.run(main())
    assert seen == [len(BIG)]
