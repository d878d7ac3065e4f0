"""The resumable ngclient fetcher against a real HTTP server that breaks links."""

from __future__ import annotations

import base64
import gzip
import hashlib
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors

from agent.ota.compatibility import incompatibility, supported_opset
from agent.ota.fetcher import DRAIN_S, FetchPolicy, ResumableFetcher, is_immutable_url
from tests.agent.ota.support import (
    Behaviour,
    ProxyServer,
    RangeHandler,
    RepoServer,
    break_after,
    tls_server_context,
)

pytestmark = [pytest.mark.ota, pytest.mark.integration]

DATA = bytes(range(256)) * 4096  # 1 MiB
NAME = "/tuf/targets/m/1/" + "ab" * 32 + ".model.onnx"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    path = tmp_path / NAME.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(DATA)
    (tmp_path / "tuf" / "metadata").mkdir(parents=True)
    (tmp_path / "tuf" / "metadata" / "timestamp.json").write_bytes(b"x" * 1000)
    with RepoServer(tmp_path) as running:
        yield running


def fetcher(tmp_path: Path, **policy: object) -> tuple[ResumableFetcher, list[float]]:
    sleeps: list[float] = []
    values = dict(timeout_s=2.0, retries=3, backoff_base_s=0.1, chunk_bytes=64 * 1024)
    values.update(policy)
    return (
        ResumableFetcher(
            FetchPolicy(**values),  # type: ignore[arg-type]
            partial_dir=tmp_path / "partial",
            sleep=sleeps.append,
            rng=random.Random(1),
        ),
        sleeps,
    )


def test_a_broken_link_resumes_with_range(server: RepoServer, tmp_path: Path) -> None:
    server.behaviours[r"\.model\.onnx$"] = break_after(300_000, times=2)
    fetch, sleeps = fetcher(tmp_path)

    with fetch.download_file(server.url + NAME, len(DATA)) as handle:
        assert handle.read() == DATA

    assert fetch.resumed_from and fetch.resumed_from[0] == 300_000
    assert [r for _p, r in server.requests][1] == "bytes=300000-"
    assert len(sleeps) == 2 and all(0 <= s <= 0.2 for s in sleeps)  # full jitter
    assert not list((tmp_path / "partial").glob("*.part"))  # cleaned after success


def test_a_partial_download_survives_a_restart(server: RepoServer, tmp_path: Path) -> None:
    server.behaviours[r"\.model\.onnx$"] = break_after(400_000, times=10)
    first, _ = fetcher(tmp_path, retries=0)
    with pytest.raises(tuf_errors.DownloadError):
        with first.download_file(server.url + NAME, len(DATA)):
            pass
    assert [p.stat().st_size for p in (tmp_path / "partial").glob("*.part")] == [400_000]
    server.behaviours.clear()

    second, _ = fetcher(tmp_path)  # a new process would build a new fetcher
    with second.download_file(server.url + NAME, len(DATA)) as handle:
        assert handle.read() == DATA
    assert second.resumed_from == [400_000]


def test_download_verified_hashes_as_bytes_arrive_including_a_resumed_prefix(
    server: RepoServer, tmp_path: Path
) -> None:
    signed = {"sha256": hashlib.sha256(DATA).hexdigest(), "sha512": hashlib.sha512(DATA).hexdigest()}
    server.behaviours[r"\.model\.onnx$"] = break_after(400_000, times=10)
    first, _ = fetcher(tmp_path, retries=0)
    with pytest.raises(tuf_errors.DownloadError):
        first.download_verified(server.url + NAME, len(DATA), signed, tmp_path / "model.onnx")
    server.behaviours.clear()

    second, _ = fetcher(tmp_path)
    path = second.download_verified(server.url + NAME, len(DATA), signed, tmp_path / "model.onnx")
    assert path.read_bytes() == DATA and second.resumed_from == [400_000]
    assert not list((tmp_path / "partial").glob("*.part"))  # renamed into place, not copied


def test_download_verified_refuses_bytes_that_do_not_match_the_signed_hashes(
    server: RepoServer, tmp_path: Path
) -> None:
    fetch, _ = fetcher(tmp_path)
    destination = tmp_path / "model.onnx"
    # A tampered prefix left on disk is hashed too: the result cannot match.
    partial = tmp_path / "partial"
    partial.mkdir()
    tampered = bytearray(DATA[:300_000])
    tampered[10] ^= 0xFF
    url = server.url + NAME
    (partial / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".part")).write_bytes(tampered)
    with pytest.raises(tuf_errors.LengthOrHashMismatchError, match="sha256"):
        fetch.download_verified(url, len(DATA), {"sha256": hashlib.sha256(DATA).hexdigest()}, destination)
    assert not destination.exists() and not list(partial.glob("*.part"))

    with pytest.raises(tuf_errors.LengthOrHashMismatchError, match="Unsupported"):
        fetch.download_verified(url, len(DATA), {"no-such-hash": "00"}, destination)
    assert not destination.exists()


