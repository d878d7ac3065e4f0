from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from edgeops.errors import ConfigError, RegistryError
from server.trust import repository as tuf_repository
from server.trust.repository import TufExpiry, TufRepository, init_repository

pytestmark = [pytest.mark.ota]

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    init_repository(tmp_path / "tuf", now=NOW)
    return TufRepository(tmp_path / "tuf")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.int8.onnx"
    path.write_bytes(b"onnx bytes")
    return path


def _load(repo: TufRepository, name: str) -> Metadata:
    return Metadata.from_file(str(repo.metadata_dir / name))


def test_init_writes_signed_layout_with_private_keys(tmp_path: Path, repo: TufRepository) -> None:
    names = sorted(p.name for p in repo.metadata_dir.iterdir())
    assert names == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "timestamp.json",
    ]
    root = _load(repo, "1.root.json").signed
    assert root.consistent_snapshot is True
    assert root.expires == NOW + timedelta(days=365)
    assert _load(repo, "timestamp.json").signed.expires == NOW + timedelta(days=1)
    assert _load(repo, "1.snapshot.json").signed.expires == NOW + timedelta(days=7)
    assert _load(repo, "1.targets.json").signed.expires == NOW + timedelta(days=90)
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert stat.S_IMODE((repo.keys_dir / f"{role}.pem").stat().st_mode) == 0o600
    repo.verify()


def test_init_refuses_an_existing_repository(repo: TufRepository) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        init_repository(repo.tuf_dir)


def test_add_target_bumps_targets_snapshot_timestamp(repo: TufRepository, artifact: Path) -> None:
    version = repo.add_target("digits/1/model.int8.onnx", artifact, {"edgeops": {"x": 1}}, now=NOW)

    assert version == 2
    snapshot = _load(repo, "2.snapshot.json").signed
    assert snapshot.meta["targets.json"].version == 2
    assert _load(repo, "timestamp.json").signed.snapshot_meta.version == 2
    [entry] = repo.targets()
    assert entry.path == "digits/1/model.int8.onnx"
    assert entry.length == len(b"onnx bytes")
    assert entry.custom == {"edgeops": {"x": 1}}
    repo.verify()


def test_duplicate_target_is_refused(repo: TufRepository, artifact: Path) -> None:
    repo.add_target("digits/1/model.int8.onnx", artifact, {})
    with pytest.raises(RegistryError, match="already exists"):
        repo.add_target("digits/1/model.int8.onnx", artifact, {})
    assert repo.targets_version() == 2


@pytest.mark.parametrize(
    "bad", ["", "/abs/x.onnx", "a/../b.onnx", "a//b", "a/./b", "a/b\\c", "a/.hidden"]
)
def test_unsafe_target_paths_are_refused(repo: TufRepository, artifact: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid target path"):
        repo.add_target(bad, artifact, {})


def test_a_crash_before_the_timestamp_leaves_the_previous_state_visible(
    repo: TufRepository, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = tuf_repository.write_bytes_atomic

    def write_then_die_on_timestamp(path: Path, data: bytes) -> None:
        if path.name == "timestamp.json":
            raise OSError("power cut")
        real_write(path, data)

    monkeypatch.setattr(tuf_repository, "write_bytes_atomic", write_then_die_on_timestamp)
    with pytest.raises(OSError):
        repo.add_target("digits/1/model.int8.onnx", artifact, {})
    monkeypatch.undo()

    assert repo.targets() == [] and repo.targets_version() == 1
    # The next publish reuses the orphaned version numbers and succeeds.
    assert repo.add_target("digits/1/model.int8.onnx", artifact, {}) == 2
    repo.verify()


def test_refresh_timestamp_and_refresh_expiring(repo: TufRepository) -> None:
    assert repo.refresh_timestamp(now=NOW) == 2
    assert repo.refresh_expiring(now=NOW) == []
    # 20 hours later the 1-day timestamp is past half its life; 5 days later the snapshot too.
    assert repo.refresh_expiring(now=NOW + timedelta(hours=20)) == ["timestamp"]
    assert repo.refresh_expiring(now=NOW + timedelta(days=5)) == ["snapshot", "timestamp"]
    assert repo.refresh_expiring(now=NOW + timedelta(days=60)) == [
        "targets",
        "snapshot",
        "timestamp",
    ]
    assert _load(repo, "timestamp.json").signed.expires == NOW + timedelta(days=61)
    repo.verify()


def test_expiry_chosen_at_init_is_kept(tmp_path: Path, artifact: Path) -> None:
    init_repository(tmp_path / "tuf", TufExpiry(timestamp_days=0.5), now=NOW)
    repo = TufRepository(tmp_path / "tuf")
    repo.add_target("m/1/model.fp32.onnx", artifact, {}, now=NOW)
    assert _load(repo, "timestamp.json").signed.expires == NOW + timedelta(hours=12)
    assert (
        json.loads((tmp_path / "tuf" / "repository.json").read_text())["expiry_days"][
            "timestamp_days"
        ]
        == 0.5
    )


def test_a_foreign_key_file_is_refused(repo: TufRepository, artifact: Path) -> None:
    (repo.keys_dir / "timestamp.pem").write_bytes((repo.keys_dir / "snapshot.pem").read_bytes())
    with pytest.raises(ConfigError, match="not a timestamp key"):
        repo.refresh_timestamp()


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a TUF repository"):
        TufRepository(tmp_path)
