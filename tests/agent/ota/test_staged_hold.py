"""Download now, switch later: an update held in `staged` switches only inside its window
(UTC, the agent's clock) or on a `switch` command, survives a restart and a SIGKILL while
it waits, and can be cancelled or superseded before it switched.

The pure part (`machine.holds`, `begin_hold`, `release_hold`, recovery) is a table; the
runner part drives a real agent (real HTTP repository, onnxruntime) whose clock the test
moves: real time plus an offset, so health windows still elapse.
"""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent import Agent
from agent.config import dump_toml
from agent.ota.machine import (
    UpdateRecord,
    begin_hold,
    holds,
    new_update,
    recover,
    release_hold,
    transition,
)
from edgeops.errors import PayloadError, UpdateError
from edgeops.messages import Command, decode
from edgeops.schemas import HealthPolicy
from tests.agent.ota.shifted_clock import ShiftedClock
from tests.agent.ota.support import (
    ControlledRepository,
    OtaSetup,
    RepoServer,
    active_model_sha,
    make_setup,
    probe,
    read_state,
)
from tests.cli_support import REPO_ROOT

pytestmark = [pytest.mark.ota]

WINDOW = "02:00-04:00"
DAY = calendar.timegm((2026, 12, 2, 0, 0, 0))
LENIENT = HealthPolicy(max_confidence_drop=0.5, max_p95_latency_ratio=10, latency_slack_ms=50)


def staged(switch: str = "window", window: str | None = WINDOW) -> UpdateRecord:
    record = new_update("m/2/model.fp32.onnx", "b", "a", "m/1/model.fp32.onnx", 0.0,
                        switch=switch, switch_window=window)  # type: ignore[arg-type]
    return transition(transition(record, "ok", 1.0), "ok", 2.0)


# The pure machine -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("switch", "window", "time_of_day_s", "held"),
    [
        ("window", WINDOW, 1 * 3600, True),
        ("window", WINDOW, 2 * 3600, False),
        ("window", WINDOW, 4 * 3600, True),
        ("window", "22:00-02:00", 1 * 3600, False),  # crosses midnight
        ("window", "22:00-02:00", 12 * 3600, True),
        ("command", None, 3 * 3600, True),  # no window opens a command hold
        ("now", None, 1 * 3600, False),
    ],
)
def test_a_staged_update_holds_outside_its_window_or_until_a_command(
    switch: str, window: str | None, time_of_day_s: int, held: bool
) -> None:
    assert holds(staged(switch, window), DAY + time_of_day_s) is held


def test_only_the_staged_state_holds() -> None:
    record = new_update("m/2", "b", "a", "m/1", 0.0, switch="command")
    assert not holds(record, DAY)  # downloading
    assert not holds(transition(staged("command", None), "ok", 3.0), DAY)  # smoke_testing


def test_a_hold_survives_a_restart_without_using_up_attempts() -> None:
    record = begin_hold(staged(), DAY)
    assert record.reason is not None and WINDOW in record.reason
    for boot in range(10):  # nightly reboots while it waits
        record = recover(record, DAY + boot, max_attempts=3, max_boots=3)
        assert (record.state, record.attempts) == ("staged", 1)
        record = begin_hold(record, DAY + boot)
        assert record.attempts == 0
    assert UpdateRecord.from_json(record.to_json()) == record  # the journal keeps the hold
    assert holds(record, DAY + 3600)


def test_release_hold_switches_as_soon_as_staged() -> None:
    record = release_hold(begin_hold(staged("command", None), DAY), DAY + 1)
    assert (record.switch, record.switch_window, record.reason) == ("now", None, None)
    assert not holds(record, DAY + 1)
    assert transition(record, "ok", DAY + 2).state == "smoke_testing"


@pytest.mark.parametrize(
    ("switch", "window"),
    [("window", None), ("now", WINDOW), ("window", "25:00-01:00"), ("later", None)],
)
def test_a_bad_switch_is_refused(switch: str, window: str | None) -> None:
    with pytest.raises(UpdateError):
        new_update("m/2", "b", "a", "m/1", 0.0, switch=switch, switch_window=window)  # type: ignore[arg-type]
    saved = staged().to_json() | {"switch": switch, "switch_window": window}
    with pytest.raises(UpdateError):
        UpdateRecord.from_json(saved)


