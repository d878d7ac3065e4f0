"""The rollout controller's TRANSITIONS table is the law: a scenario table that walks every
row of it through `decide` and `apply_request`, and refusals of every move it does not list.

Each scenario: the status the rollout starts in, the steps (an operator request, or what
the devices report followed by a few controller ticks), and the exact chain of statuses,
recorded at the controller's one door for status changes (`_move`), so a tick that moves
twice (running -> aborting -> aborted) shows both moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from itertools import pairwise

import pytest

import server.rollouts.controller as controller
from server.rollouts.controller import (
    REQUESTED_STATUS,
    TRANSITIONS,
    DeviceObservation,
    RolloutPolicy,
    RolloutState,
    RolloutStatus,
    apply_request,
    assign_waves,
    decide,
)
from server.rollouts.errors import RolloutStateError

pytestmark = pytest.mark.rollouts

T = "digits/2/int8/model.onnx"
OLD = "digits/1/int8/model.onnx"
DEVICES = ("d000", "d001")
TICKS_PER_STEP = 3

# What every device reports in an "observe" step: (release, state).
REPORTS: dict[str, tuple[str, str]] = {
    "commit": (T, "committed"),  # the update landed and passed its health window
    "fail": (OLD, "update_failed"),  # refused before the switch
    "revert": (OLD, "running"),  # back on the old release (after a rollback)
}


CHAIN: list[str] = []  # statuses `_move` went to, filled by the `recorded` fixture


@pytest.fixture(autouse=True)
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_move = controller._move

    def move(rollout: RolloutState, to: RolloutStatus, **changes: object) -> RolloutState:
        moved = real_move(rollout, to, **changes)
        CHAIN.append(to)
        return moved

    monkeypatch.setattr(controller, "_move", move)
    CHAIN.clear()
    yield
    CHAIN.clear()


class World:
    """One rollout over two devices, a clock and the devices' latest reports."""

    def __init__(self) -> None:
        policy = RolloutPolicy(waves_pct=(100.0,), soak_s=0, device_timeout_s=60,
                               failure_min_count=1)
        devices = {a.device_id: a for a in assign_waves(list(DEVICES), policy.waves_pct)}
        self.rollout = RolloutState(id=7, target=T, status="running", policy=policy,
                                    devices=devices)
        self.now = 1.0
        self.observations = {d: self.report(OLD, "running") for d in DEVICES}

    def report(self, release: str, state: str) -> DeviceObservation:
        return DeviceObservation(online=True, state=state, release=release, target=T,
                                 status_at=self.now)

    def tick(self) -> None:
        self.now += 1.0
        self.rollout = decide(self.rollout, self.observations, self.now).rollout

    def request(self, name: str) -> None:
        self.now += 1.0
        self.rollout = apply_request(self.rollout, name, "op", self.now)  # type: ignore[arg-type]

    def observe(self, kind: str) -> None:
        self.now += 0.5
        self.observations = {d: self.report(*REPORTS[kind]) for d in DEVICES}
        for _ in range(TICKS_PER_STEP):
            self.tick()


def started(status: str) -> World:
    """A world whose rollout has sent its update and now is in `status`."""
    world = World()
    world.tick()  # the single wave starts: both devices are sent the update
    if status == "paused":
        world.request("pause")
    elif status == "aborting":
        world.now += 0.5  # both devices land on the target...
        world.observations = {d: world.report(*REPORTS["commit"]) for d in DEVICES}
        world.tick()  # ...and are judged succeeded (the wave passes, soak begins)
        world.request("abort")  # so aborting must roll them back
    assert world.rollout.status == status
    CHAIN.clear()
    return world


def run(world: World, steps: list[tuple[str, str]]) -> list[str]:
    """Perform `steps`; the chain of statuses from the one the rollout started in."""
    chain = [world.rollout.status]
    CHAIN.clear()
    for action, arg in steps:
        if action == "request":
            world.request(arg)
        else:
            world.observe(arg)
    assert CHAIN[-1:] in ([], [world.rollout.status])
    return chain + CHAIN


SCENARIOS: list[tuple[str, str, list[tuple[str, str]], list[str]]] = [
    ("healthy fleet completes", "running", [("observe", "commit")],
     ["running", "completed"]),
    ("operator pauses", "running", [("request", "pause")],
     ["running", "paused"]),
    ("operator aborts, devices come back", "running",
     [("request", "abort"), ("observe", "revert")],
     ["running", "aborting", "aborted"]),
    ("failures over the threshold abort", "running", [("observe", "fail")],
     ["running", "aborting", "aborted"]),
    ("operator resumes", "paused", [("request", "resume")],
     ["paused", "running"]),
    ("resume, then the fleet completes", "paused",
     [("request", "resume"), ("observe", "commit")],
     ["paused", "running", "completed"]),
    ("operator aborts a paused rollout", "paused", [("request", "abort")],
     ["paused", "aborting"]),
    ("failures reported while paused abort", "paused", [("observe", "fail")],
     ["paused", "aborting", "aborted"]),
    ("rolled back devices end the abort", "aborting", [("observe", "revert")],
     ["aborting", "aborted"]),
    ("devices still on the target keep it aborting", "aborting", [("observe", "commit")],
     ["aborting"]),
]


@pytest.mark.parametrize(
    ("start", "steps", "chain"),
    [pytest.param(start, steps, chain, id=name) for name, start, steps, chain in SCENARIOS],
)
def test_scenario_follows_the_chain_of_statuses(
    start: str, steps: list[tuple[str, str]], chain: list[str]
) -> None:
    world = started(start)

    observed = run(world, steps)

    assert observed == chain


def test_scenarios_cover_every_row_of_the_table() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    walked = {move for _, _, _, chain in SCENARIOS for move in pairwise(chain)}

    assert walked == table


def test_every_chain_move_is_in_the_table() -> None:
    for name, start, steps, _ in SCENARIOS:
        for a, b in pairwise(run(started(start), steps)):
            assert b in TRANSITIONS[a], f"{name}: {a} -> {b} is not in TRANSITIONS"


@pytest.mark.parametrize(
    ("status", "wanted"),
    [
        (status, wanted)
        for status in TRANSITIONS
        for wanted, to in REQUESTED_STATUS.items()
        if to not in TRANSITIONS[status]
    ],
)
def test_request_not_in_the_table_is_refused(status: RolloutStatus, wanted: str) -> None:
    rollout = replace(World().rollout, status=status)

    with pytest.raises(RolloutStateError, match=f"cannot {wanted} rollout 7: it is {status}"):
        apply_request(rollout, wanted, "op", 1.0)  # type: ignore[arg-type]


def test_unknown_request_is_refused_by_name() -> None:
    with pytest.raises(RolloutStateError, match="unknown request 'restart'"):
        apply_request(World().rollout, "restart", "op", 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "to"),
    [
        (status, to)
        for status in TRANSITIONS
        for to in TRANSITIONS
        if to not in TRANSITIONS[status]
    ],
)
def test_move_not_in_the_table_is_refused(status: RolloutStatus, to: RolloutStatus) -> None:
    rollout = replace(World().rollout, status=status)

    with pytest.raises(RolloutStateError, match=f"cannot go from {status} to {to}"):
        controller._move(rollout, to)


@pytest.mark.parametrize("status", ["completed", "aborted"])
def test_finished_rollout_does_not_move(status: RolloutStatus) -> None:
    world = World()
    world.rollout = replace(world.rollout, status=status)

    assert run(world, [("observe", "commit"), ("observe", "fail")]) == [status]
