"""`/tuf/...`: the TUF repository as clients fetch it (metadata and consistent targets).

    GET /tuf/metadata/{N.}root.json | N.targets.json | N.snapshot.json | timestamp.json
    GET /tuf/targets/<dir>/<sha256>.<name>    (e.g. digits/3/<hash>.model.int8.onnx)

Both honour single-range `Range` requests (206, 416). Anything else is a 404; file names
are matched against a strict pattern, and artifacts are found by their hash alone, so no
request can reach a path outside the repository.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException, Request
from starlette.responses import FileResponse, Response

from server.api.deps import ArtifactStoreDep, SettingsDep
from server.api.http_range import bytes_response

__all__ = ["METADATA_FILENAME", "TARGET_FILENAME", "router"]

METADATA_FILENAME = re.compile(r"^(\d+\.)?(root|targets|snapshot|timestamp)\.json$")
TARGET_FILENAME = re.compile(
    r"^(?P<sha256>[0-9a-f]{64})\.(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$"
)
TARGET_DIR_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

router = APIRouter(prefix="/tuf", tags=["tuf"])


def _not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} not found")


@router.api_route("/metadata/{filename}", methods=["GET", "HEAD"])
def get_metadata(filename: str, request: Request, settings: SettingsDep) -> Response:
    if not METADATA_FILENAME.fullmatch(filename):
        raise _not_found("metadata file")
    try:
        data = (settings.tuf_dir / "metadata" / filename).read_bytes()
    except (FileNotFoundError, IsADirectoryError) as err:
        raise _not_found("metadata file") from err
    # Versioned files never change; timestamp.json and root.json do.
    versioned = filename[0].isdigit()
    cache = "public, max-age=31536000, immutable" if versioned else "no-store"
    return bytes_response(
        data, request.headers.get("range"), "application/json", {"cache-control": cache}
    )


@router.api_route("/targets/{target:path}", methods=["GET", "HEAD"])
def get_target(target: str, store: ArtifactStoreDep) -> Response:
    *dirs, filename = target.split("/")
    match = TARGET_FILENAME.fullmatch(filename)
    if match is None or not all(TARGET_DIR_SEGMENT.fullmatch(d) and d != ".." for d in dirs):
        raise _not_found("target")
    sha256 = match["sha256"]
    if not store.exists(sha256):
        raise _not_found("target")
    return FileResponse(
        store.path_for(sha256),
        media_type="application/octet-stream",
        headers={"cache-control": "public, max-age=31536000, immutable"},
    )
