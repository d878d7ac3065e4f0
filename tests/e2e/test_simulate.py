"""`edgeops simulate`'s refusals, before anything starts, and the rollout watcher it shares
with the scenario engine (the scenarios themselves: tests/e2e/test_scenarios.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeops.exit_codes import ExitCode
from tests.cli_support import run_edgeops

pytestmark = [pytest.mark.e2e]


def test_simulate_stops_at_once_without_mosquitto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgeops.cli import main
    from simulations import mosquitto

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(mosquitto, "SBIN_DIRS", ())
    out = tmp_path / "never"
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--scenario", "baseline", "--devices", "2", "--out", str(out)])
    assert exit_info.value.code == ExitCode.MISSING_DEPENDENCY
    assert time.monotonic() - started < 5
    assert "apt-get install -y mosquitto" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--devices", "0"], "--devices"),
        (["--scenario", "no-such-scenario"], "no-such-scenario"),
    ],
)
def test_simulate_rejects_bad_arguments(tmp_path: Path, args: list[str], complaint: str) -> None:
    result = run_edgeops("simulate", "--out", str(tmp_path / "o"), *args, timeout=120)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_simulate_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = run_edgeops("simulate", "--out", str(tmp_path), timeout=120)
    assert result.returncode == ExitCode.CONFIG
    assert "not empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


class _ScriptedRollouts:
    """Stands in for FleetAPI.rollout: the server's answers, one per poll."""

    def __init__(self, *answers: dict) -> None:
        self._answers = list(answers)

    def rollout(self, rollout_id: int) -> dict:
        return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]


def _rollout(status: str, done: int, failed: int = 0, reason: str | None = None) -> dict:
    waves = [{"index": 1, "devices": 1, "done": min(done, 1), "status": "passed"},
             {"index": 2, "devices": 1, "done": max(done - 1, 0), "status": "in_progress"}]
    return {"id": 3, "target": "digits/1/model.int8.onnx", "status": status, "reason": reason,
            "current_wave": 2, "wave_count": 2, "devices": 2, "done": done, "failed": failed,
            "waves": waves}


def test_watching_a_rollout_shows_each_wave_change_until_it_completes() -> None:
    from simulations.laptop import watch_rollout

    lines: list[str] = []
    api = _ScriptedRollouts(_rollout("running", 1), _rollout("running", 1),
                            _rollout("completed", 2))

    final = watch_rollout(api, 3, timeout_s=5, progress=lines.append)

    assert final["status"] == "completed"
    assert len(lines) == 2  # an unchanged answer prints nothing
    assert lines[-1].strip().startswith("rollout 3 completed, wave 2 of 2")


def test_an_aborted_rollout_fails_the_simulation_with_its_reason() -> None:
    from edgeops.errors import UpdateError
    from simulations.laptop import watch_rollout

    api = _ScriptedRollouts(_rollout("aborted", 1, failed=1, reason="failure threshold reached"))

    with pytest.raises(UpdateError, match=r"rollout 3 of digits/1/model.int8.onnx aborted: "
                                          r"failure threshold reached \(1 of 2 devices failed\)"):
        watch_rollout(api, 3, timeout_s=5, progress=lambda _line: None)


def test_a_stalled_rollout_times_out_naming_where_it_stopped() -> None:
    from edgeops.errors import TransportError
    from simulations.laptop import watch_rollout

    api = _ScriptedRollouts(_rollout("running", 1))

    with pytest.raises(TransportError, match="rollout 3 made no progress for 0 s "
                                             r"\(status running, wave 2 of 2\)"):
        watch_rollout(api, 3, timeout_s=0.3, progress=lambda _line: None)
