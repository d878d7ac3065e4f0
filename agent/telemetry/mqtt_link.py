"""The agent's MQTT connection: status (retained, with a last will), telemetry, commands.

paho-mqtt 2.x, MQTT v5, client id = device id, `clean_start=False` with a session expiry
so QoS 1 commands queue at the broker while the device is away. With `broker_tls` the link
authenticates with the device certificate from enrollment (`<home>/identity/`), or, in
password mode, with TLS to the broker plus the enrolled username and password.

Threads of one link (nothing is shared between links; thousands live in one process):

    network thread   connects, runs paho's loop, reconnects with exponential backoff and
                     jitter (`Backoff`) so a fleet does not reconnect in lockstep after a
                     broker restart; paho callbacks only decode and hand over
    outbox thread    (with an outbox) publishes stored telemetry while connected, at most
                     `max_inflight` at a time, and removes each message from the outbox only
                     after its PUBACK

Telemetry with an outbox is never lost to a broker outage or an agent restart (see
agent/telemetry/outbox.py); paho itself resends in-flight messages after a reconnect, and a restarted
agent resends everything still in its outbox. Duplicates are harmless: ingest
de-duplicates by message id. A PUBACK saying "no matching subscribers" (MQTT 5 reason
0x10) does not count as delivered: nobody was listening (e.g. Mosquitto 2.0 does not restore
a shared subscription after a broker restart until ingest resubscribes), so the message
stays in the outbox and is sent again a second later (a message not yet refused is
sent at once). Stopping does not wait for messages nobody is subscribed to: they stay in
the outbox for the next start. Statuses are not queued on disk: the
latest status is restated on every connect, which is what the retained status topic needs.

One file descriptor per link, its MQTT socket (a process of 10,000 links fits a 20,000
descriptor limit next to nothing else). Nothing wakes the network thread's poll(): a
thread that publishes writes the socket itself when the network thread is not using it
(`_io_lock`, held around paho's loop calls and never during poll), and otherwise the
network thread sees the packet queued (`want_write`) before it polls again. Closing the
socket from any thread shuts it down first (`on_socket_close`), which ends the poll at
once; `stop` writes the DISCONNECT itself, or shuts the socket down. The one delay left:
a write the kernel took only in part (its send buffer full) waits for the next event on
the socket (the broker's PUBACKs) or the poll's timeout.
"""

from __future__ import annotations

import collections
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import AgentConfig
from agent.telemetry.outbox import Outbox
from edgeops.errors import ConfigError
from edgeops.messages import DeviceStatus, TelemetryBatch, encode

logger = logging.getLogger(__name__)

__all__ = ["Backoff", "LinkStats", "MqttLink"]

StatusProvider = Callable[[], DeviceStatus]
CommandHandler = Callable[[bytes], None]

LOOP_TIMEOUT_S = 1.0  # the outbox thread's idle wait
# The network thread sleeps in poll() until the socket has something, or for a quarter
# of the keepalive (paho's loop_misc sends PINGREQ), at most this long:
# thousands of idle links in one process each waking every second starved the GIL
# (bench_telemetry --full stalled at ~5,700 links).
MAX_IDLE_POLL_S = 10.0
INFLIGHT_TIMEOUT_S = 60.0  # no PUBACK this long while connected: publish it again
NO_SUBSCRIBERS = 0x10  # PUBACK reason: accepted, but nobody subscribed: not delivered
NO_SUBSCRIBERS_RETRY_S = 1.0


