"""The agent's MQTT connection: status (retained, with a last will), telemetry, commands.

paho-mqtt 2.x, MQTT v5, client id = device id, `clean_start=False` with a session
expiry so QoS 1 commands queue at the broker while the device is away. paho's network
thread runs the callbacks; they only decode and hand over (`on_command`), so the link
keeps pinging while the daemon downloads an update. QoS 1 publishes made while offline
are queued by paho (up to `mqtt_max_queued_messages`) and sent on reconnect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import AgentConfig
from edgeops.errors import TransportError
from edgeops.messages import DeviceStatus, TelemetryBatch, encode

logger = logging.getLogger(__name__)

StatusProvider = Callable[[], DeviceStatus]
CommandHandler = Callable[[bytes], None]


class MqttLink:
    """One agent's broker connection."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_command: CommandHandler,
        status_provider: StatusProvider,
    ) -> None:
        self._config = config
        self._on_command = on_command
        self._status_provider = status_provider
        topics = config.topics
        self.status_topic = topics.status(config.device_id)
        self.telemetry_topic = topics.telemetry(config.device_id)
        self.cmd_topic = topics.cmd(config.device_id)
        self._connected = threading.Event()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        config = self._config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=True,
        )
        if config.broker_username is not None:
            client.username_pw_set(config.broker_username, config.broker_password)
        client.reconnect_delay_set(config.mqtt_reconnect_min_s, config.mqtt_reconnect_max_s)
        client.max_queued_messages_set(config.mqtt_max_queued_messages)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        return client

    # Lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting with backoff."""
        config = self._config
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = config.mqtt_session_expiry_s
        try:
            self._client.connect_async(
                config.broker_host,
                config.broker_port,
                keepalive=config.mqtt_keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except (OSError, ValueError) as err:
            raise TransportError(
                f"device {config.device_id}: cannot connect to "
                f"{config.broker_host}:{config.broker_port}: {err}"
            ) from err
        self._client.loop_start()

    def stop(self, final_status: DeviceStatus | None = None, timeout_s: float = 5.0) -> None:
        """Publish `final_status` (if connected), disconnect cleanly, stop the thread."""
        if final_status is not None and self.connected:
            info = self._client.publish(
                self.status_topic, encode(final_status), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as err:
                logger.warning(
                    "device %s: final status not confirmed: %s", self._config.device_id, err
                )
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def socket(self) -> Any:
        """The client's socket (tests use it to simulate a dead link)."""
        return self._client.socket()

    # Publishing --------------------------------------------------------------------

    def set_will(self, status: DeviceStatus) -> None:
        """Make the last will `status` marked offline, so it keeps the model it ran.

        The broker takes the will at CONNECT: a change applies from the next (re)connect.
        """
        will = status.model_copy(update={"online": False, "state": "offline", "reason": None})
        self._client.will_set(self.status_topic, encode(will), qos=1, retain=True)

    def publish_status(self, status: DeviceStatus) -> None:
        self._publish(self.status_topic, encode(status), retain=True)

    def publish_telemetry(self, batch: TelemetryBatch) -> None:
        self._publish(self.telemetry_topic, encode(batch), retain=False)

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN means queued for the reconnect; anything else was dropped.
            logger.warning(
                "device %s: publish to %s dropped: %s",
                self._config.device_id,
                topic,
                mqtt.error_string(info.rc),
            )

    # paho callbacks (network thread) ---------------------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        device = self._config.device_id
        if reason_code.is_failure:
            logger.warning("device %s: broker refused the connection: %s", device, reason_code)
            return
        logger.info(
            "device %s: connected to %s:%s (session present: %s)",
            device,
            self._config.broker_host,
            self._config.broker_port,
            getattr(flags, "session_present", None),
        )
        client.subscribe(self.cmd_topic, qos=1)
        self._connected.set()
        # The broker may have published our last will since the last status: restate it.
        try:
            status = self._status_provider()
        except Exception:  # never let a status bug kill paho's thread
            logger.exception("device %s: cannot build the status to publish", device)
            return
        client.publish(self.status_topic, encode(status), qos=1, retain=True)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._connected.clear()
        logger.info("device %s: disconnected from the broker: %s", self._config.device_id, reason_code)

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.cmd_topic:
            return
        try:
            self._on_command(message.payload)
        except Exception:  # the handler must not kill paho's network thread
            logger.exception("device %s: command handler failed", self._config.device_id)
