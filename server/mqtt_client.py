"""Build the server's paho-mqtt 2.x clients (MQTT 5) the same way everywhere.

Connection is asynchronous (`connect_async` + `loop_start`): paho's network thread keeps
reconnecting with exponential backoff between `MIN_RECONNECT_DELAY_S` and
`MAX_RECONNECT_DELAY_S`, so a server can start before its broker and survive broker restarts.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeops.errors import TransportError
from server.settings import ServerSettings

__all__ = [
    "MAX_RECONNECT_DELAY_S",
    "MIN_RECONNECT_DELAY_S",
    "new_client",
    "reason_text",
    "start_connecting",
]

MIN_RECONNECT_DELAY_S = 1
MAX_RECONNECT_DELAY_S = 30
KEEPALIVE_S = 30


def new_client(
    settings: ServerSettings, client_id: str, *, manual_ack: bool = False
) -> mqtt.Client:
    """An MQTT 5 client with credentials from `settings` and bounded reconnect backoff."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.broker_username:
        client.username_pw_set(settings.broker_username, settings.broker_password or None)
    client.reconnect_delay_set(MIN_RECONNECT_DELAY_S, MAX_RECONNECT_DELAY_S)
    return client


def start_connecting(
    client: mqtt.Client,
    settings: ServerSettings,
    *,
    clean_start: bool,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
) -> None:
    """Start paho's network thread; it connects, and reconnects, in the background."""
    properties = Properties(PacketTypes.CONNECT)
    if session_expiry_s:
        properties.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        properties.ReceiveMaximum = receive_maximum
    try:
        client.connect_async(
            settings.broker_host,
            settings.broker_port,
            keepalive=KEEPALIVE_S,
            clean_start=clean_start,
            properties=properties,
        )
    except (OSError, ValueError) as err:
        raise TransportError(
            f"cannot connect to MQTT broker {settings.broker_host}:{settings.broker_port}: {err}"
        ) from err
    client.loop_start()


def reason_text(reason_code: Any) -> str:
    """Readable text for a paho ReasonCode (or int) in log lines."""
    return str(getattr(reason_code, "getName", lambda: reason_code)())
