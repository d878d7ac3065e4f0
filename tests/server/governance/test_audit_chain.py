"""The hash-chained audit log: append, anchors, verify against raw-SQL tampering, export,
retention and pruning, the middleware writing through the chain, concurrent writers."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Request
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError, NotFoundError
from server.api.audit import note
from server.api.routes import audit as audit_routes
from server.app.http_app import create_app
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.db.tables import AuditAnchor, AuditEntry
from server.governance import audit_chain as chain
from server.registry.artifact_store import ArtifactStore
from tests.server.helpers import postgres_available, postgres_schema_url

pytestmark = pytest.mark.governance

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def key(server_settings: ServerSettings) -> Ed25519PrivateKey:
    return chain.load_or_create_key(server_settings.home)


def _fill(factory: sessionmaker, count: int, *, at: datetime | None = None, actor: str = "ada") -> list[int]:
    ids = []
    for i in range(count):
        with factory() as session, session.begin():
            moment = None if at is None else at + timedelta(seconds=i)
            entry = chain.append(session, actor=actor, role="operator", action="rollout.start",
                                 resource="rollout", target=f"rollout {i}", reason="canary",
                                 detail=f"step {i}", at=moment)
            ids.append(entry.id)
    return ids


def _anchor(factory: sessionmaker, key: Ed25519PrivateKey) -> AuditAnchor:
    with factory() as session, session.begin():
        return chain.anchor(session, key)


def _verify(factory: sessionmaker, key: Ed25519PrivateKey) -> chain.AuditVerdict:
    with factory() as session:
        return chain.verify(session, key.public_key())


def _sql(factory: sessionmaker, *statements: str, **params: object) -> None:
    with factory() as session, session.begin():
        for statement in statements:
            session.execute(text(statement), params)


@pytest.fixture
def ten(session_factory: sessionmaker, key: Ed25519PrivateKey) -> sessionmaker:
    """Ten chained entries, the head anchored."""
    _fill(session_factory, 10)
    _anchor(session_factory, key)
    return session_factory


def test_untouched_log_verifies_and_links_every_entry(ten: sessionmaker, key: Ed25519PrivateKey) -> None:
    verdict = _verify(ten, key)
    assert verdict == chain.AuditVerdict(True, 10, anchors=1)
    with ten() as session:
        rows = session.query(AuditEntry).order_by(AuditEntry.id).all()
    assert [r.id for r in rows] == list(range(1, 11))
    assert rows[0].prev_hash == chain.GENESIS_HASH
    assert all(b.prev_hash == a.entry_hash for a, b in zip(rows, rows[1:], strict=False))
    assert all(chain.entry_hash(chain.entry_record(r)) == r.entry_hash for r in rows)
    assert rows[3].target == "rollout 3" and rows[3].reason == "canary"


@pytest.mark.parametrize(
    ("tamper", "first_bad_id", "words"),
    [
        (["UPDATE audit_log SET detail = 'nothing happened' WHERE id = 5"], 5, "entry 5 was edited"),
        (["UPDATE audit_log SET actor = 'mallory' WHERE id = 1"], 1, "entry 1 was edited"),
        (["DELETE FROM audit_log WHERE id = 4"], 4, "entry 4 was deleted"),
        (["DELETE FROM audit_log WHERE id IN (6, 7)"], 6, "entries 6-7 were deleted"),
        (["DELETE FROM audit_log WHERE id = 1"], 2, "entries before entry 2 were deleted"),
        (["DELETE FROM audit_log WHERE id >= 8"], 8, "the tail was truncated"),
        (["INSERT INTO audit_log (id, at, actor, action, resource, outcome, prev_hash, entry_hash)"
          " VALUES (11, '2026-12-01 12:00:00', 'mallory', 'POST', '/api/x', 'ok', :junk, :junk2)"],
         11, "entry 11 was inserted"),
        (["INSERT INTO audit_log (id, at, actor, action, resource, outcome)"
          " VALUES (11, '2026-12-01 12:00:00', 'mallory', 'POST', '/api/x', 'ok')"],
         11, "entry 11 has no hash: it was inserted"),
    ],
)
def test_verify_names_the_first_tampered_entry(
    ten: sessionmaker, key: Ed25519PrivateKey, tamper: list[str], first_bad_id: int, words: str
) -> None:
    _sql(ten, *tamper, junk="f" * 64, junk2="e" * 64)
    verdict = _verify(ten, key)
    assert not verdict.ok
    assert verdict.first_bad_id == first_bad_id
    assert words in (verdict.problem or ""), verdict.problem


def test_an_edit_that_recomputes_the_hash_is_still_found(ten: sessionmaker, key: Ed25519PrivateKey) -> None:
    with ten() as session, session.begin():
        entry = session.get(AuditEntry, 5)
        assert entry is not None
        entry.outcome = "denied"
        entry.entry_hash = chain.entry_hash(chain.entry_record(entry))
    verdict = _verify(ten, key)
    assert (verdict.first_bad_id, verdict.ok) == (5, False)
    assert "entry 5 was edited and re-hashed" in (verdict.problem or "")


def test_a_well_formed_insertion_in_the_middle_is_named(ten: sessionmaker, key: Ed25519PrivateKey) -> None:
    # Make room after entry 5, then insert a row that links correctly to entry 5.
    _sql(ten, "UPDATE audit_log SET id = id + 1000 WHERE id > 5",
         "UPDATE audit_log SET id = id - 999 WHERE id > 1000")
    with ten() as session, session.begin():
        five = session.get(AuditEntry, 5)
        assert five is not None
        forged = AuditEntry(id=6, at=NOW, actor="mallory", role="admin", action="token.create",
                            resource="token", outcome="ok", prev_hash=five.entry_hash)
        forged.entry_hash = chain.entry_hash(chain.entry_record(forged))
        session.add(forged)
    verdict = _verify(ten, key)
    assert (verdict.ok, verdict.first_bad_id) == (False, 6)
    assert "entry 6 was inserted" in (verdict.problem or "")


def test_truncation_then_new_entries_is_caught_by_the_anchor(
    ten: sessionmaker, key: Ed25519PrivateKey
) -> None:
    _sql(ten, "DELETE FROM audit_log WHERE id >= 9")
    _fill(ten, 2)  # the server goes on appending over the cut: ids 9 and 10 again
    verdict = _verify(ten, key)
    assert (verdict.ok, verdict.first_bad_id, verdict.bad_anchor_id) == (False, 10, 1)
    assert "no longer has the hash anchor 1 signed" in (verdict.problem or "")


def test_anchor_signatures_are_checked(ten: sessionmaker, key: Ed25519PrivateKey) -> None:
    genuine = _anchor(ten, key)
    assert genuine.key_id == chain.key_id_of(key.public_key())
    assert _verify(ten, key).ok
    forger = Ed25519PrivateKey.generate()
    with ten() as session, session.begin():
        head = session.get(AuditEntry, 8)
        assert head is not None
        at = NOW
        session.add(AuditAnchor(  # claims the server's key id, signed by another key
            at=at, entry_id=8, head_hash=head.entry_hash, key_id=genuine.key_id,
            signature=forger.sign(chain.anchor_payload(8, head.entry_hash or "", at)).hex()))
    verdict = _verify(ten, key)
    assert (verdict.ok, verdict.bad_anchor_id) == (False, 3)
    assert "anchor 3's signature does not verify" in (verdict.problem or "")
    _sql(ten, "DELETE FROM audit_anchors WHERE id = 3",
         "UPDATE audit_anchors SET head_hash = :h WHERE id = 2", h="a" * 64)
    assert "anchor 2's signature does not verify" in (_verify(ten, key).problem or "")
    stranger = chain.verify(ten(), forger.public_key())
    assert "anchor 1 was signed by an unknown key" in (stranger.problem or "")


def test_anchor_if_moved_anchors_only_a_new_head(
    session_factory: sessionmaker, key: Ed25519PrivateKey
) -> None:
    with session_factory() as session, session.begin():
        assert chain.anchor_if_moved(session, key) is None
        with pytest.raises(NotFoundError, match="nothing to anchor"):
            chain.anchor(session, key)
    _fill(session_factory, 2)
    with session_factory() as session, session.begin():
        first = chain.anchor_if_moved(session, key)
    with session_factory() as session, session.begin():
        again = chain.anchor_if_moved(session, key)
    assert first is not None and first.entry_id == 2 and again is None


def test_legacy_rows_precede_the_chain(session_factory: sessionmaker, key: Ed25519PrivateKey) -> None:
    for i in (1, 2, 3):
        _sql(session_factory,
             "INSERT INTO audit_log (id, at, actor, action, resource, status_code, outcome)"
             f" VALUES ({i}, '2026-01-0{i} 00:00:00', 'admin', 'POST', '/api/tokens', 200, 'ok')")
    ids = _fill(session_factory, 3)
    assert ids == [4, 5, 6]
    with session_factory() as session:
        assert session.get(AuditEntry, 4).prev_hash == chain.GENESIS_HASH
    verdict = _verify(session_factory, key)
    assert (verdict.ok, verdict.entries, verdict.legacy_entries) == (True, 3, 3)


def test_export_round_trips_and_verifies_on_its_own(
    session_factory: sessionmaker, key: Ed25519PrivateKey
) -> None:
    _fill(session_factory, 6, at=NOW)
    anchor = _anchor(session_factory, key)
    with session_factory() as session:
        lines = [json.dumps(r) for r in chain.export(session)]
        window = list(chain.export(session, NOW + timedelta(seconds=2), NOW + timedelta(seconds=4)))
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["at"] == "2026-12-01T12:00:00.000000+00:00"
    assert all(chain.entry_hash(r) == r["entry_hash"] for r in records)
    anchors = [{"id": anchor.id, "at": anchor.at.isoformat(timespec="microseconds"),
                "entry_id": anchor.entry_id, "head_hash": anchor.head_hash,
                "key_id": anchor.key_id, "signature": anchor.signature}]
    assert chain.verify_records(records, anchors, [key.public_key()]).ok
    assert [r["id"] for r in window] == [3, 4]
    records[2]["reason"] = "edited in the archive"
    assert chain.verify_records(records).first_bad_id == 3


def test_retention_below_six_months_is_refused(
    server_settings: ServerSettings, session_factory: sessionmaker, key: Ed25519PrivateKey
) -> None:
    with pytest.raises(ConfigError, match=r"floor of 183 days.*six months.*Art\. 19"):
        chain.check_retention_days(182)
    with pytest.raises(ConfigError, match="audit_retention_days"):
        chain.anchor_hook(replace(server_settings, audit_retention_days=30), session_factory)
    with session_factory() as session, pytest.raises(ConfigError, match="six months"):
        chain.prune(session, NOW, retention_days=90, key=key)
    assert chain.check_retention_days(183) == 183
    assert ServerSettings(home=Path("/x")).audit_retention_days == 200


def test_prune_removes_only_anchored_old_entries_and_verify_still_passes(
    session_factory: sessionmaker, key: Ed25519PrivateKey
) -> None:
    old = NOW - timedelta(days=400)
    _fill(session_factory, 5, at=old)
    _anchor(session_factory, key)  # covers 1-5
    _fill(session_factory, 2, at=old + timedelta(days=1))  # old, but past the anchor: kept
    _fill(session_factory, 3, at=NOW - timedelta(days=1))
    with session_factory() as session, session.begin():
        assert chain.prune(session, NOW, retention_days=200, key=key) == 5
    with session_factory() as session:
        ids = [e.id for e in session.query(AuditEntry).order_by(AuditEntry.id)]
        entry = session.query(AuditEntry).filter_by(action=chain.PRUNE_ACTION).one()
        anchors = [(a.entry_id) for a in session.query(AuditAnchor)]
    assert ids == [6, 7, 8, 9, 10, 11]
    recorded = json.loads(entry.detail or "")
    assert (recorded["count"], recorded["removed_through_id"], recorded["chain_start_id"]) == (5, 5, 6)
    assert anchors == [11]  # the anchor over the removed entries went; the head is re-anchored
    verdict = _verify(session_factory, key)
    assert (verdict.ok, verdict.entries) == (True, 6), verdict.problem
    with session_factory() as session, session.begin():  # 6, 7: now under the re-anchor
        assert chain.prune(session, NOW, retention_days=200, key=key) == 2
    with session_factory() as session, session.begin():
        assert chain.prune(session, NOW, retention_days=200, key=key) == 0
    assert _verify(session_factory, key).ok
    _sql(session_factory, "DELETE FROM audit_log WHERE id = 8")
    assert "entries before entry 9 were deleted" in (_verify(session_factory, key).problem or "")


def test_record_appends_in_its_own_transaction(session_factory: sessionmaker, key: Ed25519PrivateKey) -> None:
    entry_id = chain.record(session_factory, "pipeline", "pipeline.promote", "run 3",
                            "canary passed", detail="digits v4")
    with session_factory() as session:
        entry = session.get(AuditEntry, entry_id)
    assert entry is not None
    assert (entry.action, entry.resource, entry.target, entry.reason, entry.status_code) == (
        "pipeline.promote", "pipeline", "run 3", "canary passed", None)
    with pytest.raises(ConfigError, match="outcome"):
        chain.record(session_factory, "pipeline", "pipeline.promote", None, None, outcome="fine")
    assert _verify(session_factory, key).ok


def test_the_key_is_private_and_stable(server_settings: ServerSettings) -> None:
    first = chain.load_or_create_key(server_settings.home)
    second = chain.load_or_create_key(server_settings.home)
    path = chain.audit_key_path(server_settings.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert chain.key_id_of(first.public_key()) == chain.key_id_of(second.public_key())
    (public,) = chain.audit_public_keys(server_settings.home)
    assert chain.key_id_of(public) == chain.key_id_of(first.public_key())


def test_the_middleware_writes_through_the_chain(
    server_settings: ServerSettings, session_factory: sessionmaker, key: Ed25519PrivateKey
) -> None:
    router = APIRouter()

    @router.post("/api/things/{name}")
    def make_thing(name: str, request: Request) -> dict[str, str]:
        note(request, f"made {name}", target=f"thing {name}", reason="asked")
        return {"name": name}

    app = create_app(server_settings, session_factory, ArtifactStore(server_settings.artifacts_dir),
                     [router, audit_routes.router])
    admin = {"Authorization": f"Bearer {app.state.admin_token}"}
    with TestClient(app) as client:
        assert client.post("/api/things/a").status_code == 200
        assert client.post("/api/things/b").status_code == 200
        listed = client.get("/api/audit", headers=admin).json()
        verdict = client.get("/api/audit/verify", headers=admin).json()
        exported = client.get("/api/audit/export", headers=admin,
                              params={"since": "2000-01-01T00:00:00Z"}).text.splitlines()
        assert client.get("/api/audit/verify").status_code == 401
    assert [e["target"] for e in listed] == ["thing b", "thing a"]
    assert (verdict["ok"], verdict["entries"]) == (True, 2)
    assert [json.loads(line)["entry_hash"] for line in exported] == [
        e["entry_hash"] for e in reversed(listed)]
    with session_factory() as session:
        rows = session.query(AuditEntry).order_by(AuditEntry.id).all()
    assert [(r.action, r.resource, r.target, r.reason, r.outcome, r.status_code) for r in rows] == [
        ("POST", "/api/things/a", "thing a", "asked", "ok", 200),
        ("POST", "/api/things/b", "thing b", "asked", "ok", 200),
    ]
    assert rows[1].prev_hash == rows[0].entry_hash
    assert _verify(session_factory, key).ok


@pytest.fixture
def postgres_factory() -> Iterator[sessionmaker]:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_schema_url() as url:
        factory = open_database(url)
        yield factory
        close_database(factory)


@pytest.mark.integration
def test_concurrent_appenders_on_postgresql_never_fork_the_chain(
    postgres_factory: sessionmaker, tmp_path: Path
) -> None:
    key = chain.load_or_create_key(tmp_path)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(name: str) -> None:
        try:
            start.wait()
            for i in range(25):
                with postgres_factory() as session, session.begin():
                    chain.append(session, actor=name, role=None, action="x.y", resource="x",
                                 detail=str(i))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with postgres_factory() as session, session.begin():
        chain.anchor(session, key)
    with postgres_factory() as session:
        verdict = chain.verify(session, key.public_key())
        heads = session.execute(text("SELECT count(DISTINCT prev_hash) FROM audit_log")).scalar()
    assert verdict == chain.AuditVerdict(True, 100, anchors=1)
    assert heads == 100  # every entry links to a different predecessor: no fork
    with postgres_factory() as session, session.begin():  # the id sequence was kept past ours
        session.add(AuditEntry(actor="raw", action="x", resource="x", outcome="ok"))
        session.flush()
    with postgres_factory() as session:
        assert session.execute(text("SELECT max(id) FROM audit_log")).scalar() == 101


def test_the_anchor_hook_signs_a_moved_head_periodically(
    server_settings: ServerSettings, session_factory: sessionmaker
) -> None:
    import asyncio

    _fill(session_factory, 3)
    hook = chain.anchor_hook(replace(server_settings, audit_anchor_interval_s=0.05), session_factory)

    async def run_for(seconds: float) -> None:
        async with hook(None):
            await asyncio.sleep(seconds)

    asyncio.run(run_for(0.5))
    with session_factory() as session:
        anchors = [(a.entry_id, a.key_id) for a in session.query(AuditAnchor)]
    key = chain.load_or_create_key(server_settings.home)  # made by the hook on first use
    assert anchors == [(3, chain.key_id_of(key.public_key()))]  # once: the head did not move again
    assert _verify(session_factory, key).ok
