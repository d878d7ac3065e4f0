"""The model card page of the console (/console/models/{model}/{version}/card) over the real
app and SQLite, for a pipeline release and a manual one; the link to it from the fleet
overview; and one headless Chromium visit with a screenshot in test-artifacts/."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from server.app.build import build_app
from server.app.home import init_home
from server.auth.tokens import create_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.db.tables import Device
from tests.cli_support import REPO_ROOT
from tests.server.console.support import console_login
from tests.server.governance.test_model_card import PipelineRelease, seed_pipeline_release
from tests.server.helpers import live_server

pytestmark = [pytest.mark.governance]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TARGET = "digits/2/model.int8.onnx"


@dataclass
class World:
    settings: ServerSettings
    factory: sessionmaker
    seeded: PipelineRelease
    viewer: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("model-card-console")
    settings = ServerSettings(home=tmp / "server", http_port=0, monitor_enabled=False)
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    seeded = seed_pipeline_release(settings, factory, tmp)
    with factory.begin() as session:
        session.add(Device(device_id="d1", online=True, model="digits", version=2,
                           release=TARGET))
        viewer = create_token(session, "viewer-vic", "viewer", "test")[1]
    try:
        yield World(settings, factory, seeded, viewer)
    finally:
        close_database(factory)


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[TestClient]:
    with TestClient(build_app(world.settings, with_fleet=False), follow_redirects=False) as client:
        yield console_login(client, world.viewer)


def test_the_card_page_shows_origin_data_recipe_gates_metrics_and_deployment(
    browser: TestClient, world: World
) -> None:
    page = browser.get("/console/models/digits/2/card")

    assert page.status_code == 200, page.text
    text = page.text
    assert "<title>Model card · digits v2 · EdgeOps</title>" in text
    assert f'<code id="card-target">{TARGET}</code>' in text
    assert (f"retrained from v1 by pipeline run {world.seeded.run_id} (drift_detected on "
            "digits/1/model.int8.onnx@east)") in text
    assert '<span id="card-trigger">event</span> drift_detected' in text
    assert "<dt>per cohort</dt><dd>east 3, west 3</dd>" in text
    gates = re.search(r'<table id="card-gates">.*?</table>', text, re.S)
    assert gates is not None
    assert gates.group(0).count("<tr><td>") == 8  # every gate of the default policy
    assert ("<td>evaluation</td><td>heldout_change_min</td><td>0.004</td><td>-0.01</td>"
            "<td>0.958</td>") in gates.group(0)
    assert "<td>packaging</td><td>int8_drop_pp_max</td>" in gates.group(0)
    assert "<td>recall</td><td>0.94</td><td>fleet evaluation, class 1</td><td>0.7</td>" in text
    assert '<span id="card-verdict">in progress</span>' in text
    assert '<span id="card-reached">0</span>' in text
    assert "http://" not in text and "https://" not in text  # no external assets


def test_a_manual_release_page_says_manual_publish_and_has_no_gates(browser: TestClient) -> None:
    page = browser.get("/console/models/digits/1/card")

    assert page.status_code == 200
    assert 'id="card-origin">Version 1 · manual publish' in page.text
    assert '<p id="card-no-gates">No gates: manual publish.</p>' in page.text
    assert '<span id="card-verdict">manual release</span>' in page.text


def test_an_unknown_release_is_a_404_page_and_a_stranger_is_sent_to_login(
    browser: TestClient, world: World
) -> None:
    missing = browser.get("/console/models/digits/9/card")
    with TestClient(build_app(world.settings, with_fleet=False),
                    follow_redirects=False) as stranger:
        anonymous = stranger.get("/console/models/digits/2/card")

    assert missing.status_code == 404
    assert "model &#x27;digits&#x27; has no release of version 9" in missing.text
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith(
        "/console/login")


def test_the_overview_links_each_release_to_its_card(browser: TestClient) -> None:
    overview = browser.get("/console/")

    assert overview.status_code == 200
    assert (f'<a class="card-link" href="/console/models/digits/2/card">{TARGET}</a>'
            in overview.text)


@pytest.mark.integration
@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="Debian's chromium is not installed (make system-deps installs it)")
def test_a_viewer_opens_the_card_from_the_overview_in_chromium(world: World,
                                                               tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with live_server(build_app(world.settings, with_fleet=False)) as url, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=LAUNCH_ARGS, viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.goto(url + "/console/login")
            page.fill("#token", world.viewer)
            page.click("#login")
            page.click(f"#versions >> text={TARGET}")
            expect(page).to_have_url(url + "/console/models/digits/2/card")
            expect(page.locator("#card-target")).to_have_text(TARGET)
            expect(page.locator("#card-gates tbody tr")).to_have_count(8)
            expect(page.locator("#card-metrics")).to_contain_text("fleet evaluation, cohort east")
            expect(page.locator("#card-verdict")).to_have_text("in progress")
            page.screenshot(path=str(ARTIFACTS / "console-model-card.png"), full_page=True)
        finally:
            browser.close()
