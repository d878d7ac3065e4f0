"""The scenario report (simulations.timeline_report): report.json carries the summary the
issue asks for, report.html is self-contained and shows a failed assertion as failed, the
timeline PNG is a real figure, and headless Chromium renders the page into a screenshot that
is not blank."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edgeops.errors import ConfigError
from simulations.timeline_report import (
    Timeline,
    check_timeline,
    sample_timeline,
    summary_lines,
    write_timeline_report,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SUMMARY_KEYS = {"scenario", "detection_delay_s", "recovery_s", "accuracy_before",
                "accuracy_during", "accuracy_after", "ota_bytes", "telemetry_sent",
                "telemetry_stored", "published_version", "devices"}
FAILING = "no device half-updated"


@pytest.fixture(scope="module")
def failed_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample run with one assertion failed, written once for the module's tests."""
    return write_timeline_report(sample_timeline(fail=FAILING),
                                 tmp_path_factory.mktemp("report"))


def _html(paths: dict[str, Path]) -> str:
    return paths["html"].read_text(encoding="utf-8")


def test_report_json_has_the_summary_assertions_and_devices(
        failed_report: dict[str, Path]) -> None:
    report = json.loads(failed_report["json"].read_text())

    assert SUMMARY_KEYS <= set(report["summary"])
    assert report["summary"]["scenario"] == "drift-recovery"
    assert report["summary"]["detection_delay_s"] == 20.0
    for key in ("accuracy_before", "accuracy_during", "accuracy_after"):
        assert 0.0 <= report["summary"][key] <= 1.0, key
    assert [(a["name"], a["passed"]) for a in report["assertions"]][-1] == (FAILING, False)
    assert sum(a["passed"] for a in report["assertions"]) == 3
    assert report["passed"] is False
    assert len(report["devices"]) == 6 and report["devices"][0]["device_id"] == "dev-00"
    assert len(report["windows"]) == 36 and report["schema"] == 1


def test_report_json_passes_when_every_assertion_holds(tmp_path: Path) -> None:
    paths = write_timeline_report(sample_timeline(), tmp_path)

    assert json.loads(paths["json"].read_text())["passed"] is True
    assert "✓ all 4 assertions passed" in _html(paths)


def test_html_is_self_contained(failed_report: dict[str, Path]) -> None:
    page = _html(failed_report)

    assert re.findall(r"https?://", page, flags=re.IGNORECASE) == []
    assert "<script" not in page and "<link" not in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    inlined = base64.b64decode(sources[0].removeprefix("data:image/png;base64,"))
    assert inlined == failed_report["png"].read_bytes()


def test_png_is_a_real_figure(failed_report: dict[str, Path]) -> None:
    data = failed_report["png"].read_bytes()
    image = Image.open(io.BytesIO(data)).convert("RGB")

    assert data.startswith(b"\x89PNG") and len(data) > 30_000
    assert image.size == (1200, 1100)
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 200  # lines, bands and text, not a flat fill


def test_failed_assertion_is_shown_as_failed(failed_report: dict[str, Path]) -> None:
    page = _html(failed_report)

    failed = re.findall(r'<li class="failed">(.*?)</li>', page)
    assert len(failed) == 1 and "✗ FAILED" in failed[0] and FAILING in failed[0]
    assert len(re.findall(r'<li class="passed">', page)) == 3
    assert '<p class="verdict fail">✗ 1 of 4 assertions failed</p>' in page


def test_summary_lines_lead_with_the_verdict_and_name_each_failure() -> None:
    lines = summary_lines(sample_timeline(fail=FAILING))

    assert lines[0] == "drift-recovery: FAILED 1 of 4 assertions"
    assert "drift detected after 20 s, recovered after 85 s" in lines
    assert "accuracy before 95.0%, during 70.0%, after 94.0%" in lines
    assert "over the air 165.9 kB; telemetry 216 sent, 216 stored (none lost)" in lines
    assert lines[-1] == f"  FAILED {FAILING}: did not hold"
    assert summary_lines(sample_timeline())[0] == "drift-recovery: 4/4 assertions passed"


def test_lost_telemetry_and_a_missed_detection_are_said_plainly(tmp_path: Path) -> None:
    timeline = sample_timeline()
    summary = timeline["summary"]
    summary["telemetry_stored"], summary["detection_delay_s"], summary["recovery_s"] = (
        213, None, None)
    timeline["devices"][1]["telemetry_stored"] = 33

    lines = summary_lines(timeline)
    page = _html(write_timeline_report(timeline, tmp_path))

    assert "drift never detected, never recovered" in lines
    assert "over the air 165.9 kB; telemetry 216 sent, 213 stored (3 lost)" in lines
    assert "telemetry stored / sent (3 lost)" in page
    assert page.count('<td class="lost">') == 1


def test_labels_from_the_scenario_are_escaped(tmp_path: Path) -> None:
    timeline = sample_timeline()
    timeline["devices"][0]["device_id"] = "<img src=x onerror=alert(1)>"
    timeline["pipeline"][0]["message"] = "drift & <b>"

    page = _html(write_timeline_report(timeline, tmp_path))

    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "drift &amp; &lt;b&gt;" in page


def test_a_run_with_nothing_on_its_timeline_still_reports(tmp_path: Path) -> None:
    timeline = sample_timeline()
    for part in ("windows", "versions", "marks", "pipeline", "devices", "assertions"):
        timeline[part] = []

    paths = write_timeline_report(timeline, tmp_path)

    assert json.loads(paths["json"].read_text())["passed"] is False
    assert "no assertions were checked" in _html(paths)
    assert "No pipeline run during this scenario." in _html(paths)
    assert summary_lines(timeline)[0] == "drift-recovery: no assertions checked"
    assert Image.open(paths["png"]).size == (1200, 1100)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda t: t.pop("windows"), "timeline is missing windows"),
    (lambda t: t["summary"].pop("recovery_s"), "timeline.summary is missing recovery_s"),
    (lambda t: t["assertions"][2].pop("passed"), "timeline.assertions[2] is missing passed"),
    (lambda t: t["marks"][0].update(kind="outage"), "timeline.marks[0].kind 'outage'"),
])
def test_a_malformed_timeline_is_refused_naming_the_part(
        damage: Callable[[Any], object], message: str) -> None:
    timeline: Timeline = sample_timeline()
    damage(timeline)

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_timeline(timeline)


@pytest.mark.integration
@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="Debian's chromium is not installed (make browser-deps installs it)")
def test_chromium_renders_the_report(failed_report: dict[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shot = tmp_path / "report-screenshot.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=LAUNCH_ARGS, viewport={"width": 1280, "height": 900}, offline=True,
        )
        try:
            page = browser.new_page()
            page.goto(failed_report["html"].resolve().as_uri())
            expect(page.locator("h1")).to_have_text("EdgeOps scenario: drift-recovery")
            expect(page.locator("#summary")).to_contain_text("to detect the drift")
            failed = page.locator("#assertions li.failed")
            expect(failed).to_contain_text(f"✗ FAILED {FAILING}")
            assert failed.evaluate("li => getComputedStyle(li).borderLeftColor") == (
                "rgb(213, 94, 0)")  # vermillion, beside the word FAILED
            expect(page.locator("#devices tr")).to_have_count(7)
            figure = page.locator("#timeline")
            expect(figure).to_be_visible()
            assert figure.evaluate("img => img.naturalWidth") == 1200
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    image = Image.open(shot).convert("RGB")
    assert image.size[0] == 1280 and image.size[1] > 1500  # the whole page, figure included
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 200
    assert image.getextrema() != ((255, 255), (255, 255), (255, 255))
