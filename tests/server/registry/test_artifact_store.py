from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from edgeops.errors import ConfigError, NotFoundError
from server.registry.artifact_store import ArtifactStore

pytestmark = [pytest.mark.pipeline]


def test_put_file_stores_content_under_its_sha256(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"weights" * 1000)
    store = ArtifactStore(tmp_path / "store")

    sha256, size = store.put_file(source)

    assert sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert size == 7000
    assert store.path_for(sha256) == tmp_path / "store" / "sha256" / sha256
    with store.open(sha256) as handle:
        assert handle.read() == source.read_bytes()
    assert not stat.S_IMODE(store.path_for(sha256).stat().st_mode) & 0o222, (
        "stored blobs are read-only"
    )


def test_put_file_is_idempotent_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    first = store.put_bytes(b"same")
    second = store.put_bytes(b"same")

    assert first == second
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert len(list((tmp_path / "store" / "sha256").iterdir())) == 1


@pytest.mark.parametrize(
    "digest",
    ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, "0" * 64 + "\n"],
)
def test_path_for_refuses_anything_but_64_lowercase_hex(tmp_path: Path, digest: str) -> None:
    with pytest.raises(ConfigError, match="sha256"):
        ArtifactStore(tmp_path).path_for(digest)


def test_path_for_an_absent_artifact_is_not_found(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert not store.exists("0" * 64)
    with pytest.raises(NotFoundError):
        store.path_for("0" * 64)


def test_put_file_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        ArtifactStore(tmp_path / "store").put_file(tmp_path / "nope")
