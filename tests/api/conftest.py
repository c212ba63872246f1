"""The HTTP API against a real gateway on 127.0.0.1: ``api`` starts one with ``[http] listen`` on an
ephemeral port and creates tokens with the real ``ticketmx token create`` (a subprocess on the same
store); requests go over real HTTP with httpx."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx
import pytest

from ..conftest import BASE_CONFIG, ROOT, RunningGateway, merge, toml_dump

HTTP = {"http": {"listen": "127.0.0.1:0"}}


async def cli(config: Path, *args: str, check: bool = True) -> tuple[int, str, str]:
    """``ticketmx ARGS --config FILE`` as a subprocess, without blocking the gateway's loop."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, "--config", str(config),
                                                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env={**os.environ})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    code = proc.returncode
    if check and code != 0:
        raise AssertionError(f"ticketmx {' '.join(args)} exited {code}: {err.decode()}")
    return code, out.decode(), err.decode()


class Api:
    """A running gateway with its HTTP server, its config file, and token helpers."""

    def __init__(self, gw: RunningGateway, config: Path) -> None:
        self.gw = gw
        self.config = config
        assert gw.gw.http is not None
        self.base = f"http://127.0.0.1:{gw.gw.http.port}"

    @property
    def store(self) -> Any:
        return self.gw.store

    async def token(self, name: str, role: str, *queues: str) -> str:
        args = ["token", "create", "--name", name, "--role", role]
        for q in queues:
            args += ["--queue", q]
        _, out, _ = await cli(self.config, *args)
        return out.strip()

    def client(self, token: str | None = None, **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=10, **kw)


@pytest.fixture
async def start_api(start_gateway: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async def start(**sections: Any) -> Api:
        sections = merge(HTTP, sections)
        gw = await start_gateway(**sections)
        config = tmp_path / "ticketmx.toml"
        url = getattr(gw.store, "url", None) or f"sqlite:///{tmp_path}/ticketmx.db"  # PostgreSQL (tests/pg)
        data = merge(BASE_CONFIG, {"store": {"url": url}, **sections})
        data["http"] = {**data["http"], "listen": "127.0.0.1:0"}
        data.pop("metrics", None)
        config.write_text(toml_dump(data))
        return Api(gw, config)
    yield start


@pytest.fixture
async def api(start_api: Callable[..., Any]) -> Api:
    return await start_api()
