"""Bytes a rollout sent (issue 17): device transfers stored from statuses, summed per
rollout on every storage backend, and what the summary, CLI and console show of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgeops.messages import DeviceStatus, TransferInfo
from server.cli.rollout import render_rollout
from server.db.tables import DeviceTransfer, Rollout, RolloutDevice
from server.fleet import inventory
from server.rollouts.summary import TransferTotals, bytes_text, summarize
from server.rollouts.transfers import transfer_totals

pytestmark = [pytest.mark.rollouts, pytest.mark.ota]

T0 = datetime(2026, 12, 1, tzinfo=UTC)
V2, V3 = "digits/v2/model.int8.onnx", "digits/v3/model.int8.onnx"
FULL = 5_800


@pytest.fixture
def db(sql_database: sessionmaker) -> sessionmaker:
    return sql_database


def _report(session: Session, device_id: str, target: str, transfer: TransferInfo | None,
            at: datetime, *, online: bool = True) -> None:
    status = DeviceStatus(device_id=device_id, online=online, state="committed", release=target,
                          target=target, transfer=transfer)
    inventory.load_devices(session, [device_id], at)
    inventory.apply_status(session, status, at)


def _rollout(session: Session, target: str, phases: dict[str, str], created_at: datetime) -> int:
    rollout = Rollout(target=target, group_name=None, tags=[], policy={"waves_pct": [100]},
                      status="completed", created_by="test", created_at=created_at,
                      updated_at=created_at)
    session.add(rollout)
    session.flush()
    for position, (device_id, phase) in enumerate(sorted(phases.items())):
        session.add(RolloutDevice(rollout_id=rollout.id, device_id=device_id, position=position,
                                  wave=0, phase=phase))
    return rollout.id


def _transfer(how: str, received: int) -> TransferInfo:
    return TransferInfo(how=how, bytes_received=received, full_bytes=FULL)  # type: ignore[arg-type]


@pytest.mark.integration
def test_a_rollout_sums_the_transfers_of_its_target_since_it_started(db: sessionmaker) -> None:
    with db.begin() as session:
        _report(session, "dev-old", V2, _transfer("full", FULL), T0 - timedelta(days=1))
        rid = _rollout(session, V2, {"dev-a": "succeeded", "dev-b": "succeeded",
                                     "dev-c": "failed", "dev-d": "sent", "dev-old": "already",
                                     "dev-silent": "succeeded"}, T0)
        _report(session, "dev-a", V2, _transfer("delta", 1_200), T0 + timedelta(seconds=5))
        _report(session, "dev-b", V2, _transfer("compressed", 4_000), T0 + timedelta(seconds=6))
        _report(session, "dev-c", V2, _transfer("full", FULL), T0 + timedelta(seconds=7))
        _report(session, "dev-d", V3, _transfer("full", FULL), T0 + timedelta(seconds=8))
        _report(session, "dev-silent", V2, None, T0 + timedelta(seconds=9))
        other = _rollout(session, V3, {"dev-d": "succeeded"}, T0)
        empty = _rollout(session, V3, {"dev-e": "queued"}, T0)

    with db() as session:
        totals = transfer_totals(session, [rid, other, empty])

    # dev-d's transfer is of another target, dev-old was already on it, dev-silent said nothing.
    assert totals[rid] == TransferTotals(
        bytes_sent=1_200 + 4_000 + FULL, bytes_full=3 * FULL,
        transfers={"delta": 1, "compressed": 1, "full": 1})
    assert totals[other] == TransferTotals(bytes_sent=FULL, bytes_full=FULL,
                                           transfers={"full": 1})
    assert totals[empty] == TransferTotals()


@pytest.mark.integration
def test_the_latest_transfer_of_a_target_wins_and_an_offline_will_changes_nothing(
    db: sessionmaker,
) -> None:
    with db.begin() as session:
        rid = _rollout(session, V2, {"dev-a": "succeeded"}, T0)
        _report(session, "dev-a", V2, _transfer("full", FULL), T0 + timedelta(seconds=1))
        _report(session, "dev-a", V2, _transfer("delta", 900), T0 + timedelta(seconds=2))
    with db.begin() as session:  # a stale will (the broker's) carries an old transfer
        _report(session, "dev-a", V2, _transfer("full", FULL), T0 + timedelta(seconds=3),
                online=False)

    with db() as session:
        rows = session.scalars(select(DeviceTransfer)).all()
        totals = transfer_totals(session, [rid])[rid]

    assert [(r.device_id, r.target, r.how, r.bytes_received) for r in rows] == [
        ("dev-a", V2, "delta", 900)]
    assert (totals.bytes_sent, totals.bytes_full, totals.transfers) == (900, FULL, {"delta": 1})


def test_no_rollout_ids_need_no_query() -> None:
    assert transfer_totals(None, []) == {}  # type: ignore[arg-type]


def _row() -> Rollout:
    return Rollout(id=7, target=V2, group_name=None, tags=[], policy={"waves_pct": [100]},
                   status="completed", current_wave=0, wave_started_at=1.0, reason=None,
                   created_by="test")


def test_summarize_reports_the_sums_it_is_given_and_zero_without() -> None:
    rows = [RolloutDevice(rollout_id=7, device_id="d", position=0, wave=0, phase="succeeded")]
    given = summarize(_row(), rows, transfers=TransferTotals(1_200, FULL, {"delta": 1}))
    without = summarize(_row(), rows)

    assert (given.bytes_sent, given.bytes_full, given.transfers) == (1_200, FULL, {"delta": 1})
    assert given.to_json()["bytes_sent"] == 1_200
    assert (without.bytes_sent, without.bytes_full, without.transfers) == (0, 0, {})


@pytest.mark.parametrize(("sent", "full", "text"), [
    (1_234_567, 5_800_000, "1.2 MB of 5.8 MB full (21 %)"),
    (900, 5_800, "900 B of 5.8 kB full (16 %)"),
    (3_000_000_000, 3_000_000_000, "3.0 GB of 3.0 GB full (100 %)"),
    (0, 0, "none reported yet"),
])  # fmt: skip
def test_bytes_text_reads_as_an_operator_expects(sent: int, full: int, text: str) -> None:
    assert bytes_text(sent, full) == text


def test_the_cli_shows_the_bytes_and_how_they_arrived() -> None:
    summary = summarize(_row(), [], transfers=TransferTotals(1_234_567, 5_800_000,
                                                             {"delta": 3, "full": 1}))
    text = render_rollout(summary.to_json())
    older_server = {k: v for k, v in summary.to_json().items()
                    if k not in ("bytes_sent", "bytes_full", "transfers")}

    assert "bytes sent 1.2 MB of 5.8 MB full (21 %) (delta 3, full 1)" in text
    assert "bytes sent" not in render_rollout(older_server)
