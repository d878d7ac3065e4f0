import json

import pytest

from edgeops.errors import PayloadError
from edgeops.messages import (
    MAX_PAYLOAD_BYTES,
    Command,
    DeviceStatus,
    TelemetryBatch,
    decode,
    encode,
)

pytestmark = [pytest.mark.telemetry]


def test_status_round_trips_with_schema_version() -> None:
    status = DeviceStatus(device_id="d1", online=True, state="running", model="digits", version=3)
    raw = encode(status)
    assert json.loads(raw)["schema"] == 1
    assert decode(DeviceStatus, raw) == status


def test_telemetry_gets_a_message_id_for_deduplication() -> None:
    a = TelemetryBatch(device_id="d1", window_start=0, window_end=1, count=0, errors=0)
    b = TelemetryBatch(device_id="d1", window_start=0, window_end=1, count=0, errors=0)
    assert a.message_id != b.message_id


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"not json", "not JSON"),
        (b'{"schema": 1, "device_id": "d1"', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'{"schema": 2, "kind": "update"}', "schema"),
        (b'{"schema": 1, "kind": "explode"}', "kind"),
        (b'{"schema": 1, "kind": "update", "surprise": true}', "surprise"),
        (b"[]", "payload"),
    ],
)
def test_bad_payloads_raise_payload_error_naming_the_problem(payload: bytes, complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        decode(Command, payload)


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadError, match="exceeds"):
        decode(Command, b" " * (MAX_PAYLOAD_BYTES + 1))


def test_device_id_in_payload_is_validated() -> None:
    with pytest.raises(PayloadError, match="device_id"):
        decode(DeviceStatus, b'{"schema":1,"device_id":"a/b","online":true,"state":"idle"}')


def test_release_info_custom_is_signable_and_round_trips() -> None:
    from securesystemslib.formats import encode_canonical

    from edgeops.schemas import GoldenVectors, InputSchema, ReleaseInfo

    info = ReleaseInfo(
        model="digits",
        version=3,
        format="int8",
        input=InputSchema(shape=[None, 2], min_value=0.0, max_value=1.0, feature_bin_edges=[0.0, 0.1, 1.0]),
        output_name="probabilities",
        num_classes=2,
        golden=GoldenVectors(inputs=[[0.1, 1e-7]], outputs=[[0.3333333333333333, 0.6666666666666667]], atol=1e-4),
    )
    custom = info.to_custom()
    encode_canonical(custom)  # raises on floats
    assert ReleaseInfo.from_custom(custom) == info
