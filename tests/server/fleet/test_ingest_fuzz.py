"""Fuzzing ingest: malformed, truncated, oversized and wrong-schema payloads are counted,
never fatal, and good traffic keeps flowing; `/metrics` reports them without device labels."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import sessionmaker

from edgeops.messages import MAX_PAYLOAD_BYTES, DeviceStatus, TelemetryBatch, encode
from edgeops.topics import Topics
from server.api.routes.metrics import IngestCollector, create_registry, register
from server.api.routes.metrics import router as metrics_router
from server.fleet.ingest.parse import Rejected, parse_message
from server.fleet.ingest.worker import Ingest, IngestTuning
from tests.integration.fleet_support import sqlite_database, wait_until
from tests.server.identity.secure_fleet import FLEET, SecureFleet, tls_client

pytestmark = [pytest.mark.telemetry]

TOPICS = Topics.for_fleet(FLEET)
GOOD = encode(TelemetryBatch(device_id="d1", window_start=0, window_end=1, count=3, errors=0))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=4),
    max_leaves=12,
)


def _mutations(good: bytes) -> st.SearchStrategy[bytes]:
    document = json.loads(good)
    return st.one_of(
        st.binary(max_size=300),  # garbage
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),  # truncated
        json_values.map(lambda v: json.dumps(v).encode()),  # some JSON, not ours
        st.dictionaries(st.sampled_from(sorted(document)), json_values).map(  # wrong types
            lambda patch: json.dumps({**document, **patch}).encode()),
        st.text(max_size=8).map(lambda key: json.dumps({**document, f"x{key}": 1}).encode()),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_mutations(GOOD), kind=st.sampled_from(["telemetry", "status"]))
def test_any_payload_is_classified_never_raised(payload: bytes, kind: str) -> None:
    result = parse_message(TOPICS, TOPICS.device("d1", kind), payload, len(payload))  # type: ignore[arg-type]
    assert isinstance(result, (Rejected, TelemetryBatch, DeviceStatus))
    if isinstance(result, Rejected):
        assert result.kind == kind
    else:
        assert result.device_id == "d1"


@settings(max_examples=100, deadline=None)
@given(topic=st.text(max_size=80))
def test_any_topic_is_classified_never_raised(topic: str) -> None:
    result = parse_message(TOPICS, topic, GOOD, len(GOOD))
    assert isinstance(result, (Rejected, TelemetryBatch))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker]:
    with sqlite_database(tmp_path) as factory:
        yield factory


@pytest.mark.integration
def test_a_stream_of_junk_is_counted_and_good_traffic_keeps_flowing(
    fleet: SecureFleet, db: sessionmaker
) -> None:
    rng = random.Random(4)
    junk = [
        bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(60)
    ] + [GOOD[: rng.randrange(1, len(GOOD))] for _ in range(30)] + [
        json.dumps({**json.loads(GOOD), "count": -1}).encode(),
        json.dumps({**json.loads(GOOD), "schema": 3}).encode(),
        json.dumps({**json.loads(GOOD), "evil": True}).encode(),
        b"[]", b"null", b"{}", b"",
        b"{" + b" " * (MAX_PAYLOAD_BYTES + 10) + b"}",  # oversized
    ]
    good_count = 0
    with Ingest(fleet.settings, db, tuning=IngestTuning(batch_max_wait_s=0.05,
                                                         log_interval_s=60)) as ingest:
        assert ingest.wait_ready(10)
        with tls_client(fleet.broker.port, fleet.device("d1")) as client:
            for i, payload in enumerate(junk):
                client.publish(TOPICS.telemetry("d1"), payload, qos=1).wait_for_publish(5)
                if i % 5 == 0:
                    good = TelemetryBatch(device_id="d1", window_start=0, window_end=1, count=1,
                                          errors=0)
                    client.publish(TOPICS.telemetry("d1"), encode(good), qos=1).wait_for_publish(5)
                    good_count += 1

        wait_until(lambda: ingest.stats().received == len(junk) + good_count, timeout_s=20,
                   what="everything received")
        wait_until(lambda: sum(ingest.stats().rejected.values()) == len(junk),
                   what="every bad payload counted")
        wait_until(lambda: ingest.stats().telemetry == good_count, what="good telemetry stored")
        stats = ingest.stats()
        assert {"malformed", "invalid_schema", "oversized", "empty"} <= set(stats.rejected)

        registry = create_registry()
        register(registry, IngestCollector(ingest))
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        app = FastAPI()
        app.state.metrics_registry = registry
        app.state.settings, app.state.session_factory = fleet.settings, db  # /metrics reads them
        app.include_router(metrics_router)
        text = TestClient(app).get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    stored = samples[("edgeops_ingest_messages_total",
                      (("kind", "telemetry"), ("outcome", "stored")))]
    rejected = samples[("edgeops_ingest_messages_total",
                        (("kind", "telemetry"), ("outcome", "rejected")))]
    assert (stored, rejected) == (good_count, len(junk))
    assert samples[("edgeops_ingest_rejected_messages_total", (("reason", "empty"),))] == 1
    labels = {key for _, pairs in samples for key, _ in pairs}
    assert labels <= {"kind", "outcome", "reason"}  # never a per-device label
