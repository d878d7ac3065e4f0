"""edgeops.ota_delta: int8 deltas between real models, and what apply refuses."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeops import ota_delta
from edgeops.errors import UpdateError
from edgeops.ota_delta import DeltaError, Region
from server.pipeline.deltas import delta_regions
from tests.edgeops.delta_models import delta_models

pytestmark = pytest.mark.ota


@pytest.fixture(scope="module")
def models() -> tuple[bytes, bytes, bytes]:
    built = delta_models()
    return built.base.read_bytes(), built.retrain.read_bytes(), built.unrelated.read_bytes()


@pytest.fixture(scope="module")
def delta(models: tuple[bytes, bytes, bytes]) -> bytes:
    base, retrain, _ = models
    return ota_delta.encode(base, retrain, delta_regions(base, retrain))


def test_a_warm_started_retrain_is_a_quarter_of_its_artifact(
    models: tuple[bytes, bytes, bytes], delta: bytes
) -> None:
    base, retrain, _ = models

    assert ota_delta.apply(base, delta, len(retrain)) == retrain
    assert len(delta) <= 0.25 * len(retrain)


def test_an_unrelated_model_round_trips_but_gains_little(
    models: tuple[bytes, bytes, bytes],
) -> None:
    base, _, other = models

    delta = ota_delta.encode(base, other, delta_regions(base, other))

    assert ota_delta.apply(base, delta, len(other)) == other
    assert len(delta) > 0.6 * len(other)  # the server then sends the (compressed) artifact


def test_a_delta_for_another_base_is_refused_before_anything_is_written(
    models: tuple[bytes, bytes, bytes], delta: bytes
) -> None:
    _, retrain, other = models
    written: list[bytes] = []

    with pytest.raises(DeltaError, match="base"):
        ota_delta.apply_into(other, delta, written.append, max_length=len(retrain))
    assert written == []


def test_the_signed_length_caps_the_output(
    models: tuple[bytes, bytes, bytes], delta: bytes
) -> None:
    base, retrain, _ = models

    with pytest.raises(DeltaError, match="more than"):
        ota_delta.apply(base, delta, len(retrain) - 1)


@pytest.mark.parametrize("keep", [0, 10, 80, 81, 200, -1, -4])
def test_a_truncated_delta_is_refused(
    models: tuple[bytes, bytes, bytes], delta: bytes, keep: int
) -> None:
    base, retrain, _ = models

    with pytest.raises(DeltaError):
        ota_delta.apply(base, delta[:keep], len(retrain))


def test_a_flipped_byte_is_refused_or_still_yields_the_signed_bytes(
    models: tuple[bytes, bytes, bytes], delta: bytes
) -> None:
    # zstd's bit stream has slack (table descriptions of unused symbols, padding), so a few
    # flips in 1,000 decode to the same ops: what apply promises is never other bytes than
    # the header names. Every header byte is refused; the agent also checks the delta's own
    # signed hash before it gets here.
    base, retrain, _ = models
    header = 81 + 6  # ours, then the zstd frame's magic, descriptor and window
    positions = sorted({*range(0, 90), *np.linspace(90, len(delta) - 1, 60).astype(int)})
    refused = []

    for position in positions:
        forged = bytearray(delta)
        forged[position] ^= 0x40
        try:
            assert ota_delta.apply(base, bytes(forged), len(retrain)) == retrain, position
        except DeltaError:
            refused.append(position)

    assert set(range(header)) <= set(refused)
    assert len(refused) >= 0.9 * len(positions)


def test_data_after_the_end_is_refused(
    models: tuple[bytes, bytes, bytes], delta: bytes
) -> None:
    base, retrain, _ = models
    with pytest.raises(DeltaError):
        ota_delta.apply(base, delta + b"\0" * 16, len(retrain))


def test_a_delta_is_an_update_error_so_callers_fall_back() -> None:
    assert issubclass(DeltaError, UpdateError)
    with pytest.raises(DeltaError, match="magic"):
        ota_delta.apply(b"old", b"X" * 100, 10)


def test_regions_must_lie_inside_both_files_and_not_overlap() -> None:
    old, new = bytes(100), bytes(100)
    for regions in (
        [Region(0, 0, 10), Region(0, 5, 10)],
        [Region(95, 0, 10)],
        [Region(0, 95, 10)],
        [Region(0, 0, 10, width=4)],
        [Region(0, 0, 8, width=3)],
    ):
        with pytest.raises(ValueError):
            ota_delta.encode(old, new, regions)


@settings(max_examples=40, deadline=None)
@given(
    old=st.binary(min_size=0, max_size=600),
    new=st.binary(min_size=0, max_size=600),
    cuts=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 600), st.sampled_from([1, 2, 4, 8])),
                  max_size=5),  # fmt: skip
)
def test_any_bytes_round_trip(old: bytes, new: bytes, cuts: list[tuple[int, int, int]]) -> None:
    regions, end = [], 0
    for old_at, new_at, width in sorted(cuts, key=lambda c: c[1]):
        length = min(len(old) - old_at, len(new) - new_at, 64) // width * width
        if new_at >= end and length > 0:
            regions.append(Region(old_at, new_at, length, width))
            end = new_at + length

    assert ota_delta.apply(old, ota_delta.encode(old, new, regions), len(new)) == new


def test_decompression_is_capped() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(bytes(1_000_000))
    out = io.BytesIO()

    with pytest.raises(DeltaError, match="expands past"):
        ota_delta.decompress_capped(io.BytesIO(bomb), out.write, 999_999)
    assert ota_delta.decompress_capped(io.BytesIO(bomb), io.BytesIO().write, 1_000_000) == 1_000_000
    with pytest.raises(DeltaError):
        ota_delta.decompress_capped(io.BytesIO(bomb[:-5]), io.BytesIO().write, 1_000_000)


def test_auxiliary_target_paths() -> None:
    sha = "ab" * 32
    assert ota_delta.delta_target_path("digits/3/model.int8.onnx", sha) == (
        f"digits/3/deltas/{sha}.model.int8.onnx.delta"
    )
    assert ota_delta.compressed_target_path("digits/3/model.int8.onnx") == (
        "digits/3/model.int8.onnx.zst"
    )
    assert ota_delta.is_auxiliary_target({"delta": {}})
    assert not ota_delta.is_auxiliary_target({"model": "digits"})
