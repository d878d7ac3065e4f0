"""server.pipeline.deltas: publishing a release signs deltas from the releases devices run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from sqlalchemy.orm import sessionmaker

from edgeops import ota_delta
from server.config.settings import ServerSettings
from server.db.tables import Device
from server.pipeline.deltas import delta_regions, initializers
from server.pipeline.publishing import PublishedRelease, publish_package
from server.registry.artifact_store import ArtifactStore
from server.trust.repository import TargetEntry, TufRepository
from tests.edgeops.delta_models import DeltaModels, delta_models, write_package

pytestmark = [pytest.mark.ota, pytest.mark.pipeline]


@pytest.fixture(scope="module")
def models() -> DeltaModels:
    return delta_models()


def _publish_two(
    settings: ServerSettings, factory: sessionmaker, tmp_path: Path, first: Path, second: Path,
    running: str | None = None,
) -> tuple[PublishedRelease, PublishedRelease]:
    """Publish `first`, let a device run it (or `running`), then publish `second`."""
    v1 = publish_package(settings, factory, write_package(tmp_path / "v1", first))
    with factory.begin() as session:
        session.add(Device(device_id="dev-1", online=True, model="digits", version=1,
                           release=running or v1.target_path,
                           first_seen_at=datetime.now(UTC).replace(tzinfo=None)))  # fmt: skip
    return v1, publish_package(settings, factory, write_package(tmp_path / "v2", second))


PublishTwo = Callable[..., tuple[PublishedRelease, PublishedRelease]]


@pytest.fixture
def publish_two(
    server_settings: ServerSettings, session_factory: sessionmaker, tmp_path: Path
) -> PublishTwo:
    return functools.partial(_publish_two, server_settings, session_factory, tmp_path)


def _signed(settings: ServerSettings) -> dict[str, TargetEntry]:
    return {t.path: t for t in TufRepository(settings.tuf_dir).targets()}


def test_initializer_offsets_are_where_onnx_reads_their_raw_data(models: DeltaModels) -> None:
    import onnx

    data = models.base.read_bytes()
    found = initializers(data)
    tensors = {t.name: t for t in onnx.load_from_string(data).graph.initializer}

    assert set(found) == {name for name, t in tensors.items() if t.raw_data}
    for name, where in found.items():
        assert data[where.offset : where.offset + where.length] == tensors[name].raw_data
        assert (where.data_type, where.dims) == (tensors[name].data_type, tuple(tensors[name].dims))
    with pytest.raises(ValueError):
        initializers(b"not an onnx model")


def test_garbage_gives_no_regions() -> None:
    assert delta_regions(b"\xff" * 50, b"\xff" * 50) == []


def test_a_release_devices_run_gets_a_signed_delta_and_a_compressed_copy(
    server_settings: ServerSettings, publish_two: PublishTwo, models: DeltaModels
) -> None:
    v1, v2 = publish_two(models.base, models.retrain)

    signed = _signed(server_settings)
    path = ota_delta.delta_target_path(v2.target_path, v1.artifact_sha256)
    delta = signed[path]
    assert delta.custom["delta"] == {
        "from": v1.target_path, "from_sha256": v1.artifact_sha256, "to": v2.target_path,
        "to_sha256": v2.artifact_sha256, "to_length": v2.size_bytes,
        "format": ota_delta.FORMAT_VERSION,
    }  # fmt: skip
    assert delta.length <= 0.25 * v2.size_bytes
    store = ArtifactStore(server_settings.artifacts_dir)
    old, new = (store.path_for(r.artifact_sha256).read_bytes() for r in (v1, v2))
    assert ota_delta.apply(old, store.path_for(delta.sha256).read_bytes(), len(new)) == new
    compressed = signed[ota_delta.compressed_target_path(v2.target_path)]
    assert compressed.custom["compressed"]["of"] == v2.target_path
    assert zstandard.ZstdDecompressor().decompress(store.path_for(compressed.sha256).read_bytes()) == new
    # One targets version holds the release and its deltas: agents see all or nothing.
    assert v2.targets_version == TufRepository(server_settings.tuf_dir).targets_version()


def test_no_delta_when_no_device_runs_the_old_release(
    server_settings: ServerSettings, publish_two: PublishTwo, models: DeltaModels
) -> None:
    _v1, v2 = publish_two(models.base, models.retrain, running="other/1/model.int8.onnx")

    assert [p for p in _signed(server_settings) if "/deltas/" in p] == []
    assert ota_delta.compressed_target_path(v2.target_path) in _signed(server_settings)


def test_no_delta_for_an_unrelated_model_the_compressed_copy_is_smaller(
    server_settings: ServerSettings, publish_two: PublishTwo, models: DeltaModels
) -> None:
    v1, v2 = publish_two(models.base, models.unrelated)

    signed = _signed(server_settings)
    assert [p for p in signed if "/deltas/" in p] == []
    assert signed[ota_delta.compressed_target_path(v2.target_path)].length <= 1.02 * v2.size_bytes


def test_a_failing_delta_never_fails_the_publish(
    server_settings: ServerSettings, publish_two: PublishTwo, models: DeltaModels,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from server.pipeline import publishing

    def broken(*_args: object, **_kwargs: object) -> list[object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(publishing, "auxiliary_targets", broken)

    v1, v2 = publish_two(models.base, models.retrain)

    assert set(_signed(server_settings)) == {v1.target_path, v2.target_path}


def test_the_tuf_route_serves_a_signed_delta(
    server_settings: ServerSettings, publish_two: PublishTwo, models: DeltaModels
) -> None:
    from fastapi.testclient import TestClient

    from server.app.build import build_app

    v1, v2 = publish_two(models.base, models.retrain)
    path = ota_delta.delta_target_path(v2.target_path, v1.artifact_sha256)
    delta = _signed(server_settings)[path]
    directory, _, name = path.rpartition("/")

    with TestClient(build_app(server_settings, with_fleet=False)) as client:
        served = client.get(f"/tuf/targets/{directory}/{delta.sha256}.{name}")
        ranged = client.get(f"/tuf/targets/{directory}/{delta.sha256}.{name}",
                            headers={"Range": "bytes=100-"})  # fmt: skip
        wrong = client.get(f"/tuf/targets/{directory}/{'0' * 64}.{name}")

    assert served.status_code == 200 and len(served.content) == delta.length
    assert ranged.status_code == 206 and ranged.content == served.content[100:]
    assert wrong.status_code == 404


def test_withdrawing_a_release_removes_its_deltas_and_compressed_copy_in_one_version(
    server_settings: ServerSettings, session_factory: sessionmaker, publish_two: PublishTwo,
    models: DeltaModels,
) -> None:
    from server.pipeline.withdrawal import withdraw_release

    v1, v2 = publish_two(models.base, models.retrain)
    delta = ota_delta.delta_target_path(v2.target_path, v1.artifact_sha256)
    v1_copy, v2_copy = (ota_delta.compressed_target_path(r.target_path) for r in (v1, v2))
    assert {delta, v1_copy, v2_copy} <= set(_signed(server_settings))
    before = TufRepository(server_settings.tuf_dir).targets_version()

    withdrawn = withdraw_release(
        server_settings, session_factory, v2.target_path, reason="bad", actor="test"
    )

    assert set(_signed(server_settings)) == {v1.target_path, v1_copy}
    assert withdrawn.targets_version == before + 1 and not withdrawn.already
    TufRepository(server_settings.tuf_dir).verify()
    again = withdraw_release(
        server_settings, session_factory, v2.target_path, reason="bad", actor="test"
    )
    assert again.already and again.targets_version == before + 1
