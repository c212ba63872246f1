"""The OpenAPI 3.1 document at /api/v1/openapi.json matches the code: every route the app serves is in
it with its methods, every operation says how it authenticates and what its errors look like."""
from __future__ import annotations

from typing import Any, Iterator

from fastapi.routing import APIRoute

from .conftest import Api

# Routes FastAPI adds to serve the document itself (not API operations).
SELF = {"/api/v1/openapi.json", "/api/v1/docs"}


def is_ui(path: str) -> bool:
    """The web UI's pages (docs/ui.md) share the app but are not API operations."""
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def walk(routes: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full path, route) of every route the app serves, routers included. FastAPI >= 0.16x keeps an
    included router as one entry (``original_router`` + ``include_context.prefix``) instead of copying
    its routes into the app; older versions copy them (plain routes here)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from walk(inner.routes, prefix + route.include_context.prefix)
        else:
            yield prefix + getattr(route, "path", ""), route


async def test_openapi_lists_every_route(api: Api) -> None:
    async with api.client() as c:
        r = await c.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] == "ticketmx"
    app = api.gw.gw.http.app
    served: set[tuple[str, str]] = set()
    for path, route in walk(app.routes):
        if path in SELF or is_ui(path):
            continue
        assert isinstance(route, APIRoute), f"{path}: not an APIRoute, so not documented"
        for method in route.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served, "no routes"
    assert served == documented, (served - documented, documented - served)
    # the admin endpoints this part promises
    for path, method in [("/api/v1/messages", "get"), ("/api/v1/messages/{spool_id}", "get"),
                         ("/api/v1/messages/{spool_id}", "delete"), ("/api/v1/messages/{spool_id}/raw", "get"),
                         ("/api/v1/messages/{spool_id}/replay", "post"),
                         ("/api/v1/messages/{spool_id}/release", "post"), ("/api/v1/trace", "get"),
                         ("/api/v1/relay/queue", "get"), ("/api/v1/relay/{mail_id}/retry", "post"),
                         ("/api/v1/audit", "get"), ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get")]:
        assert (path, method) in documented and (path, method) in served


async def test_authenticated_operations_declare_bearer_and_errors(api: Api) -> None:
    async with api.client() as c:
        doc = (await c.get("/api/v1/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API token from `ticketmx token create`."}
    for path, ops in doc["paths"].items():
        if not path.startswith("/api/v1/") or path.startswith("/api/v1/inbound/"):
            continue
        for method, op in ops.items():
            assert op.get("security") == [{"HTTPBearer": []}], (path, method)
            assert {"401", "403", "429"} <= set(op["responses"]), (path, method)
            assert "summary" in op, (path, method)
