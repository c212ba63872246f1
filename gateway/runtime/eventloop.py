"""Which asyncio event loop the service and its worker processes run on.

uvloop (libuv) makes the socket, timer and callback machinery of every SMTP session
cheaper than asyncio's selector loop; ``[smtp] event_loop`` picks it ("auto": when
importable). Everything else in ticketmx is plain asyncio and runs on either.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``choice`` ("auto", "uvloop", "asyncio"); None means asyncio's default."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def name() -> str:
    """The running loop's kind, for logs and metrics ("uvloop" or "asyncio")."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
