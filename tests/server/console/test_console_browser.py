"""The console in headless Chromium (Debian's `chromium`, driven by Playwright): log in with
an operator token, start a rollout, watch its progress advance live, pause it. The devices
are lightweight simulated MQTT clients; the server, broker and controller are real."""

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
from server.pipeline.publishing import publish_package
from simulations.mosquitto import MosquittoBroker
from tests.cli_support import REPO_ROOT
from tests.server.helpers import live_server, make_package
from tests.server.rollouts.fleet_support import SimulatedDevices, wait_for

pytestmark = [pytest.mark.rollouts, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def console(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[dict]:
    settings = ServerSettings(home=tmp_path / "server", broker_host=mosquitto.host,
                              broker_port=mosquitto.port)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    v1, v2 = (publish_package(settings, factory, make_package(tmp_path / f"p{i}", seed=i), "int8")
              for i in (1, 2))
    with factory.begin() as session:
        _token, secret = create_token(session, "ops-alice", "operator", "test")
    devices = SimulatedDevices(mosquitto, [f"sim-{i:02d}" for i in range(20)], v1.target_path,
                               delay_s=0.3)
    try:
        with live_server(build_app(settings)) as url:
            yield {"url": url, "token": secret, "target": v2.target_path, "factory": factory}
    finally:
        devices.close()
        close_database(factory)


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="Debian's chromium is not installed (make system-deps installs it)")
def test_operator_starts_watches_and_pauses_a_rollout(console: dict, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from server.db.tables import Device

    def known() -> int:
        with console["factory"]() as session:
            return session.query(Device).filter(Device.online.is_(True)).count()

    wait_for(lambda: known() == 20, 20, "the simulated devices at the server")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=LAUNCH_ARGS,
        )
        try:
            page = browser.new_page()
            page.goto(console["url"] + "/console/")
            expect(page).to_have_url(console["url"] + "/console/login")
            page.fill("#token", console["token"])
            page.click("#login")
            expect(page.locator("#devices-online")).to_have_text("20")

            page.select_option("#start-target", console["target"])
            page.fill("#start-waves", "5,50,100")
            page.fill("#start-soak", "4")
            page.click("#start-submit")
            expect(page).to_have_url(console["url"] + "/console/rollouts/1")
            first = page.locator("#rollout-progress").inner_text()

            # The page's script redraws progress without a reload.
            page.wait_for_function(
                "() => parseInt(document.getElementById('rollout-progress').textContent) >= 1",
                timeout=20_000,
            )
            advanced = page.locator("#rollout-progress").inner_text()
            page.click("#btn-pause")
            expect(page.locator("#rollout-status")).to_have_text("paused")
            page.screenshot(path=str(ARTIFACTS / "console-rollout-paused.png"), full_page=True)
        finally:
            browser.close()
    assert first != advanced
    assert int(advanced.split("/")[0]) >= 1
    with console["factory"]() as session:
        from server.db.tables import AuditEntry, Rollout

        assert session.get(Rollout, 1).status == "paused"
        actions = {(a.actor, a.resource) for a in session.query(AuditEntry)}
    assert ("ops-alice", "/console/rollouts/1/pause") in actions
    assert ("ops-alice", "/console/rollouts") in actions