class Backoff:
    """Exponential backoff with 'equal jitter': delay in [base/2, base], base doubling from
    `min_s` up to `max_s`. Pure apart from its random source."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._min_s = min_s
        self._max_s = max_s
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        base = min(self._max_s, self._min_s * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return base / 2 + self._rng.uniform(0, base / 2)

    def reset(self) -> None:
        self._attempt = 0


@dataclass(frozen=True)
class LinkStats:
    connects: int  # successful CONNACKs
    connect_failures: int  # refused, unreachable, TLS failures
    published: int  # outbox messages the broker acknowledged
    refused: int  # outbox messages the broker refused (not authorized): dropped
    unrouted: int  # PUBACKs with "no matching subscribers": kept and sent again
    inflight: int
    outbox_messages: int
    outbox_dropped: int


class MqttLink:
    """One agent's broker connection."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_command: CommandHandler,
        status_provider: StatusProvider,
        outbox: Outbox | None = None,
        max_inflight: int = 100,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._on_command = on_command
        self._status_provider = status_provider
        self._outbox = outbox
        self._max_inflight = max_inflight
        topics = config.topics
        self.status_topic = topics.status(config.device_id)
        self.telemetry_topic = topics.telemetry(config.device_id)
        self.cmd_topic = topics.cmd(config.device_id)
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # the outbox thread has work
        self._acks: collections.deque[tuple[int, int]] = collections.deque()  # (mid, reason)
        self._hold_until = 0.0  # no subscriber was listening: wait before resending
        self._inflight: dict[int, tuple[str, float]] = {}  # mid -> (message_id, sent at)
        # Message ids whose last PUBACK said "no subscribers"; replaced, never mutated, so
        # `drain` (another thread) reads a consistent set.
        self._unrouted_ids: frozenset[str] = frozenset()
        self._backoff = Backoff(config.mqtt_reconnect_min_s, config.mqtt_reconnect_max_s, rng)
        self._threads: list[threading.Thread] = []
        self._idle_poll_s = min(MAX_IDLE_POLL_S, max(0.05, config.mqtt_keepalive_s / 4))
        # Held around every paho loop call (read, write, misc, reconnect), never in poll().
        self._io_lock = threading.Lock()
        self._connects = 0
        self._connect_failures = 0
        self._published = 0
        self._refused = 0
        self._unrouted = 0
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        config = self._config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # the network thread reconnects, with jitter
        )
        if config.broker_username is not None:
            client.username_pw_set(config.broker_username, config.broker_password)
        if config.broker_tls:
            _configure_tls(client, config)
        client.max_queued_messages_set(config.mqtt_max_queued_messages)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        # paho calls this when it queues a packet: write it now unless the network thread
        # is in a loop call (it then writes it before it polls again).
        client.on_socket_register_write = lambda _c, _u, _s: self._write_now()
        client.on_socket_close = lambda _c, _u, sock: _shut_down(sock)  # ends the poll
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = config.mqtt_session_expiry_s
        client.connect_async(  # only records where to connect; the network thread connects
            config.broker_host,
            config.broker_port,
            keepalive=config.mqtt_keepalive_s,
            clean_start=False,
            properties=properties,
        )
        return client

    # Lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the network thread keeps reconnecting."""
        self._stopping.clear()
        name = f"edgeops-link-{self._config.device_id}"
        targets: list[tuple[str, Callable[[], None]]] = [("net", self._run_network)]
        if self._outbox is not None:
            targets.append(("outbox", self._run_outbox))
        for suffix, target in targets:
            thread = threading.Thread(target=target, name=f"{name}-{suffix}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, final_status: DeviceStatus | None = None, timeout_s: float = 5.0) -> None:
        """Send what the outbox holds (while connected, within `timeout_s`), publish
        `final_status`, disconnect cleanly and stop the threads."""
        deadline = time.monotonic() + timeout_s
        if self._outbox is not None:
            self.drain(max(0.0, deadline - time.monotonic()))
        if final_status is not None and self.connected:
            info = self._client.publish(
                self.status_topic, encode(final_status), qos=1, retain=True
            )
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as err:
                logger.warning(
                    "device %s: final status not confirmed: %s", self._config.device_id, err
                )
        self._stopping.set()
        self._wake.set()
        if self._connected.is_set():
            self._client.disconnect()
        self._interrupt(max(0.1, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.5, deadline - time.monotonic()))
        self._threads.clear()
        if self._outbox is not None:
            self._collect_acks()  # PUBACKs that arrived while stopping
        self._connected.clear()

    def _interrupt(self, timeout_s: float) -> None:
        """Wake the network thread, which may sleep in poll() for up to `_idle_poll_s`:
        write what is queued (the DISCONNECT; paho then closes the socket, which shuts it
        down), or else shut the socket down."""
        if not self._io_lock.acquire(timeout=timeout_s):
            return  # stuck in a connect: it sees `_stopping` when that returns
        try:
            client = self._client
            if client.want_write():
                client.loop_write()
            sock = client.socket()
            if sock is not None and not client.want_write():
                _shut_down(sock)
        finally:
            self._io_lock.release()

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (True), or `timeout_s` passed, or the link is down,
        or every message left was answered "no subscribers" (waiting cannot deliver those:
        they stay in the outbox and are sent again after the next start)."""
        outbox = self._outbox
        if outbox is None:
            return True
        deadline = time.monotonic() + timeout_s
        while len(outbox) and self.connected and time.monotonic() < deadline:
            if self._only_unrouted_left(outbox):
                break
            self._wake.set()
            time.sleep(0.01)
        return not len(outbox)

    def _only_unrouted_left(self, outbox: Outbox) -> bool:
        """Nothing in flight, and every stored message was last refused for lack of a
        subscriber."""
        if self._inflight:
            return False
        return not outbox.pending(1, exclude=self._unrouted_ids)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def socket(self) -> Any:
        """The client's socket (tests use it to simulate a dead link)."""
        return self._client.socket()

    def stats(self) -> LinkStats:
        outbox = self._outbox.stats() if self._outbox is not None else None
        return LinkStats(
            connects=self._connects,
            connect_failures=self._connect_failures,
            published=self._published,
            refused=self._refused,
            unrouted=self._unrouted,
            inflight=len(self._inflight),
            outbox_messages=outbox.messages if outbox else 0,
            outbox_dropped=outbox.dropped if outbox else 0,
        )

    # Network thread ----------------------------------------------------------------

    def _run_network(self) -> None:
        client, device = self._client, self._config.device_id
        while not self._stopping.is_set():
            try:
                with self._io_lock:
                    client.reconnect()
            except (OSError, ValueError) as err:  # refused, unreachable, TLS (ssl.SSLError)
                self._connect_failures += 1
                delay = self._backoff.next_delay()
                logger.info("device %s: cannot reach the broker (%s); retry in %.1f s",
                            device, err, delay)
                self._stopping.wait(delay)
                continue
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            while not self._stopping.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = self._loop_once(self._idle_poll_s)
            if self._stopping.is_set():
                # Let the DISCONNECT (sent by stop) go out.
                for _ in range(10):
                    if self._loop_once(0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                return
            self._connected.clear()
            self._stopping.wait(self._backoff.next_delay())

    def _loop_once(self, timeout_s: float) -> MQTTErrorCode:
        """One round of paho's loop, waiting with poll() instead of paho's select(), which
        fails past file descriptor 1024: thousands of links share one process in
        simulations. `want_write` is read after the previous round let go of `_io_lock`,
        so a packet another thread queued meanwhile is polled for (POLLOUT) and written."""
        client = self._client
        sock = client.socket()
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS bytes already read
        poller = select.poll()
        try:
            poller.register(sock, select.POLLIN | (select.POLLOUT if client.want_write() else 0))
            events = poller.poll(0 if pending else int(timeout_s * 1000))
        except (OSError, ValueError):  # closed by another thread (stop) meanwhile
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        mask = events[0][1] if events else 0
        with self._io_lock:
            if pending or mask & (select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLNVAL):
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
            if mask & select.POLLOUT or client.want_write():
                rc = client.loop_write()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
            return client.loop_misc()

    # Publishing --------------------------------------------------------------------

    def set_will(self, status: DeviceStatus) -> None:
        """Make the last will `status` marked offline, so it keeps the model it ran.

        The broker takes the will at CONNECT: a change applies from the next (re)connect.
        """
        will = status.model_copy(update={"online": False, "state": "offline", "reason": None})
        self._client.will_set(self.status_topic, encode(will), qos=1, retain=True)

    def publish_status(self, status: DeviceStatus) -> None:
        self._publish(self.status_topic, encode(status), retain=True)

    def publish_telemetry(self, batch: TelemetryBatch, now: float | None = None) -> None:
        """Store the batch in the outbox (sent when connected), or publish it right away."""
        payload = encode(batch)
        if self._outbox is None:
            self._publish(self.telemetry_topic, payload, retain=False)
            return
        dropped = self._outbox.put(
            batch.message_id, self.telemetry_topic, payload, time.time() if now is None else now
        )
        if dropped:
            logger.warning("device %s: outbox full, dropped the %d oldest telemetry batches",
                           self._config.device_id, dropped)
        self._wake.set()

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

    # Outbox thread -----------------------------------------------------------------

    def _run_outbox(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(LOOP_TIMEOUT_S)
            self._wake.clear()
            try:
                self._collect_acks()
                if self._connected.is_set():
                    self._send_pending()
            except Exception:  # a disk error must not kill the thread; retry next round
                logger.exception("device %s: outbox round failed", self._config.device_id)
                self._stopping.wait(LOOP_TIMEOUT_S)

    def _collect_acks(self) -> None:
        """Remove acknowledged messages from the outbox (one transaction per round)."""
        assert self._outbox is not None
        done: list[str] = []
        while self._acks:
            mid, reason = self._acks.popleft()
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue  # a PUBACK for a message already given up on and resent
            if reason == NO_SUBSCRIBERS:
                self._unrouted += 1
                self._unrouted_ids = self._unrouted_ids | {entry[0]}
                self._hold_until = time.monotonic() + NO_SUBSCRIBERS_RETRY_S
                continue
            done.append(entry[0])
            self._unrouted_ids = self._unrouted_ids - {entry[0]}
            if reason < 0x80:
                self._published += 1
            else:
                self._refused += 1
                logger.warning("device %s: the broker refused telemetry %s (not authorized?); "
                               "dropped", self._config.device_id, entry[0])
        if done:
            self._outbox.remove(done)

    def _send_pending(self) -> None:
        assert self._outbox is not None
        now = time.monotonic()
        held = now < self._hold_until  # retry unrouted messages later; new ones go now
        stale = [mid for mid, (_, sent) in self._inflight.items()
                 if now - sent > INFLIGHT_TIMEOUT_S]
        for mid in stale:  # resend under a new mid; a late PUBACK of the old one is ignored
            del self._inflight[mid]
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        sending = {message_id for message_id, _ in self._inflight.values()}
        if held:
            sending |= self._unrouted_ids
        for item in self._outbox.pending(room, exclude=sending):
            info = self._client.publish(item.topic, item.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # disconnected or paho's queue full: the next round retries
            self._inflight[info.mid] = (item.message_id, now)

    # paho callbacks (network thread; _write_now in any thread) -------------------------

    def _write_now(self) -> None:
        """Write queued packets from the calling thread, unless a loop call holds the
        socket (the network thread's own, or this thread's: a callback): that one writes
        them before its next poll. Never blocks, so no lock order with paho's."""
        if not self._io_lock.acquire(blocking=False):
            return
        try:
            self._client.loop_write()
        finally:
            self._io_lock.release()

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        device = self._config.device_id
        if reason_code.is_failure:
            self._connect_failures += 1
            logger.warning("device %s: broker refused the connection: %s", device, reason_code)
            return
        self._backoff.reset()
        self._connects += 1
        logger.info(
            "device %s: connected to %s:%s (session present: %s)",
            device,
            self._config.broker_host,
            self._config.broker_port,
            getattr(flags, "session_present", None),
        )
        client.subscribe(self.cmd_topic, qos=1)
        self._connected.set()
        self._wake.set()
        # The broker may have published our last will since the last status: restate it.
        try:
            status = self._status_provider()
        except Exception:  # never let a status bug kill the network thread
            logger.exception("device %s: cannot build the status to publish", device)
            return
        client.publish(self.status_topic, encode(status), qos=1, retain=True)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._connected.clear()
        logger.info("device %s: disconnected from the broker: %s", self._config.device_id, reason_code)

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        # Called with paho's lock held: only note it (deque.append is atomic), never block.
        if self._outbox is not None:
            self._acks.append((mid, int(reason_code.value)))
            self._wake.set()

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.cmd_topic:
            return
        try:
            self._on_command(bytes(message.payload))  # bytes(b) is b itself: no copy
        except Exception:  # the handler must not kill paho's network thread
            logger.exception("device %s: command handler failed", self._config.device_id)


def _shut_down(sock: Any) -> None:
    """Shut a socket down before it is closed: a poll() on it in another thread returns at
    once (closing alone would not wake it). What was written still goes out first."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass  # not connected, or already closed


def _configure_tls(client: mqtt.Client, config: AgentConfig) -> None:
    """TLS to the broker: verify it against the fleet CA; present the device certificate
    when the home has one (certificate mode), else rely on username and password."""
    identity = config.identity
    certfile = identity.cert_file if identity.cert_file.exists() else None
    if certfile is None and config.broker_password is None:
        raise ConfigError(
            f"device {config.device_id}: broker_tls is on but {identity.cert_file} is missing; "
            "enroll the device first with 'edgeops agent enroll'"
        )
    try:
        client.tls_set(
            ca_certs=str(identity.ca_file),
            certfile=str(certfile) if certfile else None,
            keyfile=str(identity.key_file) if certfile else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (OSError, ssl.SSLError, ValueError) as err:
        raise ConfigError(f"device {config.device_id}: cannot load its TLS identity: {err}") from err
