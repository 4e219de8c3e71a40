"""Liveness: ``GET /healthz`` answers while the process serves."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

__all__ = ["health"]

health = Blueprint("health", __name__)


@health.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}
