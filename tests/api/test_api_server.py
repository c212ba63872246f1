"""The HTTP server core: tokens from the CLI, 401/403, problem+json for every error, limits."""
from __future__ import annotations

import asyncio
import json

import httpx

from gateway.http.tokens import token_digest as tokens_digest

from .conftest import Api, cli

PROBLEM = "application/problem+json"


def assert_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"] == "about:blank", body
    return body


async def test_token_from_cli_authenticates_over_http(api: Api) -> None:
    token = await api.token("ops", "admin")
    assert token.startswith("tmx_") and len(token) > 40
    async with api.client(token) as c:
        r = await c.get("/api/v1/me")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "ops", "role": "admin", "queues": []}
    # Only the hash is stored: the token's text is nowhere in the database file.
    files = [api.config.parent / name for name in ("ticketmx.db", "ticketmx.db-wal")]
    stored = b"".join(f.read_bytes() for f in files if f.exists())
    assert token.encode() not in stored and tokens_digest(token).encode() in stored


async def test_without_or_with_a_bad_token_401(api: Api) -> None:
    async with api.client() as c:
        r = await c.get("/api/v1/me")
        body = assert_problem(r, 401)
        assert "Bearer" in r.headers["www-authenticate"]
        assert "Authorization: Bearer" in body["detail"]
        r = await c.get("/api/v1/me", headers={"Authorization": "Bearer tmx_nope"})
        assert assert_problem(r, 401)["detail"] == "unknown or revoked API token"
        r = await c.get("/api/v1/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert_problem(r, 401)


async def test_role_below_the_endpoint_403(api: Api) -> None:
    token = await api.token("watcher", "viewer")
    async with api.client(token) as c:
        assert (await c.get("/api/v1/me")).status_code == 200
        body = assert_problem(await c.get("/api/v1/audit"), 403)
    assert "admin" in body["detail"] and "viewer" in body["detail"]


async def test_revoked_token_401_at_once(api: Api) -> None:
    token = await api.token("temp", "admin")
    async with api.client(token) as c:
        assert (await c.get("/api/v1/me")).status_code == 200
        await cli(api.config, "token", "revoke", "temp")
        assert_problem(await c.get("/api/v1/me"), 401)
    code, _, err = await cli(api.config, "token", "revoke", "temp", check=False)
    assert code == 1 and "no active token" in err
    _, out, _ = await cli(api.config, "token", "list", "--json")
    (row,) = json.loads(out)
    assert row["name"] == "temp" and row["revoked"] and row["last_used"]
    code, _, err = await cli(api.config, "token", "create", "--name", "temp", "--role", "viewer", check=False)
    assert code == 1 and "exists" in err


async def test_token_commands_are_audited(api: Api) -> None:
    token = await api.token("root", "admin", "IT")
    await cli(api.config, "token", "revoke", "root")
    admin = await api.token("root2", "admin")
    async with api.client(admin) as c:
        r = await c.get("/api/v1/audit", params={"target": "root"})
    assert r.status_code == 200, r.text
    actions = [(row["action"], row["target"], row["client"]) for row in r.json()["items"]]
    assert actions == [("token.revoke", "root", "local"), ("token.create", "root", "local")]
    assert r.json()["items"][1]["detail"] == {"role": "admin", "queues": ["IT"]}
    assert r.json()["items"][1]["actor"].startswith("cli:")
    assert token  # printed once


async def test_errors_are_problem_json(api: Api) -> None:
    token = await api.token("ops", "admin")
    async with api.client(token) as c:
        body = assert_problem(await c.get("/api/v1/nothing-here"), 404)
        assert "/api/v1/nothing-here" in body["detail"]
        assert_problem(await c.delete("/api/v1/me"), 405)
        body = assert_problem(await c.get("/api/v1/audit", params={"limit": "many"}), 422)
        assert body["errors"][0]["loc"] == ["query", "limit"] and "limit" in body["detail"]
        body = assert_problem(await c.get("/api/v1/audit", params={"since": "last tuesday"}), 422)
        assert body["detail"].startswith("since:")


async def test_body_over_the_limit_413_before_reading_it(start_api) -> None:
    api = await start_api(http={"max_body_size": "2KiB"})
    token = await api.token("ops", "admin")
    async with api.client(token) as c:
        body = assert_problem(await c.post("/api/v1/me", content=b"x" * 4096), 413)
        assert "max_body_size" in body["detail"]
        # under the limit: the route answers (405: /me takes no POST)
        assert_problem(await c.post("/api/v1/me", content=b"z" * 100), 405)


async def test_rate_limit_per_token_429_with_retry_after(start_api) -> None:
    api = await start_api(http={"rate_per_token": "3/1m"})
    one, two = await api.token("one", "viewer"), await api.token("two", "viewer")
    async with api.client(one) as c:
        for _ in range(3):
            assert (await c.get("/api/v1/me")).status_code == 200
        r = await c.get("/api/v1/me")
        body = assert_problem(r, 429)
        assert 1 <= int(r.headers["retry-after"]) <= 60 and "rate_per_token" in body["detail"]
    async with api.client(two) as c:  # per token: the other one is not limited
        assert (await c.get("/api/v1/me")).status_code == 200


async def test_connection_cap_and_header_timeout(start_api) -> None:
    # processes = 0: the counters read below live in the server object (an HTTP process has its own)
    api = await start_api(http={"max_connections": 2, "header_timeout": "500ms", "processes": 0})
    port = api.gw.gw.http.port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await asyncio.wait_for(reader.read(), 5)  # answered and closed without sending anything
    assert answer.startswith(b"HTTP/1.1 503") and b"max_connections" in answer
    writer.close()
    # The two silent connections are closed by the header timeout (without a word: nothing was
    # asked), freeing their slots.
    for r, w in held:
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
    assert api.gw.gw.http.refused == 1 and api.gw.gw.http.timed_out == 2
    async with api.client() as c:
        assert (await c.get("/healthz")).text == "ok\n"


async def test_trickled_headers_are_cut_at_the_header_timeout(start_api) -> None:
    api = await start_api(http={"header_timeout": "500ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", api.gw.gw.http.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")

    async def trickle() -> None:  # a byte every 100 ms: each one would reset an idle timer
        for _ in range(30):
            await asyncio.sleep(0.1)
            writer.write(b"X")
    task = asyncio.create_task(trickle())
    data = await asyncio.wait_for(reader.read(200), 5)
    assert data.startswith(b"HTTP/1.1 408"), data
    task.cancel()
    writer.close()


async def test_health_ready_and_metrics_on_the_http_port(api: Api) -> None:
    async with api.client() as c:
        assert (await c.get("/healthz")).text == "ok\n"
        assert (await c.get("/readyz")).text == "ready\n"
        r = await c.get("/metrics")
        assert r.status_code == 200 and "ticketmx_smtp_sessions_total" in r.text
    # the [metrics] listen server keeps working beside it
    async with httpx.AsyncClient() as c:
        r = await c.get(f"http://127.0.0.1:{api.gw.metrics_port}/metrics")
        assert r.status_code == 200 and "ticketmx_smtp_sessions_total" in r.text


async def test_metrics_on_the_http_port_only_for_metrics_allow(start_api) -> None:
    """The UI's port may face agents on the internet: /metrics there answers only [http] metrics_allow
    (loopback and private networks by default), judged on the real client behind a trusted proxy."""
    api = await start_api(http={"trusted_proxies": ["127.0.0.1/32"]})
    async with api.client() as c:
        assert (await c.get("/metrics")).status_code == 200                              # 127.0.0.1 itself
        assert (await c.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})).status_code == 200
        r = await c.get("/metrics", headers={"X-Forwarded-For": "203.0.113.5"})            # a public client
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
        assert "metrics_allow" in r.json()["detail"] and "ticketmx_" not in r.text
        assert (await c.get("/healthz", headers={"X-Forwarded-For": "203.0.113.5"})).status_code == 200
    closed = await start_api(http={"metrics_allow": []})
    async with closed.client() as c:
        assert (await c.get("/metrics")).status_code == 403


async def test_no_delayed_ack_stall_between_head_and_body(api: Api) -> None:
    """uvicorn writes a response's head and body in two writes: without TCP_NODELAY on the accepted
    socket every response waited ~40 ms for the client's delayed ACK (p50 44 ms measured, now < 1 ms)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.gw.gw.http.port)
    times = []
    for _ in range(15):
        t0 = asyncio.get_running_loop().time()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        times.append(asyncio.get_running_loop().time() - t0)
    writer.close()
    times.sort()
    assert times[len(times) // 2] < 0.030, times


async def test_an_endpoint_module_sets_its_own_body_limit(start_api, monkeypatch) -> None:
    import gateway.http.server as server
    monkeypatch.setattr(server, "ROUTERS", (*server.ROUTERS, "tests.api.limits_router"))
    api = await start_api(http={"max_body_size": "2KiB", "processes": 0})  # the patch reaches this process only
    async with api.client() as c:
        r = await c.post("/api/v1/big/size", content=b"a" * 6000)
        assert r.status_code == 200 and r.json() == {"read": 6000}
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
        assert_problem(await c.post("/api/v1/big/size", content=b"a" * 9000), 413)
        assert_problem(await c.post("/api/v1/small/size", content=b"a" * 3000), 413)

        async def chunks():
            for _ in range(4):
                yield b"b" * 1000
        assert_problem(await c.post("/api/v1/small/size", content=chunks()), 413)  # counted while reading
        assert (await c.post("/api/v1/big/size", content=chunks())).json() == {"read": 4000}


async def test_bad_http_config_names_the_key(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[http]\nlisten = "nowhere"\nmax_body_size = "huge"\nrate_per_token = "lots"\ntimeout = "1s"\n')
    code, out, err = await cli(bad, "check-config", check=False)
    assert code == 78, (out, err)
    for key in ("http.listen", "http.max_body_size", "http.rate_per_token", "http.timeout: unknown key"):
        assert key in err, err


async def test_reload_applies_the_rate_limit_and_keeps_serving(api: Api) -> None:
    token = await api.token("ops", "admin")
    text = api.config.read_text().replace("[http]\n", '[http]\nrate_per_token = "1/1m"\n')
    api.config.write_text(text)
    assert api.gw.gw.reload(str(api.config))
    async with api.client(token) as c:
        assert (await c.get("/api/v1/me")).status_code == 200
        assert_problem(await c.get("/api/v1/me"), 429)


async def test_malformed_request_and_huge_headers_are_problems(start_api) -> None:
    api = await start_api(http={"processes": 0})  # bad_requests is counted in the server object
    reader, writer = await asyncio.open_connection("127.0.0.1", api.gw.gw.http.port)
    writer.write(b"NONSENSE\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and PROBLEM.encode() in head, data[:300]
    assert json.loads(body)["status"] == 400
    # Headers are limited to 64 KiB while incomplete: a larger block is refused by the read that passes
    # the limit (at the latest 64 KiB + one read of 256 KiB). The 400 is written, but the bytes the
    # client is still sending make the close a reset, which may reach the client before the answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", api.gw.gw.http.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 600_000 + b"\r\n\r\n")
    try:
        data = await asyncio.wait_for(reader.read(), 5)
        assert data == b"" or data.startswith(b"HTTP/1.1 400"), data[:200]
    except ConnectionResetError:
        pass
    writer.close()
    assert api.gw.gw.http.bad_requests == 2
