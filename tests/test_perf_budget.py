"""The CPU budget line of bench/perf.py: the arithmetic behind the throughput ratios of issue 9."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import perf  # noqa: E402


def test_budget_is_all_cores_less_the_clients_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "_cores", lambda: 2)
    # the client used 25 % of a core at 500 msgs/s: 0.5 ms of CPU per message, whatever the rate
    runs = [{"client_cpu_pct": 25.0, "msgs_per_s": 500.0}]
    assert perf.cpu_budget(1000.0, runs) == pytest.approx(2.0 - 0.5)
    assert perf.cpu_budget(500.0, runs) == pytest.approx(4.0 - 0.5)


def test_budget_uses_the_median_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "_cores", lambda: 2)
    runs = [{"client_cpu_pct": p, "msgs_per_s": 1000.0} for p in (10.0, 20.0, 90.0)]
    assert perf.cpu_budget(1000.0, runs) == pytest.approx(2.0 - 0.2)


def test_verdict_names_the_cut_needed() -> None:
    assert perf._budget_verdict(1.0, 2.0) == "needs 50 % less CPU per message"
    assert perf._budget_verdict(2.0, 1.5) == "within budget"
    assert perf._budget_verdict(-0.1, 1.5) == "no CPU left for the server at all"
