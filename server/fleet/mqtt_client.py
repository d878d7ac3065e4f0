"""Build the server's paho-mqtt 2.x clients (MQTT 5) the same way everywhere.

Connection is asynchronous (`connect_async` + `loop_start`): paho's network thread keeps
reconnecting with exponential backoff between `MIN_RECONNECT_DELAY_S` and
`MAX_RECONNECT_DELAY_S`, so a server can start before its broker and survive broker restarts.
Each client announces the MQTT 5 Maximum Packet Size the generated broker config enforces
(server.identity.broker_config.MAX_PACKET_BYTES): a broker without that limit still never
delivers the server a larger packet.
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeops.errors import TransportError
from server.config.settings import ServerSettings
from server.identity.broker_config import MAX_PACKET_BYTES

__all__ = [
    "MAX_RECONNECT_DELAY_S",
    "MIN_RECONNECT_DELAY_S",
    "new_client",
    "reason_text",
    "server_client_id",
    "start_connecting",
]

MIN_RECONNECT_DELAY_S = 1
MAX_RECONNECT_DELAY_S = 30
KEEPALIVE_S = 30


def server_client_id(settings: ServerSettings, role: str, fallback: str) -> str:
    """The client id of the server's `role` connection ("ingest", "commands").

    With a secured broker the client id is the authenticated name (the broker forces it,
    `use_username_as_clientid`), so it must be one the broker ACL grants server rights:
    `<broker_identity>-<role>`. On an open broker `fallback` is used.
    """
    if settings.broker_tls or settings.device_auth == "password" and settings.allow_password_auth:
        return f"{settings.broker_identity}-{role}"
    return fallback


def new_client(
    settings: ServerSettings, client_id: str, *, manual_ack: bool = False
) -> mqtt.Client:
    """An MQTT 5 client with credentials from `settings` and bounded reconnect backoff.

    With `broker_tls` the client authenticates with a certificate for CN = `client_id`
    from the fleet CA in the server home (minted on first use); in password mode (allowed
    simulations) with the password the server keeps for `client_id`.
    """
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.broker_username:
        client.username_pw_set(settings.broker_username, settings.broker_password or None)
    elif settings.device_auth == "password" and settings.allow_password_auth:
        from server.identity.enrollment import Enrollment

        client.username_pw_set(client_id, Enrollment(settings).server_password(client_id))
    if settings.broker_tls:
        from server.identity.ca import FleetCA

        ca = FleetCA.for_settings(settings)
        certificate = None if settings.device_auth == "password" else ca.identity(client_id)
        try:
            client.tls_set(
                ca_certs=str(ca.ca_file),
                certfile=str(certificate.cert_file) if certificate else None,
                keyfile=str(certificate.key_file) if certificate else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as err:
            raise TransportError(f"cannot set up TLS for MQTT client {client_id}: {err}") from err
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
    properties.MaximumPacketSize = MAX_PACKET_BYTES
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
