"""Publish commands (update, rollback, config) to devices on `<prefix>/devices/<id>/cmd`.

QoS 1, not retained: a retained command would be replayed on every reconnect of the agent.
An agent offline with a persistent session gets the command from the broker's queue when it
comes back. `send` returns once the broker acknowledged (PUBACK); it does not mean the device
acted — the device reports that on its status topic.

A `TransportError` means the broker did not confirm in time: the command may or may not have
been delivered, so a retry can deliver it twice. Resend the same `Command` (same command_id)
so a device can tell a repeat from a new command.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt

from edgeops.errors import TransportError
from edgeops.messages import Command, encode
from edgeops.topics import Topics
from server.config.settings import ServerSettings
from server.fleet.mqtt_client import new_client, reason_text, server_client_id, start_connecting

logger = logging.getLogger(__name__)

__all__ = ["CommandDeliveryError", "CommandPublisher"]

MAX_QUEUED_PUBLISHES = 100_000  # paho's outgoing queue, bounded


class CommandDeliveryError(TransportError):
    """Some devices' commands were not acknowledged by the broker in time."""

    def __init__(self, message: str, *, delivered: list[str], failed: list[str]) -> None:
        super().__init__(message)
        self.delivered = delivered
        self.failed = failed


class CommandPublisher:
    """A dedicated MQTT connection for server → device commands."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        client_id: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._topics = Topics.for_fleet(settings.fleet, settings.topic_root)
        self._timeout_s = timeout_s
        self.client_id = client_id or server_client_id(
            settings, "commands", f"edgeops-commands-{settings.fleet}-{uuid.uuid4().hex[:8]}"
        )
        self._connected = threading.Event()
        self._stopping = False
        self._client: mqtt.Client | None = None

    def start(self) -> None:
        """Connect in the background; `send` fails fast until connected (see `wait_connected`)."""
        if self._client is not None:
            raise RuntimeError("CommandPublisher.start() called twice")
        client = new_client(self._settings, self.client_id)
        client.max_queued_messages_set(MAX_QUEUED_PUBLISHES)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        start_connecting(client, self._settings, clean_start=True)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        self._stopping = True
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self._connected.clear()

    def __enter__(self) -> CommandPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def send(self, device_id: str, command: Command, *, timeout_s: float | None = None) -> None:
        """Publish `command` to one device and wait for the broker's PUBACK."""
        self.send_many([device_id], command, timeout_s=timeout_s)

    def send_many(
        self, device_ids: Iterable[str], command: Command, *, timeout_s: float | None = None
    ) -> None:
        """Publish `command` to every device, then wait for all PUBACKs within one deadline.

        Raises CommandDeliveryError (a TransportError) naming the devices not confirmed.
        """
        ids = list(dict.fromkeys(device_ids))
        topics = [self._topics.cmd(device_id) for device_id in ids]  # ConfigError on a bad id
        client = self._client
        if client is None or not client.is_connected():
            raise CommandDeliveryError(
                f"not connected to MQTT broker {self._settings.broker_host}:"
                f"{self._settings.broker_port}; command {command.command_id} not sent",
                delivered=[],
                failed=ids,
            )
        payload = encode(command)
        infos: list[mqtt.MQTTMessageInfo] = []
        for topic in topics:
            infos.append(client.publish(topic, payload, qos=1, retain=False))
        deadline = time.monotonic() + (self._timeout_s if timeout_s is None else timeout_s)
        delivered: list[str] = []
        failed: list[str] = []
        last_error: Exception | None = None
        for device_id, info in zip(ids, infos):
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                ok = info.is_published()
            except (RuntimeError, ValueError) as err:
                ok, last_error = False, err
            (delivered if ok else failed).append(device_id)
        if failed:
            more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
            shown = ", ".join(failed[:10]) + more
            cause = f": {last_error}" if last_error else " (no PUBACK before the deadline)"
            error = CommandDeliveryError(
                f"command {command.command_id} ({command.kind}) not confirmed for "
                f"{len(failed)} of {len(ids)} devices: {shown}{cause}",
                delivered=delivered,
                failed=failed,
            )
            raise error from last_error
        logger.info("command %s (%s) delivered to %d devices", command.command_id, command.kind,
                    len(delivered))

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any,
                    _properties: Any) -> None:
        if reason_code.is_failure:
            logger.warning("MQTT broker refused command publisher: %s", reason_text(reason_code))
            return
        logger.info("command publisher connected to %s:%s", self._settings.broker_host,
                    self._settings.broker_port)
        self._connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any,
                       _properties: Any) -> None:
        self._connected.clear()
        if not self._stopping:
            logger.warning("command publisher lost the MQTT broker (%s); reconnecting with backoff",
                           reason_text(reason_code))
