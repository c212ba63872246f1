"""Logging to stdout (journald picks it up): plain text or JSON lines, with the trace id."""
from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        trace = getattr(record, "trace_id", None)
        if trace:
            out["trace_id"] = trace
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace = getattr(record, "trace_id", None)
        return f"{line} [trace={trace}]" if trace else line


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every command at INFO: far too chatty for a busy MX.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # flufl.bounce logs a traceback whenever one of its heuristic detectors trips over odd mail.
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)
