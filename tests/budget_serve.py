"""``ticketmx`` with a test-only pipeline stage, ``spin``, for the message-budget tests.

Run as a script (``python tests/budget_serve.py serve --config …``): it registers the stage in
``gateway.config.pipeline.STAGES`` here AND in the spawned pipeline worker processes, which import this
file as their ``__mp_main__`` — no hook in the product. Subjects that trigger it:

* ``spin-forever``: a pure-Python loop that never ends (what a super-linear parser looks like from
  outside: no await, no exception, nothing asyncio can interrupt);
* ``spin-slices``: busy 100 ms slices with an ``await`` between them, without end (the worker's
  cooperative check between slices stops it, no kill needed);
* ``slow-harmless``: busy for 3 s in one slice, then done (under a 5 s budget: slow, not hostile);
* ``crash-worker``: the worker process SIGKILLs itself (what a segfault or an OOM kill of one worker is);
* ``crash-service``: SIGKILLs the main process, then itself (an OOM kill of the whole service).
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class SpinStage:
    name = "spin"

    async def run(self, msg, ctx):  # noqa: ANN001, ANN201 - the Stage protocol
        from gateway.pipeline.stages.core import Verdict
        subject = msg.parsed.subject
        if "spin-forever" in subject:
            while True:
                pass
        if "slow-harmless" in subject:
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                pass
        if "crash-worker" in subject:
            os.kill(os.getpid(), signal.SIGKILL)
        if "crash-service" in subject:
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        if "spin-slices" in subject:
            while True:
                end = time.monotonic() + 0.1
                while time.monotonic() < end:
                    pass
                await asyncio.sleep(0)
        return Verdict()


def register() -> None:
    from gateway.config.pipeline import STAGES
    STAGES[SpinStage.name] = SpinStage


if __name__ in ("__main__", "__mp_main__"):
    sys.path.insert(0, str(ROOT))
    register()

if __name__ == "__main__":
    from gateway.cli import main
    sys.exit(main(sys.argv[1:]))
