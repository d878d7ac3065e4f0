from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.ota.model_store import ModelStore
from edgeops.errors import UpdateError
from tests.agent.support import make_release, model_weights

pytestmark = [pytest.mark.ota]


def stage(store: ModelStore, version: int, data: bytes | None = None) -> str:
    data = data if data is not None else f"model {version}".encode()
    slot = store.staging_slot()
    target = f"digits/{version}/model.fp32.onnx"
    store.stage(slot, data, target, make_release(version, model_weights(version)), hashlib.sha256(data).hexdigest())
    return slot


def test_updates_alternate_slots_and_keep_the_previous_one(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.active_pointer() is None and store.staging_slot() == "a"

    store.activate(stage(store, 1))
    store.activate(stage(store, 2))

    pointer = store.active_pointer()
    assert pointer is not None and (pointer.slot, pointer.previous) == ("b", "a")
    assert store.read_slot("a").release.version == 1
    assert store.rollback_slot() == "a"


def test_staging_never_touches_the_active_slot(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.activate(stage(store, 1))

    with pytest.raises(UpdateError, match="active"):
        store.stage("a", b"x", "digits/9/model.fp32.onnx", make_release(9, model_weights(9)), hashlib.sha256(b"x").hexdigest())


def test_bytes_that_do_not_match_the_expected_hash_are_not_staged(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    with pytest.raises(UpdateError, match="expected"):
        store.stage("a", b"x", "digits/1/model.fp32.onnx", make_release(1, model_weights(1)), "0" * 64)


def test_a_corrupt_model_file_is_detected(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.activate(stage(store, 1))
    (tmp_path / "slots" / "a" / "model.onnx").write_bytes(b"bit rot")

    with pytest.raises(UpdateError, match="corrupt"):
        store.read_slot("a")


@pytest.mark.parametrize("crash_after", ["clear", "model"])
def test_a_crash_while_staging_leaves_the_active_model_and_an_empty_slot(tmp_path: Path, crash_after: str) -> None:
    store = ModelStore(tmp_path)
    store.activate(stage(store, 1))
    store.activate(stage(store, 2))  # slot a now holds the previous model
    # Simulate kill -9 during the next staging into slot a: record dropped, model maybe half-written.
    store.clear_slot("a")
    if crash_after == "model":
        (tmp_path / "slots" / "a" / "model.onnx").write_bytes(b"half a mod")

    assert store.active_pointer().slot == "b"  # type: ignore[union-attr]
    assert store.read_slot("b").release.version == 2
    with pytest.raises(UpdateError, match="empty"):
        store.read_slot("a")
    assert store.rollback_slot() is None


def test_a_corrupt_pointer_raises_update_error(tmp_path: Path) -> None:
    (tmp_path / "active.json").write_text("{")

    with pytest.raises(UpdateError, match="corrupt"):
        ModelStore(tmp_path).active_pointer()
