"""MQTT topic layout, shared by agent and server.

All topics live under one prefix, `edgeops/<fleet>` by default:

    <prefix>/devices/<device_id>/telemetry   agent -> server, QoS 1, batched
    <prefix>/devices/<device_id>/status      agent -> server, QoS 1, retained; LWT `offline`
    <prefix>/devices/<device_id>/cmd         server -> agent, QoS 1
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from edgeops.errors import ConfigError, PayloadError

DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TopicKind = Literal["telemetry", "status", "cmd"]
TOPIC_KINDS: tuple[TopicKind, ...] = ("telemetry", "status", "cmd")


def validate_device_id(device_id: str) -> str:
    """Return `device_id` if it is safe to embed in a topic and a path, else raise."""
    if not DEVICE_ID_PATTERN.match(device_id):
        raise ConfigError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return device_id


@dataclass(frozen=True)
class Topics:
    """Topic names for one fleet."""

    prefix: str = "edgeops/default"

    @classmethod
    def for_fleet(cls, fleet: str = "default", root: str = "edgeops") -> Topics:
        return cls(prefix=f"{root}/{fleet}")

    def device(self, device_id: str, kind: TopicKind) -> str:
        return f"{self.prefix}/devices/{validate_device_id(device_id)}/{kind}"

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, "telemetry")

    def status(self, device_id: str) -> str:
        return self.device(device_id, "status")

    def cmd(self, device_id: str) -> str:
        return self.device(device_id, "cmd")

    def all_devices(self, kind: TopicKind) -> str:
        """Wildcard subscription for one kind of topic across the fleet."""
        return f"{self.prefix}/devices/+/{kind}"

    def parse(self, topic: str) -> tuple[str, TopicKind]:
        """Split a device topic into (device_id, kind); raise PayloadError if it is not one."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            raise PayloadError(f"topic {topic!r} is not under {head!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or parts[1] not in TOPIC_KINDS or not DEVICE_ID_PATTERN.match(parts[0]):
            raise PayloadError(f"topic {topic!r} is not <prefix>/devices/<id>/<kind>")
        kind: TopicKind = parts[1]
        return parts[0], kind
