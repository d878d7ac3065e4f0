"""The participants manifest: written and read back exactly, and every bad field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeops.errors import ConfigError
from server.federated.config import FederatedConfig
from server.federated.participants import (
    Participant,
    Participants,
    read_participants,
    write_participants,
)

pytestmark = [pytest.mark.federated]


def _fleet(tmp_path: Path) -> list[Participant]:
    return [
        Participant("device-003", "south", 3, str(tmp_path / "device-003" / "feedback.db")),
        Participant("device-000", "north", 0, str(tmp_path / "device-000" / "feedback.db")),
        Participant("device-007", "north", 7, str(tmp_path / "device-007" / "feedback.db")),
    ]


def test_the_manifest_round_trips_in_order_with_sorted_cohorts(tmp_path: Path) -> None:
    path = tmp_path / "participants.json"

    written = write_participants(path, _fleet(tmp_path), num_partitions=10)
    read = read_participants(path)

    assert read == written
    assert read == Participants(10, tuple(_fleet(tmp_path)))
    assert [p.device_id for p in read.participants] == ["device-003", "device-000", "device-007"]
    assert read.cohorts == ("north", "south")
    assert [read.cohort_index(i) for i in range(3)] == [1, 0, 0]
    assert json.loads(path.read_text())["participants"][0] == {
        "device_id": "device-003",
        "cohort": "south",
        "partition": 3,
        "feedback_path": str(tmp_path / "device-003" / "feedback.db"),
    }


def _entry(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "device_id": "device-001", "cohort": "north", "partition": 1, "feedback_path": "/f.db",
    }
    entry.update(overrides)
    return {key: value for key, value in entry.items() if value is not None}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"participants": [_entry()]}), "no 'num_partitions'"),
        (json.dumps({"num_partitions": "4", "participants": [_entry()]}), "'num_partitions' must be an integer"),
        (json.dumps({"num_partitions": 4, "participants": {}}), "'participants' must be a list"),
        (json.dumps({"num_partitions": 4, "participants": []}), "at least one participant"),
        (json.dumps({"num_partitions": 4, "participants": [_entry(cohort=None)]}), "participant 0 has no 'cohort'"),
        (json.dumps({"num_partitions": 4, "participants": [_entry(partition=True)]}), "'partition' must be an integer"),
        (json.dumps({"num_partitions": 4, "participants": [_entry(partition=4)]}), r"outside 0\.\.3"),
        (json.dumps({"num_partitions": 4, "participants": [_entry(partition=-1)]}), "partition must be >= 0"),
        (json.dumps({"num_partitions": 4, "participants": [_entry(), _entry()]}), "more than once"),
        (json.dumps({"num_partitions": 4, "participants": [_entry(extra=1)]}), "unknown keys"),
        (json.dumps({"num_partitions": 4, "participants": [_entry()], "x": 1}), "unknown keys"),
    ],
)
def test_a_bad_manifest_is_a_config_error_naming_the_file_and_field(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "participants.json"
    path.write_text(content)

    with pytest.raises(ConfigError, match=message) as caught:
        read_participants(path)
    assert str(path) in str(caught.value)


def test_a_missing_manifest_and_an_inconsistent_one_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_participants(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="outside 0..2"):
        write_participants(tmp_path / "p.json", _fleet(tmp_path), num_partitions=3)
    assert not (tmp_path / "p.json").exists()
    with pytest.raises(ConfigError, match="partition-id 3 has no participant"):
        Participants(10, tuple(_fleet(tmp_path))).at(3)


def test_the_run_config_must_have_one_client_per_participant(tmp_path: Path) -> None:
    path = tmp_path / "participants.json"
    write_participants(path, _fleet(tmp_path), num_partitions=10)

    assert FederatedConfig(num_clients=3, participants_file=str(path)).participants_file == str(path)
    with pytest.raises(ConfigError, match="num_clients is 4 but .* lists 3 participants"):
        FederatedConfig(num_clients=4, participants_file=str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        FederatedConfig(num_clients=3, participants_file=str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match="fleet_evaluation needs a participants_file"):
        FederatedConfig(num_clients=3, fleet_evaluation=True)
