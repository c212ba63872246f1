"""uvicorn's Server for servers that run as a task of a loop the gateway owns (the API, the metrics endpoint)."""
from __future__ import annotations

from typing import Any

import uvicorn


class QuietServer(uvicorn.Server):
    """uvicorn.Server minus its signal handling: the gateway owns SIGTERM/SIGINT/SIGHUP
    (``serve()`` of uvicorn 0.29+ swaps the process's handlers in ``capture_signals`` and re-raises
    the signal at exit; older versions call ``install_signal_handlers``). Both are no-ops here."""

    def capture_signals(self) -> Any:  # uvicorn >= 0.29
        import contextlib
        return contextlib.nullcontext()

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass
