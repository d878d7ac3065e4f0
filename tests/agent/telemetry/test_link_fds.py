"""One file descriptor per agent link, against a real Mosquitto: the MQTT socket and
nothing else (10,000 links must fit a 20,000 descriptor limit next to their broker), and
with no wake-up descriptor the link still sends at once, stops at once and idles at ~0 CPU.

The links use a 300 s keepalive, so their network threads sleep in poll() for 10 s: a
publish or a stop that waited for the poll's timeout would fail every budget below."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.telemetry.mqtt_link import MqttLink
from agent.telemetry.outbox import Outbox
from edgeops.messages import DeviceStatus, TelemetryBatch, decode
from simulations.mosquitto import MosquittoBroker, free_port
from tests.agent.support import Subscriber

pytestmark = [pytest.mark.integration, pytest.mark.telemetry]

LINKS = 50
PROMPT_S = 1.0  # far below the 10 s the idle poll sleeps


def state_of(payload: bytes) -> str:
    return decode(DeviceStatus, payload).state


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_link(
    home: Path, broker: MosquittoBroker, device: str, outbox: Outbox | None = None
) -> MqttLink:
    config = AgentConfig(home=home, device_id=device, server_url="http://127.0.0.1:9",
                         broker_host=broker.host, broker_port=broker.port,
                         mqtt_keepalive_s=300)
    status = DeviceStatus(device_id=device, online=True, state="running")
    return MqttLink(config, on_command=lambda payload: None,
                    status_provider=lambda: status, outbox=outbox)


@pytest.fixture
def links() -> Iterator[list[MqttLink]]:
    started: list[MqttLink] = []
    yield started
    for link in started:
        link.stop(timeout_s=1)


def connected_link(
    home: Path, broker: MosquittoBroker, device: str, links: list[MqttLink],
    outbox: Outbox | None = None,
) -> MqttLink:
    link = make_link(home, broker, device, outbox)
    link.start()
    links.append(link)
    assert link.wait_connected(5)
    return link


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_each_connected_link_holds_one_descriptor_and_gives_it_back(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    before = open_fds()
    made = [make_link(tmp_path, mosquitto, f"fd-{i}") for i in range(LINKS)]
    for link in made:
        link.start()
    try:
        assert all(link.wait_connected(10) for link in made)
        connected = open_fds()
    finally:
        for link in made:
            link.stop(timeout_s=1)
    stopped = open_fds()

    assert connected - before == LINKS  # the sockets; was 2 * LINKS with an eventfd each
    assert stopped == before


def test_a_status_published_from_another_thread_goes_out_at_once(
    tmp_path: Path, mosquitto: MosquittoBroker, links: list[MqttLink]
) -> None:
    link = connected_link(tmp_path, mosquitto, "prompt-status", links)
    subscriber = Subscriber(mosquitto.host, mosquitto.port, link.status_topic)
    try:
        subscriber.wait_for(lambda p: state_of(p) == "running")
        time.sleep(0.2)  # the network thread is asleep in poll() again

        started = time.monotonic()
        link.publish_status(DeviceStatus(device_id="prompt-status", online=True, state="downloading"))
        subscriber.wait_for(lambda p: state_of(p) == "downloading", timeout_s=5)

        assert time.monotonic() - started < PROMPT_S
    finally:
        subscriber.close()


def test_outbox_telemetry_goes_out_at_once_and_leaves_the_outbox(
    tmp_path: Path, mosquitto: MosquittoBroker, links: list[MqttLink]
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    link = connected_link(tmp_path, mosquitto, "prompt-telemetry", links, outbox)
    subscriber = Subscriber(mosquitto.host, mosquitto.port, link.telemetry_topic)
    try:
        time.sleep(0.2)
        started = time.monotonic()
        link.publish_telemetry(TelemetryBatch(device_id="prompt-telemetry", window_start=0,
                                              window_end=1, count=3, errors=0))
        subscriber.wait_for(lambda payload: True, timeout_s=5)
        assert link.drain(5)

        assert time.monotonic() - started < PROMPT_S
        assert link.stats().published == 1
    finally:
        subscriber.close()


def test_stop_is_prompt_and_clean_so_the_broker_keeps_the_final_status(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    link = make_link(tmp_path, mosquitto, "clean-stop")
    link.set_will(DeviceStatus(device_id="clean-stop", online=True, state="running"))
    link.start()
    assert link.wait_connected(5)
    subscriber = Subscriber(mosquitto.host, mosquitto.port, link.status_topic)
    try:
        subscriber.wait_for(lambda p: state_of(p) == "running")
        time.sleep(0.2)

        started = time.monotonic()
        link.stop(DeviceStatus(device_id="clean-stop", online=False, state="idle"))
        elapsed = time.monotonic() - started

        subscriber.wait_for(lambda p: state_of(p) == "idle")
        time.sleep(0.5)  # a will would follow a connection lost without DISCONNECT
        assert elapsed < PROMPT_S
        assert state_of(subscriber.messages[-1][1]) == "idle"
    finally:
        subscriber.close()


def test_stop_while_waiting_to_reconnect_is_prompt(tmp_path: Path) -> None:
    config = AgentConfig(home=tmp_path, device_id="away", server_url="http://127.0.0.1:9",
                         broker_port=free_port(), mqtt_keepalive_s=300,
                         mqtt_reconnect_min_s=30, mqtt_reconnect_max_s=30)
    link = MqttLink(config, on_command=lambda payload: None,
                    status_provider=lambda: DeviceStatus(device_id="away", online=True,
                                                         state="running"))
    link.start()
    deadline = time.monotonic() + 5
    while link.stats().connect_failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.stats().connect_failures >= 1  # nothing listens: backing off for 15-30 s

    started = time.monotonic()
    link.stop(timeout_s=5)

    assert time.monotonic() - started < PROMPT_S


def test_stop_while_waiting_for_the_connack_is_prompt(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        config = AgentConfig(home=tmp_path, device_id="no-connack",
                             server_url="http://127.0.0.1:9",
                             broker_port=silent.getsockname()[1], mqtt_keepalive_s=300)
        link = MqttLink(config, on_command=lambda payload: None,
                        status_provider=lambda: DeviceStatus(device_id="no-connack",
                                                             online=True, state="running"))
        link.start()
        time.sleep(0.3)  # connected over TCP, asleep in poll() waiting for a CONNACK
        assert not link.connected and link.socket() is not None

        started = time.monotonic()
        link.stop(timeout_s=5)

        assert time.monotonic() - started < PROMPT_S
        assert link.socket() is None  # and it was closed, not left open


def test_idle_links_take_no_cpu(
    tmp_path: Path, mosquitto: MosquittoBroker, links: list[MqttLink]
) -> None:
    for i in range(20):
        connected_link(tmp_path, mosquitto, f"idle-{i}", links)
    time.sleep(0.5)  # connect traffic settles

    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(2.0)
    used = time.process_time() - cpu

    assert used < 0.05 * (time.monotonic() - wall)  # a busy loop takes a whole core
