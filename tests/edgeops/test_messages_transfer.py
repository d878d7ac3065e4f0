"""DeviceStatus.transfer: how the release a status names as `target` arrived (issue 17)."""

from __future__ import annotations

import json

import pytest

from edgeops.errors import PayloadError
from edgeops.messages import DeviceStatus, TransferInfo, decode, encode

pytestmark = [pytest.mark.ota]

OLD_STATUS = {"schema": 1, "device_id": "dev-1", "online": True, "state": "committed",
              "release": "digits/v2/model.int8.onnx", "target": "digits/v2/model.int8.onnx"}


def _status(transfer: object) -> bytes:
    return json.dumps({**OLD_STATUS, "transfer": transfer}).encode()


def test_a_status_without_transfer_from_an_older_agent_still_parses() -> None:
    status = decode(DeviceStatus, json.dumps(OLD_STATUS).encode())

    assert status.transfer is None
    assert status.target == OLD_STATUS["target"]


def test_a_transfer_round_trips() -> None:
    status = DeviceStatus(**OLD_STATUS, transfer=TransferInfo(  # type: ignore[arg-type]
        how="delta", bytes_received=1200, full_bytes=5800))

    again = decode(DeviceStatus, encode(status))

    assert again.transfer == TransferInfo(how="delta", bytes_received=1200, full_bytes=5800)
    assert again == status


@pytest.mark.parametrize(("transfer", "complaint"), [
    ({"how": "delta", "bytes_received": -1, "full_bytes": 10}, "bytes_received"),
    ({"how": "full", "bytes_received": 0, "full_bytes": 0}, "full_bytes"),
    ({"how": "full", "bytes_received": 11, "full_bytes": 10}, "exceeds the artifact"),
    ({"how": "carrier pigeon", "bytes_received": 1, "full_bytes": 10}, "how"),
    ({"how": "full", "full_bytes": 10}, "bytes_received"),
    ({"how": "full", "bytes_received": 1, "full_bytes": 10, "extra": 1}, "extra"),
])  # fmt: skip
def test_bad_transfers_are_refused_naming_the_field(transfer: object, complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        decode(DeviceStatus, _status(transfer))


def test_cached_and_compressed_transfers_are_accepted() -> None:
    for how, received in (("cached", 0), ("compressed", 3000), ("full", 5800)):
        status = decode(DeviceStatus, _status(
            {"how": how, "bytes_received": received, "full_bytes": 5800}))
        assert status.transfer is not None and status.transfer.bytes_received == received
