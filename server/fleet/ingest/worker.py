"""MQTT ingest: device statuses and telemetry from the broker into the fleet inventory.

    paho network thread: on_message ──► pending (bounded)
        a full batch (batch_max_messages) is written right there:
            validate each (ingest_parse) ─► reject: count, log (rate-limited)
            one transaction: statuses + telemetry (inventory)
            commit ─► PUBACK every message of the batch, in order
    flush thread: writes what has waited batch_max_wait_s (quiet traffic), and takes over
        every write, retrying with backoff, while the database is failing

Full batches are written on the network thread: handing every message to a writer thread
costs throughput in GIL hand-offs (docs/fleet-mqtt.md, benchmarks/bench_telemetry.py). It
never waits on a failing database there: the first failure hands the batch back to the flush thread, which retries
while the network thread only collects (so keepalives keep flowing). One lock covers taking
a batch, writing it and acknowledging it, so PUBACKs leave in the order messages arrived.

Delivery guarantees
- Persistent MQTT 5 session (clean_start False, session expiry): QoS 1 traffic that arrives
  while the server is stopped is queued by the broker and delivered on restart.
- Manual acknowledgement: a message is PUBACKed only after its transaction committed (or it
  was rejected), so a crash between receipt and commit loses nothing — the broker
  redelivers it, and storage is idempotent (telemetry by message_id; a status is an upsert).
- While the database is unavailable the flush thread retries with backoff and acknowledges
  nothing; the broker stops sending once `receive_maximum` messages are unacknowledged,
  which with the bounded pending buffer also bounds this process's memory.

Subscriptions (decision)
- Telemetry, the bulk of the traffic, uses the MQTT 5 shared subscription
  `$share/<share_group>/<prefix>/devices/+/telemetry`: ingest workers in the group split it.
- Status uses a plain subscription `<prefix>/devices/+/status` in every worker. Shared
  subscriptions never deliver retained messages (MQTT 5 §4.8.2), and the retained status is
  how a freshly started server learns what every device runs. Statuses are few (one per state
  change), the upsert is idempotent, and each worker sees one topic's statuses in publish
  order, so all workers converge on the latest status (a shared status subscription could
  apply an older status after a newer one when two workers race). `retain_handling=1` asks
  for the retained statuses only when the subscription is new, not on every session resume.

Several workers need distinct `client_id`s; the default (`edgeops-ingest-<fleet>-<host>`) is
stable across restarts of one worker so its session, and the traffic queued in it, is resumed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from edgeops.errors import ConfigError
from edgeops.messages import MAX_PAYLOAD_BYTES, DeviceStatus, TelemetryBatch
from edgeops.topics import Topics
from server.config.settings import ServerSettings
from server.fleet.ingest.parse import Rejected, parse_message
from server.fleet.ingest.stats import IngestCounters, IngestStats, MessageKind, RateLimitedLog
from server.fleet.inventory import apply_status, load_devices, record_telemetry
from server.fleet.mqtt_client import new_client, reason_text, server_client_id, start_connecting

logger = logging.getLogger(__name__)

__all__ = ["Ingest", "IngestStats", "IngestTuning"]

SessionFactory = Callable[[], Session]


@dataclass(frozen=True)
class IngestTuning:
    batch_max_messages: int = 500
    batch_max_wait_s: float = 0.2
    session_expiry_s: int = 24 * 3600  # how long the broker keeps our queue while we are away
    receive_maximum: int = 2000  # unacknowledged QoS 1 messages the broker may send us
    share_group: str = "edgeops-ingest"
    log_interval_s: float = 10.0  # at most one log line per rejection reason per interval
    max_retry_delay_s: float = 5.0  # database retry backoff cap

    def __post_init__(self) -> None:
        if self.batch_max_messages < 1 or self.batch_max_wait_s <= 0:
            raise ConfigError("ingest needs batch_max_messages >= 1 and batch_max_wait_s > 0")
        if not 1 <= self.receive_maximum <= 65535:
            raise ConfigError("ingest receive_maximum must be within 1..65535")
        if self.session_expiry_s < 0:
            raise ConfigError("ingest session_expiry_s must be >= 0")


@dataclass(frozen=True)
class _Received:
    topic: str
    payload: bytes | None  # None: dropped on arrival for its size
    size_bytes: int
    mid: int
    qos: int
    generation: int  # which connection it arrived on; acks go only to that connection


class _StopWriting(Exception):
    """The database is unavailable while stopping: leave the batch unacknowledged."""


class _DatabaseFailing(Exception):
    """A write failed on the network thread: the flush thread retries it."""


def default_client_id(settings: ServerSettings) -> str:
    """Stable per host; on a secured broker, the server's ingest identity (see mqtt_client)."""
    return server_client_id(
        settings, "ingest", f"edgeops-ingest-{settings.fleet}-{socket.gethostname()}"
    )


