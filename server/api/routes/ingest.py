"""`/api/ingest/stats`: the counters of this process's MQTT ingest worker (viewer).

503 when this server process runs no ingest worker.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException

from server.api.deps import IngestDep, ViewerDep

__all__ = ["router"]

router = APIRouter(prefix="/api/ingest", tags=["fleet"])


@router.get("/stats")
def ingest_stats(_user: ViewerDep, ingest: IngestDep) -> dict[str, Any]:
    if ingest is None:
        raise HTTPException(503, detail="no MQTT ingest runs in this server process")
    return asdict(ingest.stats())
