"""`/console/pipeline` over the real app and SQLite with seeded runs: the list, a run's
timeline, gates and canary checks, and the Approve button (operators, awaiting approval)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.console.pipeline import StateSpan, state_spans, timeline_chart
from server.pipeline import service
from tests.server.api.test_pipeline_api import T0, PipelineWorld, path_to, pipeline_world, seed_run
from tests.server.console.support import console_login, console_post

pytestmark = [pytest.mark.pipeline]

GATES = [
    {"name": "heldout_accuracy_min", "metric": "heldout_accuracy", "kind": "value",
     "direction": "min", "value": 0.962, "threshold": 0.9, "champion_value": None,
     "passed": True, "detail": "0.962 >= 0.9"},
    {"name": "fleet_change_min", "metric": "fleet_accuracy", "kind": "change",
     "direction": "min", "value": -0.031, "threshold": 0.0, "champion_value": 0.95,
     "passed": False, "detail": "-0.031 < +0"},
]
CHECKS = [{"at": T0 + 75, "verdict": "inconclusive", "reason": "too few inferences",
           "evidence": [{"group": "lab", "canary_accuracy": 0.91, "control_accuracy": 0.93}]}]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineWorld]:
    with pipeline_world(tmp_path_factory.mktemp("pipeline-console")) as w:
        yield w


def browser(world: PipelineWorld, role: str) -> TestClient:
    return console_login(TestClient(world.app, follow_redirects=False), world.tokens[role])


def test_the_runs_page_lists_model_status_trigger_candidate_and_reason(world: PipelineWorld) -> None:
    run_id = seed_run(world.session_factory, "listed", "refused")

    page = browser(world, "viewer").get("/console/pipeline")

    assert page.status_code == 200
    row = re.search(rf'<tr><td><a href="/console/pipeline/{run_id}">#{run_id}</a></td>(.*?)</tr>',
                    page.text)
    assert row is not None, page.text
    assert row.group(1).startswith('<td>listed</td><td><span class="status aborted">refused</span>')
    assert "<td>manual (ops)</td>" in row.group(1) and "<td>entered refused</td>" in row.group(1)
    assert '<a href="/console/pipeline">Pipeline</a>' in page.text


def test_a_run_page_draws_its_states_gates_and_canary_checks(world: PipelineWorld) -> None:
    run_id = seed_run(world.session_factory, "drawn", "canary",
                      results={"gates": GATES, "canary": {"checks": CHECKS}},
                      candidate_version=2, candidate_target="drawn/2/model.int8.onnx")

    page = browser(world, "viewer").get(f"/console/pipeline/{run_id}")

    assert page.status_code == 200
    states = re.findall(r'<g class="state-row" data-status="([a-z_]+)">', page.text)
    assert states == list(path_to("canary"))
    assert "10 s</text>" in page.text and "so far</text>" in page.text  # 10 s per seeded state
    assert "<td>heldout_accuracy_min</td><td>0.962</td><td>0.9</td>" in page.text
    assert '<td>-0.031</td><td>0</td><td>0.95</td><td><span class="status aborted">fail' in page.text
    assert "<td>inconclusive</td><td>too few inferences</td><td>lab: 0.91 vs 0.93</td>" in page.text
    assert "drawn/2/model.int8.onnx" in page.text
    steps = re.search(r'<table id="run-timeline">.*?</table>', page.text)
    assert steps is not None
    assert steps.group(0).count("<tr><td>2023-11-14 22:1") == len(path_to("canary"))


def test_the_approve_button_is_for_operators_on_runs_awaiting_approval(
        world: PipelineWorld) -> None:
    waiting = seed_run(world.session_factory, "waiting", "awaiting_approval")
    signed = seed_run(world.session_factory, "signed", "signed")
    operator, viewer = browser(world, "operator"), browser(world, "viewer")

    assert 'id="btn-approve"' in operator.get(f"/console/pipeline/{waiting}").text
    assert 'id="btn-approve"' not in viewer.get(f"/console/pipeline/{waiting}").text
    assert 'id="btn-approve"' not in operator.get(f"/console/pipeline/{signed}").text
    assert (f'action="/console/pipeline/{waiting}/approve"'
            in operator.get(f"/console/pipeline/{waiting}").text)


def test_posting_approve_records_the_operator_and_hides_the_button(world: PipelineWorld) -> None:
    run_id = seed_run(world.session_factory, "approved", "awaiting_approval")
    operator = browser(world, "operator")

    posted = console_post(operator, f"/console/pipeline/{run_id}/approve")

    assert posted.status_code == 303 and posted.headers["location"] == f"/console/pipeline/{run_id}"
    assert service.get_run(world.session_factory, run_id)["approved_by"] == "operator-1"
    after = operator.get(f"/console/pipeline/{run_id}").text
    assert 'id="btn-approve"' not in after and "Approved by operator-1" in after


def test_approval_refusals_are_pages_with_the_error_status(world: PipelineWorld) -> None:
    run_id = seed_run(world.session_factory, "not-yet", "gated")

    wrong_state = console_post(browser(world, "operator"), f"/console/pipeline/{run_id}/approve")
    by_viewer = console_post(browser(world, "viewer"), f"/console/pipeline/{run_id}/approve")
    unknown = browser(world, "viewer").get("/console/pipeline/999999")

    assert wrong_state.status_code == 409 and "gated, not awaiting_approval" in wrong_state.text
    assert by_viewer.status_code == 403
    assert unknown.status_code == 404 and "999999" in unknown.text
    assert service.get_run(world.session_factory, run_id)["approved_by"] is None


def test_without_a_cookie_the_pages_send_people_to_the_login(world: PipelineWorld) -> None:
    anonymous = TestClient(world.app, follow_redirects=False,
                           headers={"origin": "http://testserver"})  # a same-origin browser

    for method, path in (("GET", "/console/pipeline"), ("GET", "/console/pipeline/1"),
                         ("POST", "/console/pipeline/1/approve")):
        response = anonymous.request(method, path)
        assert response.status_code == 303, (method, path)
        assert response.headers["location"] == "/console/login"


def test_state_spans_end_each_state_at_the_next_and_the_last_at_now_or_never() -> None:
    timeline = [{"at": 100.0, "status": "triggered"}, {"at": 104.0, "status": "training"},
                {"at": 110.0, "status": "training"}, {"at": 160.0, "status": "evaluating"}]

    running = state_spans(timeline, now=200.0)
    ended = state_spans([*timeline, {"at": 170.0, "status": "refused"}], now=900.0)

    assert running == [StateSpan("triggered", 100.0, 104.0, False),
                       StateSpan("training", 104.0, 160.0, False),
                       StateSpan("evaluating", 160.0, 200.0, True)]
    assert ended[-1] == StateSpan("refused", 170.0, 170.0, False)
    assert [s.duration_s for s in ended] == [4.0, 56.0, 10.0, 0.0]
    assert state_spans([], now=1.0) == []
    assert 'data-status="training"' in timeline_chart(running) and "56 s</text>" in timeline_chart(running)
