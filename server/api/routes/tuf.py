"""`/tuf/...`: the TUF repository as clients fetch it (metadata and consistent targets).

    GET /tuf/metadata/{N.}root.json | N.targets.json | N.snapshot.json | timestamp.json
    GET /tuf/targets/<dir>/<sha256>.<name>    (e.g. digits/3/<hash>.model.int8.onnx)

Both honour single-range `Range` requests (206, 416; an over-long header is a 416 too) and
answer a header they ignore (malformed, several ranges, or an end before its start such as
`bytes=100-99`) with the whole file, as `http_range.parse_range` decides for both: Starlette's
own parsing would send a 206 for `bytes=100-99` with an invalid `Content-Range`.
Anything else is a 404; file names are matched against a strict pattern, and artifacts are
found by their hash alone, so no request can reach a path outside the repository.

A target is served only if the current signed targets metadata lists it at that path with
that hash (`SignedTargets`): a blob the artifact store holds for another reason (an fp32
model, training weights) or a withdrawn release is a 404, whoever knows its hash.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from server.api.deps import ArtifactStoreDep, SettingsDep
from server.api.http_range import RangeNotSatisfiable, bytes_response, parse_range, unsatisfiable
from server.config.settings import ServerSettings
from server.trust.repository import TufRepository

__all__ = ["METADATA_FILENAME", "TARGET_FILENAME", "router"]

METADATA_FILENAME = re.compile(r"^(\d+\.)?(root|targets|snapshot|timestamp)\.json$")
TARGET_FILENAME = re.compile(
    r"^(?P<sha256>[0-9a-f]{64})\.(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$"
)
TARGET_DIR_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

router = APIRouter(prefix="/tuf", tags=["tuf"])


class SignedTargets:
    """{target path: sha256} of the current signed targets metadata, read again only when
    timestamp.json changed (every new targets, snapshot or timestamp version rewrites it)."""

    def __init__(self, tuf_dir: Path) -> None:
        self.tuf_dir = tuf_dir
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._hashes: dict[str, str] = {}

    def sha256_of(self, target_path: str) -> str | None:
        stat = (self.tuf_dir / "metadata" / "timestamp.json").stat()
        seen = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        with self._lock:
            if seen != self._seen:
                entries = TufRepository(self.tuf_dir).targets()
                self._hashes = {entry.path: entry.sha256 for entry in entries}
                self._seen = seen
            return self._hashes.get(target_path)


def _signed_targets(request: Request) -> SignedTargets:
    state = request.app.state
    if getattr(state, "signed_targets", None) is None:
        settings: ServerSettings = state.settings
        state.signed_targets = SignedTargets(settings.tuf_dir)
    signed: SignedTargets = state.signed_targets
    return signed


SignedTargetsDep = Annotated[SignedTargets, Depends(_signed_targets)]


class _WholeFile(FileResponse):
    """A FileResponse that sends the whole file whatever `Range` the request carried."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


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
def get_target(
    target: str, request: Request, store: ArtifactStoreDep, signed: SignedTargetsDep
) -> Response:
    *dirs, filename = target.split("/")
    match = TARGET_FILENAME.fullmatch(filename)
    if match is None or not all(TARGET_DIR_SEGMENT.fullmatch(d) and d != ".." for d in dirs):
        raise _not_found("target")
    sha256 = match["sha256"]
    signed_path = "/".join([*dirs, match["name"]])
    if signed.sha256_of(signed_path) != sha256 or not store.exists(sha256):
        raise _not_found("target")
    path = store.path_for(sha256)
    range_header = request.headers.get("range")
    response_class = FileResponse
    if range_header is not None:  # decided here, before FileResponse parses it
        size = path.stat().st_size
        try:
            if parse_range(range_header, size) is None:
                response_class = _WholeFile
        except RangeNotSatisfiable:
            return unsatisfiable(size)
    return response_class(
        path,
        media_type="application/octet-stream",
        headers={"cache-control": "public, max-age=31536000, immutable"},
    )
