"""Download now, switch later, on the server side: the policy keys (`switch`,
`switch_windows`) and their validation, the pure controller (a staged device is in
progress, never timed out while it reports staged; the wave waits; each group's window
goes into its update command; abort cancels staged updates; the operator's switch), and
the API / CLI refusals of bad windows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgeops.errors import ConfigError
from edgeops.messages import Command
from server.rollouts.controller import (
    DeviceObservation,
    RolloutPolicy,
    RolloutState,
    assign_waves,
    decide,
    switch_staged,
)
from server.rollouts.errors import RolloutStateError
from tests.server.console.support import console_login, console_post
from tests.server.rollouts.conftest import ApiWorld

pytestmark = [pytest.mark.rollouts, pytest.mark.ota]

T = "digits/2/int8/model.onnx"
OLD = "digits/1/int8/model.onnx"
TIMEOUT_S = 60.0
GROUPS = {"d000": "lab", "d001": "shop", "d002": "lab", "d003": "field"}


# The policy -------------------------------------------------------------------------------


def test_windows_imply_switch_window_and_are_normalized() -> None:
    policy = RolloutPolicy(switch_windows={"lab": " 22:00-02:00", "*": "02:00-04:00"})
    assert policy.switch == "window" and policy.holds
    assert policy.window_for("lab") == "22:00-02:00"
    assert policy.window_for("shop") == policy.window_for(None) == "02:00-04:00"
    assert RolloutPolicy.from_json(policy.to_json()) == policy
    assert RolloutPolicy().switch == "now" and not RolloutPolicy().holds
    assert RolloutPolicy.from_json({"soak_s": 1.0}).switch == "now"  # a policy saved before


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"switch_windows": {"lab": "2am-4am"}}, "HH:MM-HH:MM"),
        ({"switch_windows": {"lab": "02:00-02:00"}}, "starts where it ends"),
        ({"switch": "window"}, "needs switch_windows"),
        ({"switch": "now", "switch_windows": {"lab": "02:00-04:00"}}, "only with switch"),
        ({"switch": "command", "switch_windows": {"lab": "02:00-04:00"}}, "only with switch"),
        ({"switch": "later"}, "switch must be one of"),
        ({"switch_windows": {"": "02:00-04:00"}}, "device groups"),
    ],
)
def test_bad_switch_policies_are_refused(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        RolloutPolicy(**kwargs)


# The pure controller ----------------------------------------------------------------------


def rollout(**policy: object) -> RolloutState:
    values: dict = {"waves_pct": (50.0, 100.0), "soak_s": 0.0, "device_timeout_s": TIMEOUT_S,
                    **policy}
    p = RolloutPolicy(**values)
    devices = {a.device_id: a for a in assign_waves(list(GROUPS), p.waves_pct)}
    return RolloutState(id=7, target=T, status="running", policy=p, devices=devices)


def obs(state: str, at: float, release: str = OLD, *, online: bool = True,
        device_id: str = "d000", reason: str | None = None) -> DeviceObservation:
    return DeviceObservation(online=online, state=state, release=release, target=T,
                             reason=reason, status_at=at, group=GROUPS[device_id])


def fleet(at: float = 0.0) -> dict[str, DeviceObservation]:
    return {d: DeviceObservation(online=True, state="running", release=OLD, status_at=at,
                                 group=g) for d, g in GROUPS.items()}


def first_wave_staged(
    state: RolloutState,
) -> tuple[RolloutState, dict[str, DeviceObservation]]:
    """Wave 1 (d000, d001) sent at 1.0 reported staged at 2.0, judged at 3.0."""
    observations = fleet()
    observations["d000"] = obs("staged", 2.0)
    observations["d001"] = obs("staged", 2.0, device_id="d001")
    return decide(state, observations, 3.0).rollout, observations


def test_each_group_gets_its_window_in_its_update_command() -> None:
    state = rollout(waves_pct=(100.0,), switch_windows={"lab": "02:00-04:00", "*": "22:00-02:00"})

    decision = decide(state, fleet(), 1.0)

    payloads = {(c.switch, c.switch_window): c.device_ids for c in decision.commands}
    assert payloads == {("window", "02:00-04:00"): ("d000", "d002"),
                        ("window", "22:00-02:00"): ("d001", "d003")}
    ids = [c.command_id for c in decision.commands]
    assert len(set(ids)) == 2  # one command id per payload, recorded per device
    for command in decision.commands:
        for device_id in command.device_ids:
            assert decision.rollout.devices[device_id].command_id == command.command_id
        Command(kind="update", target=T, switch=command.switch,
                switch_window=command.switch_window)  # a payload the agent accepts


def test_a_group_without_a_window_waits_for_a_command_and_now_sends_plain_updates() -> None:
    held = decide(rollout(waves_pct=(100.0,), switch_windows={"lab": "02:00-04:00"}), fleet(), 1.0)
    assert {(c.switch, c.switch_window) for c in held.commands} == {
        ("window", "02:00-04:00"), ("command", None)}
    plain = decide(rollout(waves_pct=(100.0,)), fleet(), 1.0)
    assert [(c.switch, c.switch_window) for c in plain.commands] == [(None, None)]


def test_a_staged_device_is_not_timed_out_and_its_wave_waits_for_it() -> None:
    state = decide(rollout(switch="command"), fleet(), 1.0).rollout  # wave 1: d000, d001
    observations = fleet()
    observations["d000"] = obs("staged", 2.0, reason="staged: switches on a switch command")
    observations["d001"] = obs("staged", 2.0, device_id="d001")

    state = decide(state, observations, 3.0).rollout
    assert {state.devices[d].phase for d in ("d000", "d001")} == {"staged"}
    for now in (TIMEOUT_S + 10, 10 * TIMEOUT_S, 100 * TIMEOUT_S):  # far past the timeout
        decision = decide(state, observations, now)
        state = decision.rollout
        assert decision.commands == () and state.status == "running"
        assert state.current_wave == 0 and state.soak_started_at is None  # the wave waits
        assert {state.devices[d].phase for d in ("d000", "d001")} == {"staged"}
    assert state.devices["d000"].reason == "staged: switches on a switch command"
    assert {state.devices[d].phase for d in ("d002", "d003")} == {"queued"}


def test_a_device_that_switches_in_its_window_is_timed_again_then_commits() -> None:
    state = decide(rollout(switch_windows={"*": "02:00-04:00"}), fleet(), 1.0).rollout
    state, observations = first_wave_staged(state)

    observations["d000"] = obs("health_window", 5000.0, release=T)  # its window opened
    state = decide(state, observations, 5000.5).rollout
    assert (state.devices["d000"].phase, state.devices["d000"].sent_at) == ("sent", 5000.5)

    timed_out = decide(state, observations, 5000.5 + TIMEOUT_S + 1).rollout
    assert timed_out.devices["d000"].phase == "timed_out"  # stuck after its switch: counted
    observations["d000"] = obs("committed", 5001.0, release=T)
    observations["d001"] = obs("committed", 5001.0, release=T, device_id="d001")
    state = decide(state, observations, 5002.0).rollout
    assert {state.devices[d].phase for d in ("d000", "d001")} == {"succeeded"}
    assert state.soak_started_at == 5002.0  # the wave passed


def test_a_staged_device_offline_past_the_timeout_times_out() -> None:
    state = decide(rollout(switch="command"), fleet(), 1.0).rollout
    state, observations = first_wave_staged(state)
    observations["d000"] = obs("offline", 10.0, online=False)

    assert decide(state, observations, 10.0 + TIMEOUT_S - 1).rollout.devices["d000"].phase == "staged"
    late = decide(state, observations, 10.0 + TIMEOUT_S + 1).rollout.devices["d000"]
    assert late.phase == "timed_out" and "offline" in (late.reason or "")


def test_a_staged_report_means_nothing_in_a_rollout_that_switches_now() -> None:
    state = decide(rollout(), fleet(), 1.0).rollout
    observations = fleet()
    observations["d000"] = obs("staged", 2.0)
    assert decide(state, observations, 3.0).rollout.devices["d000"].phase == "sent"
    assert decide(state, observations, 1.0 + TIMEOUT_S + 1).rollout.devices["d000"].phase == (
        "timed_out")


def test_staged_devices_take_no_room_in_max_in_flight() -> None:
    state = decide(rollout(waves_pct=(100.0,), switch="command", max_in_flight=2), fleet(),
                   1.0).rollout
    assert [d for d, a in state.devices.items() if a.phase == "sent"] == ["d000", "d001"]
    observations = fleet()
    observations["d000"] = obs("staged", 2.0)
    observations["d001"] = obs("staged", 2.0, device_id="d001")

    decision = decide(state, observations, 3.0)

    assert [c.device_ids for c in decision.commands] == [("d002", "d003")]


def test_abort_cancels_staged_updates_with_a_rollback() -> None:
    state = decide(rollout(switch="command"), fleet(), 1.0).rollout
    state, observations = first_wave_staged(state)
    state = replace(state, status="aborting")

    decision = decide(state, observations, 4.0)

    assert [(c.kind, c.device_ids) for c in decision.commands] == [("rollback", ("d000", "d001"))]
    observations["d000"] = obs("update_failed", 5.0, reason="cancelled before the switch")
    observations["d001"] = obs("update_failed", 5.0, device_id="d001")
    done = decide(decision.rollout, observations, 6.0).rollout
    assert {done.devices[d].phase for d in ("d000", "d001")} == {"rolled_back"}
    assert done.status == "aborted"


def test_the_operator_switch_sends_switch_to_staged_devices_and_times_them_again() -> None:
    state = decide(rollout(switch="command"), fleet(), 1.0).rollout
    state, observations = first_wave_staged(state)

    one = switch_staged(state, ["d001"], "alice", 10.0)
    every = switch_staged(state, None, "alice", 10.0)

    assert [(c.kind, c.target, c.device_ids) for c in one.commands] == [("switch", T, ("d001",))]
    assert [c.device_ids for c in every.commands] == [("d000", "d001")]
    moved = every.rollout.devices["d000"]
    assert (moved.phase, moved.sent_at, moved.reason) == ("sent", 10.0, "switch sent by alice")
    assert every.rollout.devices["d000"].command_id == every.commands[0].command_id
    with pytest.raises(ConfigError, match=r"d002 \(queued\)"):
        switch_staged(state, ["d001", "d002"], "alice", 10.0)
    with pytest.raises(ConfigError, match="not in it"):
        switch_staged(state, ["nope"], "alice", 10.0)
    finished = replace(state, status="aborted")
    with pytest.raises(RolloutStateError, match="aborted"):
        switch_staged(finished, None, "alice", 10.0)
    assert switch_staged(every.rollout, None, "alice", 11.0).commands == ()  # none left


# API and CLI validation -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"switch_windows": {"*": "2-4"}}, 422, "HH:MM-HH:MM"),
        ({"switch_windows": {"*": "25:00-01:00"}}, 422, "not a time of day"),
        ({"switch_windows": {"bad group!": "02:00-04:00"}}, 422, "device groups"),
        ({"switch": "window"}, 422, "needs switch_windows"),
        ({"switch": "now", "switch_windows": {"*": "02:00-04:00"}}, 422, "only with switch"),
        ({"switch": "sometime"}, 422, "switch"),
        ({"switch_windows": {"lab": "02:00-04:00"}}, 400, "no window for group(s) default"),
    ],
)
def test_the_api_refuses_bad_switch_windows(api_world: ApiWorld, body: dict, status: int,
                                            says: str) -> None:
    response = api_world.client.post("/api/rollouts", json={"target": api_world.targets[1],
                                                            **body},
                                     headers=api_world.auth("operator"))
    assert response.status_code == status, response.text
    assert says in response.text


@pytest.mark.integration
def test_the_api_starts_a_windowed_rollout_and_switch_needs_staged_devices(
    api_world: ApiWorld,
) -> None:
    http, op = api_world.client, api_world.auth("operator")
    assert http.put("/api/devices/dev-010/labels", json={"group": "night"},
                    headers=op).status_code == 200
    created = http.post("/api/rollouts", json={
        "target": api_world.targets[1], "group": "night", "switch_windows": {"*": "22:00-02:00"},
    }, headers=op)
    assert created.status_code == 201, created.text
    rollout = created.json()
    assert rollout["policy"]["switch"] == "window"
    assert rollout["policy"]["switch_windows"] == {"*": "22:00-02:00"}
    assert rollout["staged"] == 0 and all("staged" in w for w in rollout["waves"])
    rid = rollout["id"]
    try:
        nothing = http.post(f"/api/rollouts/{rid}/switch", headers=op)
        assert nothing.status_code == 200, nothing.text
        assert nothing.json()["switched"] == []
        named = http.post(f"/api/rollouts/{rid}/switch", json={"devices": ["dev-010"]},
                          headers=op)
        assert named.status_code == 400 and "not staged" in named.json()["detail"]
        bad_id = http.post(f"/api/rollouts/{rid}/switch", json={"devices": ["a b"]}, headers=op)
        assert bad_id.status_code == 422
        viewer = http.post(f"/api/rollouts/{rid}/switch", headers=api_world.auth("viewer"))
        assert viewer.status_code == 403
    finally:
        http.post(f"/api/rollouts/{rid}/abort", headers=op)
    refused = http.post(f"/api/rollouts/{rid}/switch", headers=op)
    assert refused.status_code == 409 and "aborting" in refused.json()["detail"]


@pytest.mark.integration
def test_the_console_offers_switch_only_when_devices_are_staged(api_world: ApiWorld) -> None:
    http, op = api_world.client, api_world.auth("operator")
    assert http.put("/api/devices/dev-011/labels", json={"group": "console"},
                    headers=op).status_code == 200
    created = http.post("/api/rollouts", json={"target": api_world.targets[1],
                                               "group": "console", "switch": "command"},
                        headers=op)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    console_login(http, api_world.tokens["operator"])
    try:
        page = http.get(f"/console/rollouts/{rid}")
        assert page.status_code == 200
        assert 'id="btn-switch" disabled>Switch 0 staged now' in page.text
        switched = console_post(http, f"/console/rollouts/{rid}/switch")
        assert switched.status_code == 303  # nothing staged: nothing sent, no error
        assert http.get(f"/console/rollouts/{rid}/progress").json()["staged"] == 0
    finally:
        console_post(http, "/console/logout")
        http.cookies.clear()
        del http.headers["origin"]
        http.post(f"/api/rollouts/{rid}/abort", headers=op)


@pytest.mark.integration  # the module's api_world app dials its broker in the background
def test_the_cli_refuses_a_bad_switch_window_before_calling_the_server() -> None:
    from click.testing import CliRunner

    from edgeops.cli import root

    for value, says in (("lab", "GROUP=HH:MM-HH:MM"), ("lab=2am", "HH:MM-HH:MM"),
                        ("=02:00-04:00", "GROUP=HH:MM-HH:MM")):
        result = CliRunner().invoke(root, [
            "rollout", "start", "--release", T, "--switch-window", value,
            "--server", "http://127.0.0.1:9", "--token-file", "-",
        ], input="token\n")
        assert result.exit_code == 2, result.output
        assert says in result.output


@pytest.mark.integration
def test_the_console_starts_a_rollout_that_switches_in_its_windows(api_world: ApiWorld) -> None:
    http, op = api_world.client, api_world.auth("operator")
    assert http.put("/api/devices/dev-012/labels", json={"group": "windows"},
                    headers=op).status_code == 200
    console_login(http, api_world.tokens["operator"])
    try:
        assert 'id="start-windows"' in http.get("/console/rollouts").text
        bad = console_post(http, "/console/rollouts", target=api_world.targets[1],
                           group="windows", switch="window", switch_windows="windows=2am")
        started = console_post(http, "/console/rollouts", target=api_world.targets[1],
                               group="windows", switch="window",
                               switch_windows="windows=02:00-04:00, *=22:00-01:00")
    finally:
        console_post(http, "/console/logout")
        http.cookies.clear()
        del http.headers["origin"]

    assert bad.status_code == 422 and "HH:MM-HH:MM" in bad.text
    assert started.status_code == 303, started.text
    rid = int(started.headers["location"].rsplit("/", 1)[1])
    try:
        policy = http.get(f"/api/rollouts/{rid}", headers=op).json()["policy"]
        assert policy["switch"] == "window"
        assert policy["switch_windows"] == {"windows": "02:00-04:00", "*": "22:00-01:00"}
    finally:
        http.post(f"/api/rollouts/{rid}/abort", headers=op)
