"""`/console/static/{name}`: the console's own script and stylesheet (no external assets)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

__all__ = ["STATIC_FILES", "router"]

STATIC_DIR = Path(__file__).resolve().parent
STATIC_FILES = {"console.js": "text/javascript", "console.css": "text/css"}

router = APIRouter()


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(404, detail="no such file")
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])
