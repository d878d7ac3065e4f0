"""The monitor console page in headless Chromium (Debian's `chromium`, driven by Playwright):
monitor windows and a drift event are seeded through the monitor's own store into a real
SQLite server home; a viewer opens the model's page and sees the cohorts, the drift event
and the charts. The screenshot lands in test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.app.build import build_app
from server.app.home import init_home
from server.auth.tokens import create_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.monitoring import store
from server.monitoring.detector import CohortScore, CohortState, MonitorEvent
from simulations.mosquitto import MosquittoBroker
from tests.cli_support import REPO_ROOT
from tests.server.helpers import live_server

pytestmark = [pytest.mark.monitor, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
RELEASE = "digits/1/model.int8.onnx"
WINDOW_S = 60.0
T0 = 1_790_000_000.0
FEATURES = 64
DRIFTED = [27, 28, 35]  # the features the seeded drift moves


def _score(cohort: str, i: int, drifted: bool) -> CohortScore:
    psi = [0.01 + 0.001 * f for f in range(FEATURES)]
    if drifted:
        for rank, f in enumerate(DRIFTED):
            psi[f] = 0.9 - 0.2 * rank
    return CohortScore(
        cohort=cohort, count=400 + 10 * i, verdict="drift" if drifted else "ok",
        scores={"psi": psi}, p_values=[0.5] * FEATURES,
        adjusted_p=[1e-6 if drifted and f in DRIFTED else 0.9 for f in range(FEATURES)],
        thresholds={"psi": [0.2] * FEATURES}, drifted_features=DRIFTED if drifted else [],
        drifted_share=len(DRIFTED) / FEATURES if drifted else 0.0, prior_shift=0.01,
        estimated_accuracy=0.86 if drifted else 0.95, naive_accuracy=0.97,
        realised_accuracy=(0.80 if drifted else 0.94) if i % 2 == 0 else None,
        feedback_count=40 if i % 2 == 0 else 0, evidence=3.0 if drifted else -1.0,
    )


def seed(factory: object) -> None:
    """Twelve windows for two groups; group `east` drifts from window 8 on."""
    with factory.begin() as session:  # type: ignore[attr-defined]
        for i in range(12):
            start = T0 + i * WINDOW_S
            for group in ("east", "west"):
                drifted = group == "east" and i >= 8
                score = _score(f"{RELEASE}@{group}", i, drifted)
                store.save_score(session, score, release=RELEASE, group_name=group,
                                 window_start=start, window_end=start + WINDOW_S, devices=3)
        cohort = f"{RELEASE}@east"
        event = MonitorEvent("drift_detected", cohort, {
            "cohort": cohort, "windows": ["8", "9"], "count": 480, "features": DRIFTED,
            "drifted_share": round(len(DRIFTED) / FEATURES, 4),
            "scores": {"psi": [0.9, 0.7, 0.5]}, "thresholds": {"psi": [0.2, 0.2, 0.2]},
            "adjusted_p": [1e-6] * 3, "prior_shift": 0.01, "prior_adjusted_p": 0.9,
            "cusum": 3.2,
        })
        store.save_events(session, [event], release=RELEASE, window_end=T0 + 10 * WINDOW_S)
        store.save_states(session, {cohort: CohortState(cusum=3.2, drift_alarmed=True)})


@pytest.fixture
def console(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[dict]:
    settings = ServerSettings(home=tmp_path / "server", monitor_enabled=False,
                              broker_host=mosquitto.host, broker_port=mosquitto.port)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    seed(factory)
    with factory.begin() as session:
        _token, secret = create_token(session, "viewer-vic", "viewer", "test")
    try:
        with live_server(build_app(settings)) as url:
            yield {"url": url, "token": secret}
    finally:
        close_database(factory)


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="Debian's chromium is not installed (make system-deps installs it)")
def test_viewer_sees_cohorts_drift_event_and_charts(console: dict, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=LAUNCH_ARGS, viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.goto(console["url"] + "/console/login")
            page.fill("#token", console["token"])
            page.click("#login")
            page.click("text=Monitor")
            expect(page).to_have_url(console["url"] + "/console/monitor")
            page.click("#monitor-models >> text=digits")
            expect(page).to_have_url(console["url"] + "/console/monitor/digits")

            cohorts = page.locator("#cohorts")
            expect(cohorts).to_contain_text(f"{RELEASE}@east")
            expect(cohorts).to_contain_text(f"{RELEASE}@west")
            expect(cohorts.locator("tr", has_text="@east")).to_contain_text("drift alarm")
            expect(cohorts.locator("tr", has_text="@west")).to_contain_text("ok")
            events = page.locator("#events")
            expect(events).to_contain_text("drift_detected")
            expect(events).to_contain_text("27, 28, 35")
            drift_chart = page.locator(f'[id="drift-{RELEASE}@east"]')
            expect(drift_chart).to_be_visible()
            assert drift_chart.locator("polyline").count() == 2
            assert drift_chart.locator("rect.mark").count() == 4  # the drifted windows
            assert page.locator(f'[id="drift-{RELEASE}@west"] rect.mark').count() == 0
            expect(page.locator(f'[id="accuracy-{RELEASE}@east"]')).to_be_visible()
            expect(page.locator(f'[id="volume-{RELEASE}@east"]')).to_be_visible()
            features = page.locator(f'[id="features-{RELEASE}@east"]')
            expect(features).to_contain_text("feature 27")
            expect(page.locator(f'[id="features-{RELEASE}@west"]')).to_contain_text(
                "no drifted features")
            page.screenshot(path=str(ARTIFACTS / "console-monitor.png"), full_page=True)

            missing = page.goto(console["url"] + "/console/monitor/nosuchmodel")
            assert missing is not None and missing.status == 404
            expect(page.locator("main")).to_contain_text("No monitor windows for model nosuchmodel")
        finally:
            browser.close()