@pytest.mark.parametrize(
    "payload",
    [
        {"kind": "update", "target": "m/2", "switch": "window"},  # no window
        {"kind": "update", "target": "m/2", "switch": "window", "switch_window": "2-4"},
        {"kind": "update", "target": "m/2", "switch_window": WINDOW},  # window without mode
        {"kind": "update", "target": "m/2", "switch": "soon"},
        {"kind": "rollback", "switch": "command"},
        {"kind": "switch"},  # a switch names its target
    ],
)
def test_bad_switch_commands_are_payload_errors(payload: dict) -> None:
    with pytest.raises(PayloadError):
        decode(Command, json.dumps({"schema": 1, **payload}).encode())


def test_a_command_without_switch_fields_is_the_payload_it_always_was() -> None:
    update = Command(command_id="c" * 8, kind="update", target="m/2", issued_at=1.0)
    assert json.loads(update.model_dump_json(by_alias=True, exclude_none=True)) == {
        "schema": 1, "command_id": "c" * 8, "kind": "update", "target": "m/2", "issued_at": 1.0,
    }


# A real agent, its clock moved by the test -------------------------------------------------


CLOSED, OPEN = 1 * 3600.0, 2 * 3600.0 + 60  # 01:00 and 02:01 UTC for WINDOW


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, OtaSetup, dict]]:
    tmp = tmp_path_factory.mktemp("hold")
    repository = ControlledRepository(tmp / "repo")
    with RepoServer(repository.root_dir) as server:
        setup = make_setup(tmp, server, repository)
        targets = {"v2": setup.publish(2, health=LENIENT), "v3": setup.publish(3, health=LENIENT)}
        broken, data = setup.release(4, health=LENIENT)
        wrong = setup.release(5)[0].golden  # golden vectors of another model
        targets["broken"] = repository.add_release(broken.model_copy(update={"golden": wrong}),
                                                   data)
        yield tmp, setup, targets


@pytest.fixture
def home(repo: tuple[Path, OtaSetup, dict], tmp_path: Path) -> tuple[OtaSetup, dict]:
    """A fresh copy of the v1 home for each test."""
    import shutil

    _tmp, setup, targets = repo
    shutil.copytree(setup.home, tmp_path / "home")
    return OtaSetup(setup.repo, setup.server, tmp_path / "home", setup.weights), targets


@contextmanager
def running(setup: OtaSetup, clock: ShiftedClock) -> Iterator[Agent]:
    agent = Agent(setup.config(), clock=clock).start()
    try:
        yield agent
    finally:
        agent.stop(timeout_s=2)