class Ingest:
    """Subscribe to the fleet's status and telemetry topics and write them to the database."""

    def __init__(
        self,
        settings: ServerSettings,
        session_factory: SessionFactory,
        *,
        client_id: str | None = None,
        tuning: IngestTuning = IngestTuning(),
    ) -> None:
        self._settings = settings
        self._session_factory = session_factory
        self._tuning = tuning
        self._topics = Topics.for_fleet(settings.fleet, settings.topic_root)
        self.client_id = client_id or default_client_id(settings)
        self._counters = IngestCounters()
        self._rejections_log = RateLimitedLog(logger, tuning.log_interval_s)
        self._problems_log = RateLimitedLog(logger, tuning.log_interval_s)
        self._pending: list[_Received] = []  # received, not yet written (oldest first)
        self._pending_since = 0.0  # monotonic arrival of the oldest pending message
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()  # take + write + acknowledge one batch at a time
        self._database_failing = threading.Event()  # only the flush thread writes, retrying
        self._wake_flusher = threading.Event()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._generation = 0
        self._subscribe_mid: int | None = None
        self._client: mqtt.Client | None = None
        self._flusher: threading.Thread | None = None

    @property
    def subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        """(topic filter, options) this worker subscribes to; see the module docstring."""
        return [
            (
                f"$share/{self._tuning.share_group}/{self._topics.all_devices('telemetry')}",
                SubscribeOptions(qos=1),
            ),
            (
                self._topics.all_devices("status"),
                SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB),
            ),
        ]

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flush thread and connect in the background (see `wait_ready`)."""
        if self._client is not None:
            raise RuntimeError("Ingest.start() called twice")
        self._flusher = threading.Thread(target=self._run_flusher, name="ingest-flush", daemon=True)
        self._flusher.start()
        client = new_client(self._settings, self.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        start_connecting(
            client,
            self._settings,
            clean_start=False,
            session_expiry_s=self._tuning.session_expiry_s,
            receive_maximum=self._tuning.receive_maximum,
        )

    def wait_ready(self, timeout_s: float) -> bool:
        """True once connected and subscribed (False after `timeout_s`)."""
        return self._ready.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what was received, acknowledge it, then disconnect, keeping the session."""
        self._stopping.set()
        self._wake_flusher.set()
        if self._flusher is not None:
            self._flusher.join(timeout_s)
            if self._flusher.is_alive():
                logger.warning("ingest flush thread still busy after %.1f s; unacknowledged "
                               "messages will be redelivered on the next start", timeout_s)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self._ready.clear()

    def __enter__(self) -> Ingest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> IngestStats:
        connected = self._client is not None and self._client.is_connected()
        with self._pending_lock:
            queued = len(self._pending)
        return self._counters.snapshot(queued=queued, connected=connected)

    # paho network thread -------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason_code: Any,
                    _properties: Any) -> None:
        if reason_code.is_failure:
            self._problems_log.warning(
                "connect", "MQTT broker %s:%s refused ingest client %s: %s",
                self._settings.broker_host, self._settings.broker_port, self.client_id,
                reason_text(reason_code),
            )
            return
        self._generation += 1
        logger.info(
            "ingest connected to %s:%s as %s (session resumed: %s)",
            self._settings.broker_host, self._settings.broker_port, self.client_id,
            flags.session_present,
        )
        result, mid = client.subscribe(self.subscriptions)
        if result != mqtt.MQTT_ERR_SUCCESS:
            logger.warning("ingest subscribe failed: %s", mqtt.error_string(result))
        self._subscribe_mid = mid

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._problems_log.warning(
            "connect", "cannot reach MQTT broker %s:%s; retrying with backoff",
            self._settings.broker_host, self._settings.broker_port,
        )

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any,
                       _properties: Any) -> None:
        self._ready.clear()
        if not self._stopping.is_set():
            self._problems_log.warning(
                "disconnect", "ingest lost the MQTT broker (%s); reconnecting with backoff",
                reason_text(reason_code),
            )

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int,
                      reason_codes: Sequence[Any], _properties: Any) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [reason_text(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            logger.error("broker refused ingest subscriptions %s: %s",
                         [topic for topic, _ in self.subscriptions], refused)
            return
        self._ready.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Exceptions here would stop paho's network thread: nothing may escape.
        try:
            if self._stopping.is_set():
                return  # not acknowledged: redelivered to our next session
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = repr(message._topic)  # noqa: SLF001 - invalid UTF-8, keep it printable
            size = len(message.payload)
            # bytes(b) is b itself for paho's bytes payloads: no copy on the hot path
            payload = bytes(message.payload) if size <= MAX_PAYLOAD_BYTES else None
            item = _Received(topic, payload, size, message.mid, message.qos, self._generation)
            self._counters.received()
            pending = self._add_pending(item)
            if pending >= self._tuning.batch_max_messages and not self._database_failing.is_set():
                self._write_next_batch(retry=False)
        except Exception:  # pragma: no cover - defensive
            logger.exception("ingest dropped a message it could not queue")

    def _add_pending(self, item: _Received) -> int:
        """Append `item`; how many messages are pending now (0 if stopping)."""
        # Bounded for QoS 0 traffic (QoS 1 is bounded by receive_maximum): while the database
        # is failing, a full buffer holds up the network thread, which back-pressures the broker.
        limit = 2 * self._tuning.receive_maximum
        while not self._stopping.is_set():
            with self._pending_lock:
                if len(self._pending) < limit:
                    if not self._pending:
                        self._pending_since = time.monotonic()
                        self._wake_flusher.set()  # it times the batch_max_wait_s flush
                    self._pending.append(item)
                    return len(self._pending)
            self._stopping.wait(0.05)
        return 0

    # writing (network thread for full batches, flush thread for the rest) ----------------

    def _take_batch(self) -> list[_Received]:
        with self._pending_lock:
            batch = self._pending[: self._tuning.batch_max_messages]
            del self._pending[: len(batch)]
            if self._pending:
                self._pending_since = time.monotonic()
            return batch

    def _write_next_batch(self, *, retry: bool) -> bool:
        """Write and acknowledge the oldest pending batch; False if there was none.

        Without `retry` (the network thread) it never waits: not for the flush thread while
        that one writes, and not for a failing database, whose first failure puts the batch
        back, marks the database failing and leaves the retrying to the flush thread."""
        if not self._write_lock.acquire(blocking=retry):
            return False
        try:
            batch = self._take_batch()
            if not batch:
                return False
            try:
                self._write(batch, retry=retry)
            except _DatabaseFailing:
                with self._pending_lock:
                    self._pending[:0] = batch
                self._database_failing.set()
                self._wake_flusher.set()
                return False
            if retry:
                self._database_failing.clear()
            return True
        finally:
            self._write_lock.release()

    def _run_flusher(self) -> None:
        wait_s = self._tuning.batch_max_wait_s
        while True:
            stopping = self._stopping.is_set()
            with self._pending_lock:
                pending, since = len(self._pending), self._pending_since
            due = since + wait_s - time.monotonic()
            full = pending >= self._tuning.batch_max_messages  # e.g. piled up during an outage
            if pending and (stopping or full or self._database_failing.is_set() or due <= 0):
                try:
                    self._write_next_batch(retry=True)
                except _StopWriting:
                    return
                except Exception:  # never let the flusher die; the batch stays unacknowledged
                    logger.exception("ingest failed to write a batch")
                    self._stopping.wait(0.5)
                continue
            if stopping:
                return
            self._wake_flusher.wait(due if pending else None)
            self._wake_flusher.clear()

    def _write(self, batch: list[_Received], *, retry: bool) -> None:
        now = datetime.now(UTC)
        accepted: list[DeviceStatus | TelemetryBatch] = []
        rejected: list[tuple[Rejected, str]] = []
        for item in batch:
            parsed = parse_message(self._topics, item.topic, item.payload, item.size_bytes)
            if isinstance(parsed, Rejected):
                rejected.append((parsed, item.topic))
            else:
                accepted.append(parsed)
        if accepted:
            self._store_retrying(accepted, now, retry=retry)
        for reason, topic in rejected:  # counted once the batch is through (it may be retried)
            self._reject(reason, topic)
        self._acknowledge(batch)

    def _store_retrying(
        self, messages: list[DeviceStatus | TelemetryBatch], now: datetime, *, retry: bool
    ) -> None:
        delay_s = 0.1
        while True:
            try:
                self._store(messages, now)
                return
            except (DataError, IntegrityError) as err:
                # One bad message must not block the others: isolate it.
                if len(messages) == 1:
                    kind: MessageKind = (
                        "status" if isinstance(messages[0], DeviceStatus) else "telemetry"
                    )
                    self._reject(Rejected("unstorable", str(err.orig), kind), messages[0].device_id)
                    return
                for message in messages:
                    self._store_retrying([message], now, retry=retry)
                return
            except SQLAlchemyError as err:
                if not retry:
                    raise _DatabaseFailing from err
                self._counters.database_retry()
                self._problems_log.warning("database", "ingest cannot write to the database "
                                           "(retrying): %s", err)
                if self._stopping.is_set():
                    raise _StopWriting from err
                self._stopping.wait(delay_s)
                delay_s = min(2 * delay_s, self._tuning.max_retry_delay_s)

    def _store(self, messages: list[DeviceStatus | TelemetryBatch], now: datetime) -> None:
        statuses = [m for m in messages if isinstance(m, DeviceStatus)]
        telemetry = [m for m in messages if isinstance(m, TelemetryBatch)]
        with self._session_factory() as session, session.begin():
            if statuses:  # lock every device of the batch, in order, before changing any
                load_devices(session, (m.device_id for m in messages), now)
                for status in statuses:
                    apply_status(session, status, now)
            new_rows = record_telemetry(session, telemetry, now)
        self._counters.committed(
            statuses=len(statuses), telemetry=new_rows, duplicates=len(telemetry) - new_rows
        )

    def _reject(self, rejected: Rejected, where: str) -> None:
        self._counters.rejected(rejected.reason, rejected.kind)
        self._rejections_log.warning(
            rejected.reason, "ingest rejected a message (%s) on %.200s: %.300s",
            rejected.reason, where, rejected.detail,
        )

    def _acknowledge(self, batch: list[_Received]) -> None:
        client = self._client
        if client is None:
            return
        for item in batch:
            if item.qos and item.generation == self._generation:
                client.ack(item.mid, item.qos)
