"""What the fetcher no longer spends on an update (issue 17 item 6): metadata gathered in
memory, and a big artifact's SHA-256 computed on a helper thread, every byte in order."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors

from agent.ota.fetcher import HASH_BEHIND_BYTES, FetchPolicy, ResumableFetcher
from tests.agent.ota.support import RepoServer, break_after

pytestmark = [pytest.mark.ota, pytest.mark.integration]

BIG = hashlib.sha256(b"seed").digest() * ((2 * HASH_BEHIND_BYTES + 12_345) // 32)
NAME = "/tuf/targets/m/1/" + "cd" * 32 + ".model.onnx"
METADATA = b'{"signed": {}}' * 100


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    path = tmp_path / "www" / NAME.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(BIG)
    (tmp_path / "www" / "tuf" / "metadata").mkdir(parents=True)
    (tmp_path / "www" / "tuf" / "metadata" / "timestamp.json").write_bytes(METADATA)
    with RepoServer(tmp_path / "www") as running:
        yield running


def _fetcher(tmp_path: Path) -> ResumableFetcher:
    policy = FetchPolicy(timeout_s=5.0, retries=3, backoff_base_s=0.01, chunk_bytes=64 * 1024)
    return ResumableFetcher(policy, partial_dir=tmp_path / "partial", sleep=lambda _s: None)


def test_metadata_is_gathered_in_memory_not_in_a_temporary_file(
    server: RepoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_temporary_file(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("metadata went through a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_temporary_file)
    fetch = _fetcher(tmp_path)
    url = server.url + "/tuf/metadata/timestamp.json"
    assert fetch.download_bytes(url, len(METADATA)) == METADATA
    with pytest.raises(tuf_errors.DownloadLengthMismatchError):
        fetch.download_bytes(url, len(METADATA) - 1)


def test_a_big_artifact_hashed_behind_the_download_matches_its_signed_hashes(
    server: RepoServer, tmp_path: Path
) -> None:
    signed = {"sha256": hashlib.sha256(BIG).hexdigest(), "sha512": hashlib.sha512(BIG).hexdigest()}
    server.behaviours[r"\.model\.onnx$"] = break_after(HASH_BEHIND_BYTES + 100_000, times=1)
    fetch = _fetcher(tmp_path)
    path = fetch.download_verified(server.url + NAME, len(BIG), signed, tmp_path / "model.onnx")
    assert path.read_bytes() == BIG and fetch.resumed_from == [HASH_BEHIND_BYTES + 100_000]


def test_a_byte_changed_past_the_inline_part_is_refused(server: RepoServer, tmp_path: Path) -> None:
    tampered = bytearray(BIG)
    tampered[-10] ^= 0xFF  # hashed on the helper thread
    (server.root / NAME.lstrip("/")).write_bytes(bytes(tampered))
    fetch = _fetcher(tmp_path)
    with pytest.raises(tuf_errors.LengthOrHashMismatchError, match="sha256"):
        fetch.download_verified(
            server.url + NAME, len(BIG), {"sha256": hashlib.sha256(BIG).hexdigest()},
            tmp_path / "model.onnx",
        )
    assert not (tmp_path / "model.onnx").exists() and not list((tmp_path / "partial").glob("*"))