def stays(agent: Agent, state: str, seconds: float) -> bool:
    """`agent` reports `state` for `seconds` (and serves v1 meanwhile)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if agent.state != state or agent.predict(probe()).version != 1:
            return False
        time.sleep(0.05)
    return True


def window_update(target: str, switch: str = "window") -> Command:
    return Command(kind="update", target=target, switch=switch,  # type: ignore[arg-type]
                   switch_window=WINDOW if switch == "window" else None)


@pytest.mark.integration
def test_a_staged_update_switches_only_in_its_window(home: tuple[OtaSetup, dict]) -> None:
    setup, targets = home
    clock = ShiftedClock(CLOSED)
    with running(setup, clock) as agent:
        status = agent.handle_command(window_update(targets["v2"]))

        assert (status.state, status.target, status.version) == ("staged", targets["v2"], 1)
        assert status.reason is not None and WINDOW in status.reason
        assert stays(agent, "staged", 1.5)  # the worker ticks each second: no switch
        saved = read_state(setup.home)
        assert saved is not None and (saved["state"], saved["switch_window"]) == ("staged", WINDOW)

        clock.set(OPEN)
        assert agent.wait_for_version(2, timeout_s=15)
    assert agent.update_record is not None
    chain = [s for s, _ in agent.update_record.history]
    assert chain[chain.index("staged"):] == [
        "staged", "hold", "smoke_testing", "switching", "health_window", "committed"
    ]
    assert active_model_sha(setup.home)[0] == targets["v2"]


@pytest.mark.integration
def test_a_hold_survives_an_agent_restart(home: tuple[OtaSetup, dict]) -> None:
    setup, targets = home
    clock = ShiftedClock(CLOSED)
    with running(setup, clock) as agent:
        assert agent.handle_command(window_update(targets["v2"])).state == "staged"

    # The new agent resumes the saved update: verifies the slot, holds again.
    with running(setup, clock) as agent:
        assert agent.wait_for_state("staged", timeout_s=10)
        assert stays(agent, "staged", 1.5)
        record = agent.update_record
        assert record is not None and record.attempts == 0 and record.state == "staged"
        clock.set(OPEN)
        assert agent.wait_for_version(2, timeout_s=15)


@pytest.mark.integration
def test_a_command_hold_switches_on_the_switch_command_for_its_target(
    home: tuple[OtaSetup, dict],
) -> None:
    setup, targets = home
    clock = ShiftedClock(OPEN)  # a command hold ignores windows
    with running(setup, clock) as agent:
        assert agent.handle_command(window_update(targets["v2"], "command")).state == "staged"
        agent.handle_command(Command(kind="switch", target=targets["v3"]))  # not this update
        assert stays(agent, "staged", 1.0)

        status = agent.handle_command(Command(kind="switch", target=targets["v2"]))

        assert status.state in ("health_window", "committed") and status.version == 2
        assert agent.wait_for_state("committed", timeout_s=10)


@pytest.mark.integration
def test_a_switch_command_also_ends_a_window_hold_early(home: tuple[OtaSetup, dict]) -> None:
    setup, targets = home
    with running(setup, ShiftedClock(CLOSED)) as agent:
        assert agent.handle_command(window_update(targets["v2"])).state == "staged"
        agent.handle_command(Command(kind="switch", target=targets["v2"]))
        assert agent.wait_for_version(2, timeout_s=15)


@pytest.mark.integration
def test_rollback_cancels_and_a_newer_update_supersedes_a_held_update(
    home: tuple[OtaSetup, dict],
) -> None:
    setup, targets = home
    with running(setup, ShiftedClock(CLOSED)) as agent:
        assert agent.handle_command(window_update(targets["v2"])).state == "staged"
        cancelled = agent.handle_command(Command(kind="rollback", target=targets["v2"]))
        assert (cancelled.state, cancelled.version) == ("update_failed", 1)
        assert "cancelled before the switch" in (cancelled.reason or "")

        assert agent.handle_command(window_update(targets["v2"], "command")).state == "staged"
        newer = agent.handle_command(Command(kind="update", target=targets["v3"]))
        assert agent.wait_for_version(3, timeout_s=15), newer
    history = [s for s, _ in agent.update_record.history] if agent.update_record else []
    assert history[0] == "downloading" and history[-1] == "committed"


@pytest.mark.integration
def test_a_release_that_cannot_run_fails_when_staged_not_in_its_window(
    home: tuple[OtaSetup, dict],
) -> None:
    setup, targets = home
    with running(setup, ShiftedClock(CLOSED)) as agent:
        status = agent.handle_command(window_update(targets["broken"]))
    assert (status.state, status.version) == ("update_failed", 1)
    assert agent.update_record is not None
    assert [s for s, _ in agent.update_record.history][-2:] == ["staged", "update_failed"]


# SIGKILL while it waits ---------------------------------------------------------------------


def run_driver(home: Path, target: str, *args: str, fault: str | None = None,
               timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEOPS_AGENT_")}
    if fault is not None:
        env["EDGEOPS_AGENT_FAULT_POINT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "tests.agent.ota.fault_driver", "--home", str(home),
         "--target", target, *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=90,
    )


def clock_offset(time_of_day_s: float) -> str:
    return str(ShiftedClock(time_of_day_s).offset)


@pytest.mark.integration
@pytest.mark.faults
def test_sigkill_while_staged_keeps_the_hold_and_switches_in_the_window(
    home: tuple[OtaSetup, dict],
) -> None:
    setup, targets = home
    config = setup.config(health_window_s=0.4, health_min_samples=5)
    (setup.home / "agent.toml").write_text(dump_toml(config))
    window = ["--switch-window", WINDOW]

    killed = run_driver(setup.home, targets["v2"], *window,
                        "--clock-offset", clock_offset(CLOSED), fault="staged:hold")
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved = read_state(setup.home)
    assert saved is not None and saved["state"] == "staged" and saved["switch_window"] == WINDOW

    waited = run_driver(setup.home, targets["v2"], "--clock-offset", clock_offset(CLOSED),
                        "--timeout", "3")
    assert waited.returncode == 2, waited.stderr[-2000:]  # still waiting when it gave up
    saved = read_state(setup.home)
    assert saved is not None and saved["state"] == "staged"
    assert active_model_sha(setup.home)[0] != targets["v2"]

    switched = run_driver(setup.home, targets["v2"], "--clock-offset", clock_offset(OPEN))
    assert switched.returncode == 0, switched.stderr[-2000:]
    final = json.loads(switched.stdout.strip().splitlines()[-1])
    assert final["state"] == "committed" and final["release"] == targets["v2"]
    assert active_model_sha(setup.home)[0] == targets["v2"]