def test_http_4xx_is_final_and_5xx_is_retried(server: RepoServer, tmp_path: Path) -> None:
    fetch, sleeps = fetcher(tmp_path)
    with pytest.raises(tuf_errors.DownloadHTTPError):
        fetch.download_bytes(server.url + "/tuf/targets/missing", 100)
    assert sleeps == []
    server.behaviours[r"timestamp"] = lambda handler, _data: handler.send_error(503)
    with pytest.raises(tuf_errors.DownloadError):
        fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 16384)
    assert len(sleeps) == 3


def test_length_caps(server: RepoServer, tmp_path: Path) -> None:
    fetch, _ = fetcher(tmp_path)
    with pytest.raises(tuf_errors.DownloadLengthMismatchError):
        fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 999)
    with pytest.raises(tuf_errors.DownloadLengthMismatchError):
        with fetch.download_file(server.url + NAME, len(DATA) - 1):
            pass
    assert not list((tmp_path / "partial").glob("*.part"))


def test_an_update_s_requests_share_one_kept_alive_connection(
    server: RepoServer, tmp_path: Path
) -> None:
    fetch, sleeps = fetcher(tmp_path)
    with pytest.raises(tuf_errors.DownloadHTTPError):  # the root N+1 probe of every refresh
        fetch.download_bytes(server.url + "/tuf/metadata/2.root.json", 1000)
    assert fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000) == b"x" * 1000
    with fetch.download_file(server.url + NAME, len(DATA)) as handle:
        assert handle.read() == DATA

    assert (fetch.requests, server.connections, sleeps) == (3, 1, [])


def test_a_connection_closed_while_idle_is_reopened_at_once(
    server: RepoServer, tmp_path: Path
) -> None:
    def serve_then_hang_up(handler: RangeHandler, data: bytes) -> None:
        handler.send_bytes(data)  # announced as kept alive ...
        handler.close_connection = True  # ... and closed, as an idle timeout would

    server.behaviours[r"timestamp"] = serve_then_hang_up
    fetch, sleeps = fetcher(tmp_path, retries=0)
    for _ in range(3):
        assert fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000) == b"x" * 1000

    assert server.connections == 3 and sleeps == []  # no retry spent, no backoff


def test_a_body_left_half_read_never_leaks_into_the_next_response(
    server: RepoServer, tmp_path: Path
) -> None:
    fetch, sleeps = fetcher(tmp_path)
    with pytest.raises(tuf_errors.DownloadLengthMismatchError):
        fetch.download_bytes(server.url + NAME, 100_000)  # the file is 1 MiB: abandoned
    assert fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000) == b"x" * 1000
    assert server.connections == 2 and sleeps == []  # a new connection, not a failed reuse


def test_an_error_body_trickled_by_the_server_does_not_stall_the_update(
    server: RepoServer, tmp_path: Path
) -> None:
    def withhold_the_body(handler: RangeHandler, _data: bytes) -> None:
        handler.send_response(404)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(4)  # ... and keep the connection, sending nothing
        handler.close_connection = True

    server.behaviours[r"2\.root\.json$"] = withhold_the_body
    fetch, sleeps = fetcher(tmp_path, timeout_s=30.0)
    started = time.monotonic()
    with pytest.raises(tuf_errors.DownloadHTTPError):
        fetch.download_bytes(server.url + "/tuf/metadata/2.root.json", 1000)
    assert time.monotonic() - started < 1 + DRAIN_S  # not the 30 s read timeout
    assert fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000) == b"x" * 1000
    assert server.connections == 2 and sleeps == []


