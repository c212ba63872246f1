"""Logging to stdout (journald picks it up): plain text or JSON lines, with the trace id."""
from __future__ import annotations

import json
import logging
import re
import sys
import time

# Control characters (but TAB and LF: multi-line records such as tracebacks and the audit log's header
# section keep their lines), DEL, C1 controls and lone surrogates (undecodable client bytes kept by
# surrogateescape). Clients put bytes like these in commands and headers; raw, a CR or an ESC sequence
# rewrites what an operator sees in a terminal, and a lone surrogate cannot even be written as UTF-8.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group())
    if 0xDC80 <= c <= 0xDCFF:  # surrogateescape of the byte c - 0xDC00
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every unsafe character written as ``\\xNN`` (one C-level search when there is none)."""
    return _UNSAFE.sub(_escape_char, text) if _UNSAFE.search(text) else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": escape_controls(record.getMessage()),
        }
        trace = getattr(record, "trace_id", None)
        if trace:
            out["trace_id"] = trace
        if record.exc_info:
            out["exc"] = escape_controls(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = escape_controls(super().format(record))
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
