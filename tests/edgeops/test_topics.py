import pytest

from edgeops.errors import ConfigError, PayloadError
from edgeops.topics import Topics, validate_device_id

pytestmark = [pytest.mark.telemetry]


def test_topics_follow_the_contract() -> None:
    topics = Topics.for_fleet("lab")
    assert topics.telemetry("dev-1") == "edgeops/lab/devices/dev-1/telemetry"
    assert topics.status("dev-1") == "edgeops/lab/devices/dev-1/status"
    assert topics.cmd("dev-1") == "edgeops/lab/devices/dev-1/cmd"
    assert topics.all_devices("status") == "edgeops/lab/devices/+/status"


def test_parse_round_trips() -> None:
    topics = Topics()
    assert topics.parse(topics.telemetry("a.b_c-1")) == ("a.b_c-1", "telemetry")


@pytest.mark.parametrize(
    "topic",
    [
        "other/default/devices/x/status",
        "edgeops/default/devices/x/status/extra",
        "edgeops/default/devices/x/unknown",
        "edgeops/default/devices/+/status",
        "edgeops/default/devices//status",
    ],
)
def test_parse_rejects_foreign_topics(topic: str) -> None:
    with pytest.raises(PayloadError):
        Topics().parse(topic)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "-lead", "x" * 65, "sp ace"])
def test_device_ids_that_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid device id"):
        validate_device_id(bad)
