"""The UI's metrics on the real /metrics of a real `ticketmx serve`: the HTTP server runs in its own child
process (ticketmx-http1), so the samples travel the way every HTTP-side metric does (the main process
adds up the children's). Requests are real HTTP page loads and sign-ins; labels are route templates."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..api.test_api_serve import _children
from ..conftest import ROOT, free_port, wait_port
from ..test_serve import serve  # noqa: F401 - the fixture
from .conftest import PASSWORD

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def samples(text: str, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == family or fam.name + "_total" == family:
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def signin(c: httpx.Client, email: str, password: str, csrf: bool = True) -> int:
    form = c.get("/ui/signin").text
    token = CSRF.search(form).group(1) if csrf else "forged"
    return c.post("/ui/signin", data={"email": email, "password": password, "csrf": token,
                                      "next": "/ui/tickets"}).status_code


def test_ui_metrics_reach_the_real_metrics_endpoint(serve) -> None:  # noqa: F811
    http_port = free_port()
    p = serve(http={"listen": f"127.0.0.1:{http_port}"}, ui={"signin_rate_per_account": "2/15m"}).start()
    wait_port(http_port)
    for email, role in (("ann@staff.test", "agent"), ("gone@staff.test", "agent")):
        r = subprocess.run([sys.executable, "-m", "gateway", "user", "add", "--email", email, "--role", role,
                            "--config", str(p.config)], input=PASSWORD + "\n", capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
    p.cli("user", "disable", "gone@staff.test")
    assert p.proc is not None and "ticketmx-http1" in _children(p.proc.pid).values()   # a child serves HTTP
    base = f"http://127.0.0.1:{http_port}"
    with httpx.Client(base_url=base, timeout=20) as agent, httpx.Client(base_url=base, timeout=20) as other:
        assert signin(other, "ann@staff.test", "wrong password!") == 401
        assert signin(other, "nobody@staff.test", PASSWORD) == 401          # unknown: counted as bad_password
        assert signin(other, "gone@staff.test", PASSWORD) == 401            # disabled: likewise
        assert signin(other, "ann@staff.test", "wrong again!!") == 401
        assert signin(other, "ann@staff.test", PASSWORD) == 429             # 2 failures: the account's limit
        assert signin(other, "bob@staff.test", PASSWORD, csrf=False) == 403
        assert signin(agent, "carol@staff.test", "x" * 12) == 401
        assert signin(agent, "gone@staff.test", "nope nope nope") == 401
        assert agent.get("/ui/tickets").status_code == 303                  # not signed in: to the sign-in page
        assert other.get("/ui/tickets/HD-1").status_code == 303
        assert agent.get("/ui/tickets/HD-999999").status_code == 303
        assert agent.get("/ui/no/such/page").status_code == 404
        assert agent.get("/ui/static/ui.css").status_code == 200
        assert agent.get("/healthz").status_code == 200                     # not a UI path: not counted
    # one good sign-in, then pages as the agent
    with httpx.Client(base_url=base, timeout=20) as ok:
        subprocess.run([sys.executable, "-m", "gateway", "user", "add", "--email", "eve@staff.test", "--role",
                        "agent", "--config", str(p.config)], input=PASSWORD + "\n", capture_output=True,
                       text=True, cwd=ROOT, timeout=60, check=True)
        assert signin(ok, "eve@staff.test", PASSWORD) == 303
        for _ in range(3):
            assert ok.get("/ui/tickets").status_code == 200
        assert ok.get("/ui/tickets/HD-424242").status_code == 404
        assert ok.get("/ui/tickets/HD-434343").status_code == 404
    for url in (f"{base}/metrics", f"http://127.0.0.1:{p.metrics_port}/metrics"):
        r = httpx.get(url, timeout=20)
        assert r.status_code == 200, (url, r.text, time.sleep(1.5), p.log.read_text()[-4000:])
        text = r.text
        signins = {dict(k[1])["result"]: v for k, v in samples(text, "ticketmx_ui_signins_total").items()}
        assert signins == {"bad_password": 6.0, "rate_limited": 1.0, "expired_form": 1.0, "ok": 1.0}, signins
        req = {(dict(k[1])["route"], dict(k[1])["status"]): v
               for k, v in samples(text, "ticketmx_ui_requests_total").items()}
        assert req[("/ui/tickets", "200")] == 3.0, req
        assert req[("/ui/tickets/{number}", "404")] == 2.0, req                # two numbers, one label
        assert req[("/ui/tickets/{number}", "303")] == 2.0, req
        assert req[("other", "404")] == 1.0, req
        assert req[("/ui/static/{path}", "200")] == 1.0, req
        assert req[("/ui/signin", "401")] == 6.0 and req[("/ui/signin", "303")] == 1.0, req
        routes = {r for r, _ in req}
        assert not [r for r in routes if "HD-" in r or "no/such" in r or "ui.css" in r], routes
        assert "/healthz" not in routes and "/metrics" not in routes
        hist = samples(text, "ticketmx_ui_request_duration_seconds")
        count = next(v for (name, labels), v in hist.items()
                     if name.endswith("_count") and dict(labels) == {"route": "/ui/tickets"})
        assert count == 4.0 and req[("/ui/tickets", "303")] == 1.0
        inf = next(v for (name, labels), v in hist.items()
                   if name.endswith("_bucket") and dict(labels) == {"route": "/ui/tickets", "le": "+Inf"})
        assert inf == count
    assert p.stop() == 0, p.log.read_text()
