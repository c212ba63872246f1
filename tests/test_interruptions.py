"""A crash counts against a message only when its own processing crashed the worker (issue 25, item 7).

Real `ticketmx serve` processes through tests/budget_serve.py, whose test-only ``spin`` stage is slow,
crashes its worker or kills the whole service on a trigger Subject. What must hold:

* the whole service SIGKILLed three times while a slow but harmless message is processed: a ticket,
  not "failed 3 times: processing crashed" (the stop is counted in ``interrupted``, the attempt refunded);
* a message that SIGKILLs its own worker is quarantined after ``max_attempts``, and the innocent message
  claimed in the same batch each time keeps its attempts (the busy slot names the culprit);
* a message that kills the whole service at every start is still quarantined, once ``interrupted``
  passes ``max_attempts``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, wait_port
from .test_budget import HARNESS, STAGE_LIST, BudgetServe, _send


class GroupServe(BudgetServe):
    """The served gateway in a process group of its own, so the test can kill all of it at once."""

    def start(self) -> "GroupServe":
        self.proc = subprocess.Popen([sys.executable, HARNESS, "serve", "--config", str(self.config)],
                                     cwd=ROOT, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_port(self.port)
        return self

    def kill_all(self) -> None:
        """SIGKILL to the main process and its workers (an OOM kill of the service's cgroup)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # all gone already (a message took it down)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid and stat[0] != "Z":
                return True
    return False


@pytest.fixture
def group_serve(tmp_path, dns_server):
    procs: list[GroupServe] = []
    dns_server.set_zone({})

    def make(**pipeline) -> GroupServe:
        p = GroupServe(tmp_path, dns_server.port, pipeline={"poll_interval": "200ms", "stages": STAGE_LIST,
                                                            "message_budget": "5s", **pipeline})
        procs.append(p)
        return p

    yield make
    for p in procs:
        if p.proc is not None:
            try:
                os.killpg(p.proc.pid, signal.SIGKILL)  # the resource tracker too, if it lingers
            except ProcessLookupError:
                pass
            p.proc.wait()


def test_three_whole_service_kills_around_a_slow_harmless_message_still_make_a_ticket(group_serve):
    srv = group_serve(processes=1).start()
    srv.wait_workers(1)
    (slow,) = _send(srv.port, ["slow-harmless report"])
    for kill in range(3):
        srv.wait_state(slow, ("processing",), timeout=20)
        time.sleep(1.0)  # inside its 3 s busy slice
        srv.kill_all()
        srv.start()
    done = srv.wait_state(slow, ("ticket_created", "quarantined"), timeout=30)
    assert done["state"] == "ticket_created", done["reason"]
    assert done["attempts"] == 1 and done["interrupted"] == 3, (done["attempts"], done["interrupted"])
    assert srv.log.read_text().count("recovered 1 spool entries left in processing by a previous run") == 3
    assert srv.stop() == 0


def test_a_message_that_crashes_its_worker_is_quarantined_and_its_batch_mates_are_not_charged(group_serve):
    srv = group_serve(processes=1, batch_wait="500ms", max_attempts=3).start()
    srv.wait_workers(1)
    crasher, innocent = _send(srv.port, ["crash-worker now", "an ordinary question"])
    bad = srv.wait_state(crasher, ("quarantined",), timeout=60)
    assert bad["reason"] == "failed 3 times: processing crashed", bad["reason"]
    assert bad["interrupted"] == 0
    good = srv.wait_state(innocent, ("ticket_created",), timeout=30)
    assert good["attempts"] == 1, good  # claimed with the crasher, refunded each time
    log = srv.log.read_text()
    assert log.count(f"{crasher} busy when it died (attempt counted)") >= 3, log[-4000:]
    assert srv.proc.poll() is None  # the service itself never went down
    assert srv.stop() == 0


def test_a_message_that_kills_the_whole_service_is_quarantined_after_max_attempts_interruptions(group_serve):
    srv = group_serve(processes=1, max_attempts=2).start()
    srv.wait_workers(1)
    (killer,) = _send(srv.port, ["crash-service please"])
    starts = 1
    deadline = time.monotonic() + 90
    while srv.cli_json("spool", "show", killer)["state"] != "quarantined":
        assert time.monotonic() < deadline and starts <= 6, starts
        if srv.proc.poll() is not None:  # it took the service down: start again, as systemd would
            srv.kill_all()  # (nothing is left; waits until the whole group is gone)
            srv.start()
            starts += 1
        time.sleep(0.1)
    entry = srv.wait_state(killer, ("quarantined",), timeout=30)
    assert entry["reason"] == "interrupted 3 times: the service stopped or crashed each time while processing it"
    assert starts == 4, starts  # three starts taken down, the fourth quarantines it
    (later,) = _send(srv.port, ["still working?"])
    assert srv.wait_state(later, ("ticket_created",), timeout=20)
    assert srv.stop() == 0
