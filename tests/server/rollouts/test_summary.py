"""`summarize`: what each wave reads as the rollout runs, completes or is aborted (pure)."""

from __future__ import annotations

import pytest

from server.db.tables import Rollout, RolloutDevice
from server.rollouts.summary import summarize

pytestmark = pytest.mark.rollouts


def rollout(status: str, current_wave: int, *, soaking: bool = False) -> Rollout:
    return Rollout(
        id=1, target="m/2/model.onnx", group_name=None, tags=[], policy={"waves_pct": [50, 100]},
        status=status, current_wave=current_wave, wave_started_at=100.0,
        soak_started_at=110.0 if soaking else None, reason=None, created_by="test",
    )


def assignments(phases_per_wave: list[list[str]]) -> list[RolloutDevice]:
    rows: list[RolloutDevice] = []
    for wave, phases in enumerate(phases_per_wave):
        for phase in phases:
            position = len(rows)
            rows.append(RolloutDevice(rollout_id=1, device_id=f"d-{position}", position=position,
                                      wave=wave, phase=phase))
    return rows


@pytest.mark.parametrize(
    ("status", "current_wave", "soaking", "devices", "expected"),
    [
        ("running", 0, False, [["sent"], ["queued"]], ["in_progress", "queued"]),
        ("running", 0, True, [["succeeded"], ["queued"]], ["soaking", "queued"]),
        ("paused", 1, False, [["succeeded"], ["sent"]], ["passed", "in_progress"]),
        ("completed", 1, False, [["succeeded"], ["succeeded"]], ["passed", "passed"]),
        ("aborting", 0, False, [["rollback_sent"], ["skipped"]], ["aborting", "skipped"]),
        ("aborted", 0, False, [["rolled_back"], ["skipped"]], ["aborted", "skipped"]),
        ("aborted", 1, False, [["succeeded"], ["failed"]], ["passed", "aborted"]),
    ],
)
def test_each_wave_says_where_the_rollout_stands(
    status: str, current_wave: int, soaking: bool, devices: list[list[str]], expected: list[str]
) -> None:
    summary = summarize(rollout(status, current_wave, soaking=soaking), assignments(devices))

    assert [w.status for w in summary.waves] == expected
    assert summary.status == status


def test_an_aborted_rollout_never_reads_in_progress() -> None:
    summary = summarize(rollout("aborted", 0), assignments([["rolled_back"], ["skipped"]]))

    assert "in_progress" not in {w.status for w in summary.waves}
    assert summary.to_json()["waves"][0]["status"] == "aborted"


def test_an_aborted_rollout_that_never_started_a_wave_reads_skipped() -> None:
    row = rollout("aborted", 0)
    row.wave_started_at = None

    summary = summarize(row, assignments([["skipped"], ["skipped"]]))

    assert [w.status for w in summary.waves] == ["skipped", "skipped"]