def test_redirects_are_followed_a_few_times(server: RepoServer, tmp_path: Path) -> None:
    def redirect_to(location: str) -> Behaviour:
        def behaviour(handler: RangeHandler, _data: bytes) -> None:
            handler.send_response(302)
            handler.send_header("Location", location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        return behaviour

    server.behaviours[r"/moved/timestamp"] = redirect_to("/tuf/metadata/timestamp.json")
    server.behaviours[r"/loop$"] = redirect_to("/loop")
    fetch, _ = fetcher(tmp_path)

    assert fetch.download_bytes(server.url + "/moved/timestamp.json", 1000) == b"x" * 1000
    with pytest.raises(tuf_errors.DownloadError, match="more than 5 redirects"):
        fetch.download_bytes(server.url + "/loop", 1000)
    assert server.connections == 1


def test_a_redirect_whose_body_trickles_does_not_stall_the_update(
    server: RepoServer, tmp_path: Path
) -> None:
    def redirect_slowly(handler: RangeHandler, _data: bytes) -> None:
        handler.send_response(302)
        handler.send_header("Location", "/tuf/metadata/timestamp.json")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(4)  # ... and send none of the body
        handler.close_connection = True

    server.behaviours[r"/moved/timestamp"] = redirect_slowly
    fetch, sleeps = fetcher(tmp_path, timeout_s=30.0)
    started = time.monotonic()
    assert fetch.download_bytes(server.url + "/moved/timestamp.json", 1000) == b"x" * 1000
    assert time.monotonic() - started < 1 + DRAIN_S  # not the 30 s read timeout
    assert server.connections == 2 and sleeps == []


def test_the_body_is_the_bytes_served_whatever_content_encoding_says(
    server: RepoServer, tmp_path: Path
) -> None:
    def label_as_gzip(handler: RangeHandler, data: bytes) -> None:
        body = gzip.compress(data)
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    server.behaviours[r"timestamp"] = label_as_gzip
    fetch, _ = fetcher(tmp_path)
    # Signed lengths and hashes are of the bytes on the wire: nothing may decode them.
    served = fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000)
    assert served == gzip.compress(b"x" * 1000)


def test_a_refused_connection_is_retried_and_is_not_a_slow_retrieval(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens on it
    fetch, sleeps = fetcher(tmp_path)
    with pytest.raises(tuf_errors.DownloadError, match="after 4 attempts") as raised:
        fetch.download_bytes(f"http://127.0.0.1:{port}/tuf/metadata/timestamp.json", 1000)
    assert not isinstance(raised.value, tuf_errors.SlowRetrievalError)
    assert len(sleeps) == 3


def test_the_environment_s_http_proxy_is_used_unless_no_proxy_names_the_host(
    server: RepoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ProxyServer() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url.replace("://", "://agent:s%40cret@"))
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        fetch, _ = fetcher(tmp_path)
        assert fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000) == b"x" * 1000
        with fetch.download_file(server.url + NAME, len(DATA)) as handle:
            assert handle.read() == DATA
        credentials = "Basic " + base64.b64encode(b"agent:s@cret").decode()
        assert proxy.seen == [
            ("GET", server.url + "/tuf/metadata/timestamp.json", credentials),
            ("GET", server.url + NAME, credentials),
        ]

        monkeypatch.setenv("no_proxy", "127.0.0.1")
        direct, _ = fetcher(tmp_path)
        assert direct.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000) == b"x" * 1000
        assert len(proxy.seen) == 2


def test_https_through_the_environment_s_proxy_is_one_tunnel_to_a_verified_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "site"
    (root / "tuf" / "metadata").mkdir(parents=True)
    (root / "tuf" / "metadata" / "timestamp.json").write_bytes(b"x" * 1000)
    (root / NAME.lstrip("/")).parent.mkdir(parents=True)
    (root / NAME.lstrip("/")).write_bytes(DATA)
    ca_file, tls = tls_server_context(tmp_path / "tls", "127.0.0.1")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with RepoServer(root, tls=tls) as server, ProxyServer() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        untrusting, _ = fetcher(tmp_path, retries=0)
        with pytest.raises(tuf_errors.DownloadError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000)

        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the device's trust store
        fetch, _ = fetcher(tmp_path)
        assert fetch.download_bytes(server.url + "/tuf/metadata/timestamp.json", 1000) == b"x" * 1000
        with fetch.download_file(server.url + NAME, len(DATA)) as handle:
            assert handle.read() == DATA

        netloc = server.url.removeprefix("https://")
        # One tunnel for the refused handshake, one for both requests of the trusting fetcher.
        assert proxy.seen == [("CONNECT", netloc, None), ("CONNECT", netloc, None)]
        assert server.connections == 1  # handshakes that fail never reach the handler


def test_only_content_addressed_or_versioned_urls_resume() -> None:
    assert is_immutable_url("http://h/tuf/targets/m/1/" + "0" * 64 + ".model.onnx")
    assert is_immutable_url("http://h/tuf/metadata/3.targets.json")
    assert not is_immutable_url("http://h/tuf/metadata/timestamp.json")


def test_compatibility_rules() -> None:
    assert supported_opset("1.20.1") == 21 and supported_opset("9.0") >= 23
    assert incompatibility("0.1", 17, "0.1.0", 21) is None
    assert "needs agent >= 0.2" in (incompatibility("0.2", None, "0.1.0", 21) or "")
    assert "opset 22" in (incompatibility(None, 22, "0.1.0", 21) or "")
