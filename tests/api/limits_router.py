"""A test-only endpoint module with its own body limit for /api/v1/big/ (see test_api_server)."""
from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()
BODY_LIMITS = {"/big/": lambda cfg: 4 * cfg.http.max_body_size}


@router.post("/big/size", summary="bytes read")
async def big(request: Request) -> dict[str, int]:
    return {"read": len(await request.body())}


@router.post("/small/size", summary="bytes read")
async def small(request: Request) -> dict[str, int]:
    return {"read": len(await request.body())}
