"""`edgeops simulate` as a user runs it: real Mosquitto, real server process, real agents."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgeops.exit_codes import ExitCode
from tests.cli_support import run_edgeops

pytestmark = [pytest.mark.skeleton, pytest.mark.e2e, pytest.mark.integration]


def test_simulate_updates_every_device_and_collects_telemetry(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_edgeops(
        "simulate", "--devices", "4", "--epochs", "8", "--out", str(out), "--json", timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    report = json.loads((out / "report.json").read_text())
    assert printed == report
    assert report["succeeded"] is True
    assert len(report["devices"]) == 4
    for device in report["devices"]:
        assert device["version"] == report["published_version"]
        assert device["telemetry_messages"] >= 1
    assert report["fleet_accuracy"] > 0.8
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert "starting Mosquitto" in result.stderr  # progress goes to stderr


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
        main(["simulate", "--devices", "2", "--out", str(out)])
    assert exit_info.value.code == ExitCode.MISSING_DEPENDENCY
    assert time.monotonic() - started < 5
    assert "apt-get install -y mosquitto" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--devices", "0"], "--devices"),
        (["--task", "no-such-task"], "unknown task"),
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
