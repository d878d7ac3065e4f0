"""The server over real HTTP (uvicorn on a free port): TUF serving, Range, auth, errors,
and python-tuf's own client verifying what the server signs."""

from __future__ import annotations

import hashlib
import http.client
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from tuf.ngclient import Updater

from edgeops.schemas import ReleaseInfo
from server.app.build import build_app
from server.app.home import init_home, read_admin_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import PublishedRelease, publish_package
from tests.server.helpers import live_server, make_package

pytestmark = [pytest.mark.ota, pytest.mark.integration]


@dataclass(frozen=True)
class LiveServer:
    url: str
    settings: ServerSettings
    token: str
    release: PublishedRelease
    package_dir: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("http")
    settings = ServerSettings(home=base / "home")
    init_home(settings)
    package_dir = make_package(base / "package")
    session_factory = open_database(settings.resolved_database_url)
    release = publish_package(settings, session_factory, package_dir)
    close_database(session_factory)
    with live_server(build_app(settings, with_fleet=False)) as url:
        yield LiveServer(url, settings, read_admin_token(settings), release, package_dir)


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def _artifact_url(server: LiveServer) -> str:
    return f"/tuf/targets/digits/1/{server.release.artifact_sha256}.model.int8.onnx"


def _raw_get(server: LiveServer, path: str) -> int:
    """GET `path` byte for byte (httpx would normalize '..' away)."""
    parsed = urlparse(server.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_healthz(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"


def test_python_tuf_client_verifies_refreshes_and_downloads(
    server: LiveServer, tmp_path: Path
) -> None:
    metadata_dir, targets_dir = tmp_path / "metadata", tmp_path / "targets"
    metadata_dir.mkdir()
    targets_dir.mkdir()
    trusted_root = (server.settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
    updater = Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{server.url}/tuf/metadata/",
        target_dir=str(targets_dir),
        target_base_url=f"{server.url}/tuf/targets/",
        bootstrap=trusted_root,
    )

    updater.refresh()
    info = updater.get_targetinfo("digits/1/model.int8.onnx")
    assert info is not None
    downloaded = Path(updater.download_target(info))

    original = (server.package_dir / "model.int8.onnx").read_bytes()
    assert downloaded.read_bytes() == original
    assert info.hashes["sha256"] == hashlib.sha256(original).hexdigest()
    release_info = ReleaseInfo.from_custom(info.custom)
    assert release_info == server.release.release_info
    assert release_info.golden.atol == pytest.approx(1e-4)
    assert updater.get_targetinfo("digits/2/model.int8.onnx") is None


def test_artifact_range_requests(server: LiveServer, client: httpx.Client) -> None:
    whole = (server.package_dir / "model.int8.onnx").read_bytes()
    full = client.get(_artifact_url(server))
    assert (full.status_code, full.content) == (200, whole)
    assert full.headers["accept-ranges"] == "bytes"

    partial = client.get(_artifact_url(server), headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206
    assert partial.content == whole[10:20]
    assert partial.headers["content-range"] == f"bytes 10-19/{len(whole)}"

    resumed = client.get(_artifact_url(server), headers={"Range": f"bytes={len(whole) - 5}-"})
    assert (resumed.status_code, resumed.content) == (206, whole[-5:])

    refused = client.get(_artifact_url(server), headers={"Range": f"bytes={len(whole)}-"})
    assert refused.status_code == 416
    assert refused.headers["content-range"] == f"bytes */{len(whole)}"

    # A header the server ignores gets the whole file, as the metadata route answers it.
    for ignored in ("bytes=9-2", "bytes=100-99", "bytes=0-1,5-6", "items=0-1", "bytes=x-"):
        odd = client.get(_artifact_url(server), headers={"Range": ignored})
        assert (odd.status_code, odd.content) == (200, whole), ignored
        assert "content-range" not in odd.headers, ignored
        meta = client.get("/tuf/metadata/timestamp.json", headers={"Range": ignored})
        assert meta.status_code == 200 and "content-range" not in meta.headers, ignored


def test_metadata_range_requests_and_caching(server: LiveServer, client: httpx.Client) -> None:
    whole = client.get("/tuf/metadata/timestamp.json")
    assert whole.status_code == 200 and whole.headers["cache-control"] == "no-store"
    assert client.get("/tuf/metadata/1.root.json").headers["cache-control"].endswith("immutable")

    partial = client.get("/tuf/metadata/timestamp.json", headers={"Range": "bytes=0-9"})
    assert (partial.status_code, partial.content) == (206, whole.content[:10])
    assert partial.headers["content-range"] == f"bytes 0-9/{len(whole.content)}"
    assert (
        client.get("/tuf/metadata/root.json", headers={"Range": "bytes=999999-"}).status_code == 416
    )


@pytest.mark.parametrize(
    "path",
    [
        "/tuf/metadata/server.toml",
        "/tuf/metadata/..%2Fadmin.token",
        "/tuf/metadata/..%2F..%2Fadmin.token",
        "/tuf/metadata/%2e%2e%2fkeys%2froot.pem",
        "/tuf/metadata/../keys/root.pem",
        "/tuf/metadata/keys%2Froot.pem",
        "/tuf/metadata/7.root.json",
        "/tuf/metadata/root.json.bak",
        "/tuf/metadata/-1.root.json",
        "/tuf/targets/../../admin.token",
        "/tuf/targets/..%2F..%2Fadmin.token",
        "/tuf/targets/digits/1/model.int8.onnx",
        "/tuf/targets/digits/1/" + "0" * 64 + ".model.int8.onnx",
        "/tuf/targets/../" + "0" * 64 + ".x",
        "/tuf/targets/digits/..%2F..%2F{sha}.model.int8.onnx",
        "/tuf/targets/{SHA}.model.int8.onnx",
        "/tuf/targets/digits/1/{sha}./../../admin.token",
    ],
)
def test_path_traversal_and_unknown_files_are_404(server: LiveServer, path: str) -> None:
    sha = server.release.artifact_sha256
    status = _raw_get(server, path.replace("{sha}", sha).replace("{SHA}", sha.upper()))
    assert status == 404


def test_registry_api_lists_models_and_releases(server: LiveServer, client: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {server.token}"}
    assert client.get("/api/models").status_code == 401  # reads need a token (viewer or above)
    [model] = client.get("/api/models", headers=auth).json()
    assert model["name"] == "digits"
    assert [(v["version"], v["format"]) for v in model["versions"]] == [(1, "fp32"), (1, "int8")]

    [release] = client.get("/api/releases", headers=auth).json()
    assert release["target_path"] == "digits/1/model.int8.onnx"
    assert release["download_path"] == _artifact_url(server)
    assert client.get(release["download_path"]).status_code == 200
    assert client.get("/api/releases", params={"model": "other"}, headers=auth).json() == []


def test_mutating_routes_need_the_admin_token(server: LiveServer, client: httpx.Client) -> None:
    body = {"name": "kws", "task": "edgeops.tasks.kws:task"}
    assert client.post("/api/models", json=body).status_code == 401
    assert (
        client.post("/api/models", json=body, headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )
    assert (
        client.post("/api/models", json=body, headers={"Authorization": server.token}).status_code
        == 401
    )
    assert client.post("/api/tuf/timestamp").status_code == 401

    auth = {"Authorization": f"Bearer {server.token}"}
    created = client.post("/api/models", json=body, headers=auth)
    assert created.status_code == 201 and created.json()["name"] == "kws"
    duplicate = client.post("/api/models", json=body, headers=auth)
    assert duplicate.status_code == 409 and "already exists" in duplicate.json()["detail"]
    assert (
        client.post("/api/models", json={"name": "../x", "task": "t"}, headers=auth).status_code
        == 422
    )
    assert client.post("/api/models", content=b"{", headers=auth).status_code == 422
    assert client.post("/api/tuf/timestamp", headers=auth).json()["timestamp_version"] > 2


def test_a_second_release_reaches_a_live_client(server: LiveServer, tmp_path: Path) -> None:
    package = Path(shutil.copytree(server.package_dir, tmp_path / "package"))
    session_factory = open_database(server.settings.resolved_database_url)
    try:
        second = publish_package(server.settings, session_factory, package, "fp32")
    finally:
        close_database(session_factory)
    (tmp_path / "metadata").mkdir()
    updater = Updater(
        metadata_dir=str(tmp_path / "metadata"),
        metadata_base_url=f"{server.url}/tuf/metadata/",
        target_dir=str(tmp_path),
        target_base_url=f"{server.url}/tuf/targets/",
        bootstrap=(server.settings.tuf_dir / "metadata" / "1.root.json").read_bytes(),
    )
    updater.refresh()
    info = updater.get_targetinfo(second.target_path)
    assert info is not None and ReleaseInfo.from_custom(info.custom).version == 2
