"""Two-way mail tests: pure modules, no gateway started.

Corpus match rates recorded by the tests (``RATES``) are printed in the terminal summary,
so a plain ``pytest -q tests/twoway`` shows them.
"""
from __future__ import annotations

from typing import Any

RATES: dict[str, tuple[int, int, list[str]]] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RATES:
        return
    terminalreporter.section("quote-stripping corpus (talon fixtures)")
    total_ok = total = 0
    for name, (ok, n, misses) in sorted(RATES.items()):
        total_ok += ok
        total += n
        miss = f"  mismatches: {', '.join(misses)}" if misses else ""
        terminalreporter.write_line(f"{name:22} {ok}/{n}{miss}")
    terminalreporter.write_line(f"{'all':22} {total_ok}/{total} ({100 * total_ok / total:.1f}%)")
