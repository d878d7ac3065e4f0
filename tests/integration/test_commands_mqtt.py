"""CommandPublisher against a real Mosquitto, received by a plain paho subscriber."""

from __future__ import annotations

import queue
import signal
from pathlib import Path

import pytest

from edgeops.errors import ConfigError, TransportError
from edgeops.messages import Command, decode
from edgeops.topics import Topics
from server.config.settings import ServerSettings
from server.fleet.commands import CommandDeliveryError, CommandPublisher
from simulations.mosquitto import MosquittoBroker, free_port
from tests.integration.fleet_support import device_client

pytestmark = [pytest.mark.telemetry, pytest.mark.integration]


def test_command_reaches_the_device_cmd_topic(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    settings = ServerSettings(home=tmp_path, broker_port=mosquitto.port, fleet="f1")
    topic = Topics.for_fleet("f1").cmd("d1")
    received: queue.Queue = queue.Queue()
    command = Command(kind="update", target="digits/3/int8.onnx")

    with device_client(mosquitto.port, "d1", subscribe=topic, on_message=received.put), \
            CommandPublisher(settings) as publisher:
        assert publisher.wait_connected(5)
        publisher.send("d1", command)
        message = received.get(timeout=5)

    assert message.topic == topic and message.qos == 1 and not message.retain
    assert decode(Command, message.payload) == command


def test_send_many_reaches_every_device(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    settings = ServerSettings(home=tmp_path, broker_port=mosquitto.port, fleet="f1")
    received: queue.Queue = queue.Queue()
    command = Command(kind="rollback")

    with device_client(mosquitto.port, "watcher", subscribe="edgeops/f1/devices/+/cmd",
                       on_message=received.put), CommandPublisher(settings) as publisher:
        assert publisher.wait_connected(5)
        publisher.send_many(["a", "b", "c", "a"], command)
        topics = sorted(received.get(timeout=5).topic for _ in range(3))

    assert topics == [f"edgeops/f1/devices/{d}/cmd" for d in "abc"]
    assert received.empty()


def test_send_without_a_broker_is_a_transport_error(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path, broker_port=free_port())
    with CommandPublisher(settings, timeout_s=0.5) as publisher:
        with pytest.raises(TransportError, match="not connected") as caught:
            publisher.send("d1", Command(kind="rollback"))
    assert isinstance(caught.value, CommandDeliveryError) and caught.value.failed == ["d1"]


def test_invalid_device_id_is_refused_before_publishing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CommandPublisher(ServerSettings(home=tmp_path)).send("../x", Command(kind="rollback"))


def test_missing_puback_is_a_transport_error(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    settings = ServerSettings(home=tmp_path, broker_port=mosquitto.port)
    with CommandPublisher(settings, timeout_s=0.3) as publisher:
        assert publisher.wait_connected(5)
        assert mosquitto.process is not None
        mosquitto.process.send_signal(signal.SIGSTOP)  # a hung broker: connected, but silent
        try:
            with pytest.raises(CommandDeliveryError, match="no PUBACK") as caught:
                publisher.send_many(["d1", "d2"], Command(kind="rollback"))
        finally:
            mosquitto.process.send_signal(signal.SIGCONT)
    assert caught.value.failed == ["d1", "d2"] and caught.value.delivered == []
