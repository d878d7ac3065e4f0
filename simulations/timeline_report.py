"""The scenario report: what a fleet lived through, drawn on one time axis.

    Timeline (from the scenario engine) ─► write_timeline_report(timeline, out_dir)
        report.json    the timeline itself, `summary` and `assertions` at the top level
        timeline.png   stacked panels on a shared time axis: drift score, estimated vs
                       realised accuracy, share of the fleet per version, pipeline states
                       and rollout waves; faults and drift onsets cross every panel
        report.html    self-contained (the PNG inlined as a data URI, inline CSS, no script):
                       the verdict, the summary numbers, the figure, the assertions, the
                       pipeline run and the per-device table
    summary_lines(timeline)   the terminal's closing lines

The engine decides and measures; this module only shows what it was given, so every function
here is pure over the timeline except `write_timeline_report`, the one that touches files.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import median
from typing import Any, Literal, TypedDict

from edgeops.atomic_io import write_bytes_atomic, write_json_atomic
from edgeops.errors import ConfigError

__all__ = [
    "AssertionResult",
    "DeviceRow",
    "Mark",
    "PipelineStep",
    "Summary",
    "Timeline",
    "VersionShare",
    "Window",
    "all_passed",
    "check_timeline",
    "render_html",
    "report_json",
    "sample_timeline",
    "summary_lines",
    "timeline_png",
    "write_timeline_report",
]

REPORT_SCHEMA = 1
REPORT_FILE_MODE = 0o644  # a report is meant to be opened and shared, not kept private

# Okabe & Ito's palette: distinguishable with every common colour-vision deficiency.
BLUE, ORANGE, GREEN, PURPLE = "#0072B2", "#E69F00", "#009E73", "#CC79A7"
SKY, YELLOW, VERMILLION, BLACK, GREY = "#56B4E9", "#F0E442", "#D55E00", "#000000", "#777777"
COHORT_COLOURS = (BLUE, ORANGE, GREEN, PURPLE, SKY, BLACK, YELLOW)
VERSION_COLOURS = (SKY, BLUE, GREEN, ORANGE, PURPLE, YELLOW, GREY)
MARK_COLOURS = {"fault": VERMILLION, "drift": BLACK, "event": GREY}
PIPELINE_COLOURS = {
    "triggered": SKY, "training": BLUE, "evaluating": BLUE, "gated": BLUE,
    "packaging": SKY, "signed": SKY, "awaiting_approval": YELLOW, "canary": ORANGE,
    "promoted": GREEN, "rolled_back": VERMILLION, "refused": VERMILLION,
}


class Window(TypedDict):
    """One monitor window of one cohort. `t` is the window's end in seconds since the run
    started (when the monitor scored it); `drift_score` is the largest per-feature PSI."""

    t: float
    cohort: str
    release: str
    version: int
    drift_score: float | None
    verdict: Literal["ok", "drift", "inconclusive"]
    estimated_accuracy: float | None
    realised_accuracy: float | None
    count: int


class VersionShare(TypedDict):
    """How many devices ran each model version (keys are versions as strings) at `t`."""

    t: float
    counts: dict[str, int]


class Mark(TypedDict):
    """Something that happened at `t` (and lasted until `until`, if it lasted)."""

    t: float
    until: float | None
    kind: Literal["drift", "fault", "pipeline", "rollout", "event"]
    label: str


class PipelineStep(TypedDict):
    """The pipeline run entered `status` (a `server.pipeline.machine` state) at `t`."""

    t: float
    status: str
    message: str


class DeviceRow(TypedDict):
    """One device at the end of the run; accuracies are fractions on held-out data."""

    device_id: str
    group: str
    version: int | None
    state: str | None
    telemetry_sent: int
    telemetry_stored: int
    accuracy_before: float | None
    accuracy_after: float | None


class Summary(TypedDict):
    """The run's numbers; accuracies are fractions, times are seconds, None means never."""

    scenario: str
    detection_delay_s: float | None
    recovery_s: float | None
    accuracy_before: float | None
    accuracy_during: float | None
    accuracy_after: float | None
    ota_bytes: int
    telemetry_sent: int
    telemetry_stored: int
    published_version: int | None
    devices: int
    wall_s: float


class AssertionResult(TypedDict):
    """One of the scenario's end-of-run checks and whether it held."""

    name: str
    passed: bool
    detail: str


class Timeline(TypedDict):
    """What the scenario engine hands over: `started_at`/`ended_at` are epoch seconds,
    every other `t` is seconds since `started_at`."""

    scenario: str
    started_at: float
    ended_at: float
    windows: list[Window]
    versions: list[VersionShare]
    marks: list[Mark]
    pipeline: list[PipelineStep]
    devices: list[DeviceRow]
    summary: Summary
    assertions: list[AssertionResult]


def _required(cls: type) -> tuple[str, ...]:
    return tuple(cls.__annotations__)


def _check_items(items: object, where: str, keys: tuple[str, ...]) -> None:
    if not isinstance(items, list):
        raise ConfigError(f"timeline.{where} must be a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"timeline.{where}[{i}] must be an object")
        missing = [k for k in keys if k not in item]
        if missing:
            raise ConfigError(f"timeline.{where}[{i}] is missing {', '.join(missing)}")


def check_timeline(timeline: Mapping[str, Any]) -> None:
    """Refuse a timeline the report cannot draw, naming the first missing or malformed part."""
    missing = [k for k in _required(Timeline) if k not in timeline]
    if missing:
        raise ConfigError(f"timeline is missing {', '.join(missing)}")
    summary = timeline["summary"]
    if not isinstance(summary, Mapping):
        raise ConfigError("timeline.summary must be an object")
    missing = [k for k in _required(Summary) if k not in summary]
    if missing:
        raise ConfigError(f"timeline.summary is missing {', '.join(missing)}")
    for where, cls in (("windows", Window), ("versions", VersionShare), ("marks", Mark),
                       ("pipeline", PipelineStep), ("devices", DeviceRow),
                       ("assertions", AssertionResult)):
        _check_items(timeline[where], where, _required(cls))
    for i, mark in enumerate(timeline["marks"]):
        if mark["kind"] not in ("drift", "fault", "pipeline", "rollout", "event"):
            raise ConfigError(f"timeline.marks[{i}].kind {mark['kind']!r} is not one of "
                              "drift, fault, pipeline, rollout, event")


def all_passed(timeline: Timeline) -> bool:
    """True when the scenario listed assertions and every one held."""
    return bool(timeline["assertions"]) and all(a["passed"] for a in timeline["assertions"])


# ── formatting ────────────────────────────────────────────────────────────────────────────

def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _secs(value: float | None, never: str = "–") -> str:
    return never if value is None else f"{value:.0f} s"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _clock(t: float) -> str:
    return f"+{int(t) // 60}:{int(t) % 60:02d}"


def _loss(lost: int) -> str:
    if lost > 0:
        return f"{lost:,} lost"
    return "none lost" if lost == 0 else f"{-lost:,} duplicated"


def summary_lines(timeline: Timeline) -> list[str]:
    """The terminal's closing summary: the verdict first, then the numbers, then each failure."""
    s, checks = timeline["summary"], timeline["assertions"]
    failed = [a for a in checks if not a["passed"]]
    verdict = (f"FAILED {len(failed)} of {len(checks)} assertions" if failed
               else f"{len(checks)}/{len(checks)} assertions passed" if checks
               else "no assertions checked")
    lost = s["telemetry_sent"] - s["telemetry_stored"]
    published = "-" if s["published_version"] is None else f"v{s['published_version']}"
    lines = [
        f"{s['scenario']}: {verdict}",
        ("drift never detected" if s["detection_delay_s"] is None
         else f"drift detected after {_secs(s['detection_delay_s'])}")
        + (", never recovered" if s["recovery_s"] is None
           else f", recovered after {_secs(s['recovery_s'])}"),
        f"accuracy before {_pct(s['accuracy_before'])}, during {_pct(s['accuracy_during'])},"
        f" after {_pct(s['accuracy_after'])}",
        f"over the air {_size(s['ota_bytes'])}; telemetry {s['telemetry_sent']:,} sent,"
        f" {s['telemetry_stored']:,} stored ({_loss(lost)})",
        f"published {published} on {s['devices']} devices; wall time {s['wall_s']:.0f} s",
    ]
    lines += [f"  FAILED {a['name']}: {a['detail']}" for a in failed]
    return lines


# ── the figure ────────────────────────────────────────────────────────────────────────────

def _by_cohort(windows: Sequence[Window]) -> dict[str, list[Window]]:
    cohorts: dict[str, list[Window]] = {}
    for w in sorted(windows, key=lambda w: w["t"]):
        cohorts.setdefault(w["cohort"], []).append(w)
    return cohorts


def _window_width(windows: Sequence[Window]) -> float:
    gaps = [b["t"] - a["t"] for a, b in zip(windows, windows[1:], strict=False) if b["t"] > a["t"]]
    return median(gaps) if gaps else 1.0


def _points(windows: Sequence[Window],
            key: Literal["drift_score", "estimated_accuracy", "realised_accuracy"],
            ) -> tuple[list[float], list[float]]:
    """The windows that have a value for `key`, as (times, values): a window without one
    (no feedback yet, too few samples) is skipped so the line runs on through it."""
    kept = [(w["t"], w[key]) for w in windows if w[key] is not None]
    return [t for t, _ in kept], [float(v) for _, v in kept if v is not None]


def _draw_drift(ax: Any, cohorts: Mapping[str, list[Window]], colours: Mapping[str, str]) -> None:
    for cohort, windows in cohorts.items():
        colour, width = colours[cohort], _window_width(windows)
        ax.plot(*_points(windows, "drift_score"), color=colour, marker="o", markersize=3,
                lw=1.8, label=cohort)
        for w in windows:
            if w["verdict"] == "drift":
                ax.axvspan(w["t"] - width, w["t"], color=colour, alpha=0.18, lw=0)
    ax.set_ylabel("max PSI")
    ax.set_ylim(bottom=0)
    ax.set_title("Drift score per cohort (shaded: windows the monitor called drift)",
                 loc="left", fontsize=11, fontweight="bold")


def _draw_accuracy(ax: Any, cohorts: Mapping[str, list[Window]],
                   colours: Mapping[str, str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    lowest = 1.0
    for cohort, windows in cohorts.items():
        realised, estimated = (_points(windows, "realised_accuracy"),
                               _points(windows, "estimated_accuracy"))
        ax.plot(*realised, color=colours[cohort], lw=2, marker="o", markersize=3)
        ax.plot(*estimated, color=colours[cohort], lw=1.5, ls="--")
        lowest = min([lowest, *realised[1], *estimated[1]])
    handles = [Line2D([], [], color=colours[c], lw=2, label=c) for c in cohorts]
    handles += [Line2D([], [], color=GREY, lw=2, label="realised (feedback)"),
                Line2D([], [], color=GREY, lw=1.5, ls="--", label="estimated (no labels)")]
    ax.legend(handles=handles, loc="lower left", fontsize=8, ncol=len(handles), frameon=False)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylim(max(0.0, math.floor((lowest - 0.1) * 10) / 10), 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per cohort: realised (solid) vs estimated without labels (dashed)",
                 loc="left", fontsize=11, fontweight="bold")


def _draw_versions(ax: Any, versions: Sequence[VersionShare], end_t: float) -> None:
    from matplotlib.ticker import PercentFormatter

    points = sorted(versions, key=lambda v: v["t"])
    if points and points[-1]["t"] < end_t:
        points.append(VersionShare(t=end_t, counts=points[-1]["counts"]))
    names = sorted({k for p in points for k in p["counts"]}, key=lambda k: (len(k), k))
    if points and names:
        totals = [sum(p["counts"].values()) or 1 for p in points]
        shares = [[p["counts"].get(n, 0) / total for p, total in zip(points, totals, strict=True)]
                  for n in names]
        ax.stackplot([p["t"] for p in points], shares, step="post",
                     labels=[f"v{n}" for n in names],
                     colors=[VERSION_COLOURS[i % len(VERSION_COLOURS)] for i in range(len(names))])
        ax.legend(loc="lower left", fontsize=8, ncol=len(names), frameon=True)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylim(0, 1)
    ax.set_ylabel("fleet share")
    ax.set_title("Share of the fleet on each model version", loc="left", fontsize=11,
                 fontweight="bold")


def _draw_lane(ax: Any, timeline: Timeline, end_t: float) -> None:
    steps = sorted(timeline["pipeline"], key=lambda p: p["t"])
    for i, step in enumerate(steps):
        until = steps[i + 1]["t"] if i + 1 < len(steps) else end_t
        colour = PIPELINE_COLOURS.get(step["status"], GREY)
        ax.broken_barh([(step["t"], max(until - step["t"], 0.5))], (1.15, 0.7), color=colour,
                       edgecolor="white", lw=0.8)
        ax.text(step["t"], 1.95 + 0.3 * (i % 3), step["status"].replace("_", " "),
                fontsize=7.5, va="bottom", ha="left")
    for mark in (m for m in timeline["marks"] if m["kind"] in ("rollout", "pipeline")):
        y = 0.5 if mark["kind"] == "rollout" else 1.5
        if mark["until"] is not None:
            ax.broken_barh([(mark["t"], mark["until"] - mark["t"])], (y - 0.3, 0.6),
                           color=PURPLE, alpha=0.55, lw=0)
        ax.plot([mark["t"]], [y], marker="v", color=PURPLE, markersize=8)
        ax.text(mark["t"], y, f"   {mark['label']}", fontsize=8, va="center", ha="left",
                color=BLACK)
    ax.set_ylim(0, 2.95)
    ax.set_yticks([0.5, 1.5])
    ax.set_yticklabels(["rollout", "pipeline"])
    ax.set_title("Pipeline run states and rollout waves", loc="left", fontsize=11,
                 fontweight="bold")


def _draw_marks(axes: Sequence[Any], strip: Any, marks: Sequence[Mark]) -> None:
    shown = sorted((m for m in marks if m["kind"] in MARK_COLOURS), key=lambda m: m["t"])
    for i, mark in enumerate(shown):
        colour = MARK_COLOURS[mark["kind"]]
        for ax in (strip, *axes):
            if mark["until"] is not None and mark["until"] > mark["t"]:
                ax.axvspan(mark["t"], mark["until"], color=colour, alpha=0.12, lw=0)
            ax.axvline(mark["t"], color=colour, lw=1.2,
                       ls="-" if mark["kind"] == "fault" else (0, (4, 2)))
        strip.text(mark["t"], 0.78 - 0.32 * (i % 3), f" {mark['label']}", color=colour,
                   fontsize=8.5, fontweight="bold", va="center", ha="left")
    strip.set_ylim(0, 1)
    strip.set_yticks([])
    for side in ("left", "right", "top"):
        strip.spines[side].set_visible(False)
    strip.set_title("What happened (red: faults, black: drift starts, grey: events)",
                    loc="left", fontsize=11, fontweight="bold")


def timeline_png(timeline: Timeline, dpi: int = 100) -> bytes:
    """The timeline figure as PNG bytes: a label strip and four panels on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohorts = _by_cohort(timeline["windows"])
    colours = {c: COHORT_COLOURS[i % len(COHORT_COLOURS)] for i, c in enumerate(cohorts)}
    all_t = [w["t"] for w in timeline["windows"]] + [v["t"] for v in timeline["versions"]]
    all_t += [p["t"] for p in timeline["pipeline"]] + [m["until"] or m["t"]
                                                        for m in timeline["marks"]]
    end_t = max([timeline["ended_at"] - timeline["started_at"], *all_t, 1.0])

    fig, axes = plt.subplots(5, 1, sharex=True, figsize=(12, 11), constrained_layout=True,
                             gridspec_kw={"height_ratios": [0.7, 2.2, 2.2, 1.6, 1.5]})
    strip, drift, accuracy, versions, lane = axes
    _draw_drift(drift, cohorts, colours)
    if cohorts:
        drift.legend(loc="upper left", fontsize=8, ncol=len(cohorts), frameon=False)
    _draw_accuracy(accuracy, cohorts, colours)
    _draw_versions(versions, timeline["versions"], end_t)
    _draw_lane(lane, timeline, end_t)
    _draw_marks((drift, accuracy, versions, lane), strip, timeline["marks"])
    for ax in (drift, accuracy):
        ax.grid(axis="y", color="#dddddd", lw=0.6)
    lane.set_xlim(0, end_t)
    lane.set_xlabel("seconds since the scenario started")
    fig.suptitle(f"{timeline['scenario']}: {end_t:.0f} s of a fleet's life", fontsize=14,
                 fontweight="bold", x=0.01, ha="left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


# ── the page ──────────────────────────────────────────────────────────────────────────────

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;
background:#f6f7f9;line-height:1.4}
main{max-width:1240px;margin:0 auto;padding:1.2rem 1.5rem 3rem}
h1{margin:.2rem 0 .4rem;font-size:1.7rem}h2{margin:2rem 0 .6rem;font-size:1.25rem}
.verdict{display:inline-block;font-weight:700;font-size:1.1rem;padding:.35rem .9rem;
border-radius:6px;border:2px solid}
.verdict.pass{background:#e3f4ec;border-color:#009E73;color:#00573f}
.verdict.fail{background:#fbe3d6;border-color:#D55E00;color:#8a3200}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.7rem;
margin:1rem 0}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:.7rem .9rem}
.card b{display:block;font-size:1.9rem;line-height:1.1}.card span{color:#556;font-size:.85rem}
figure{margin:1rem 0;background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:.5rem}
figure img{width:100%;height:auto;display:block}
figcaption{color:#556;font-size:.85rem;padding:.3rem .5rem}
ul.checks{list-style:none;padding:0;margin:0}
ul.checks li{background:#fff;border:1px solid #e3e6ea;border-left:6px solid;border-radius:4px;
padding:.45rem .8rem;margin:.3rem 0}
ul.checks li.passed{border-left-color:#009E73}
ul.checks li.failed{border-left-color:#D55E00;background:#fdf0e8}
.tag{font-weight:700;display:inline-block;min-width:4.5rem}
li.passed .tag{color:#00573f}li.failed .tag{color:#8a3200}
.detail{color:#556}
ol.pipeline{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:.6rem 2.2rem}
ol.pipeline code{color:#556}
table{border-collapse:collapse;background:#fff;width:100%;border:1px solid #e3e6ea}
th,td{padding:.3rem .6rem;border-bottom:1px solid #e3e6ea;text-align:right;font-size:.9rem}
th{background:#eef1f5}th:nth-child(-n+4),td:nth-child(-n+4){text-align:left}
td.lost{color:#8a3200;font-weight:700}
"""


def _cards(summary: Summary) -> str:
    lost = summary["telemetry_sent"] - summary["telemetry_stored"]
    published = "–" if summary["published_version"] is None else f"v{summary['published_version']}"
    cards = [
        (_secs(summary["detection_delay_s"], "never"), "to detect the drift"),
        (_secs(summary["recovery_s"], "never"), "to recover"),
        (_pct(summary["accuracy_before"]), "accuracy before the drift"),
        (_pct(summary["accuracy_during"]), "accuracy during the drift"),
        (_pct(summary["accuracy_after"]), "accuracy after recovery"),
        (_size(summary["ota_bytes"]), "sent over the air"),
        (f"{summary['telemetry_stored']:,} / {summary['telemetry_sent']:,}",
         "telemetry stored / sent" + (f" ({lost:,} lost)" if lost > 0 else "")),
        (published, "published version"),
        (str(summary["devices"]), "devices"),
        (f"{summary['wall_s']:.0f} s", "wall time"),
    ]
    return "".join(f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}'
                   "</span></div>" for value, label in cards)


def _checks(assertions: Sequence[AssertionResult]) -> str:
    if not assertions:
        return "<p>The scenario declared no assertions.</p>"
    items = "".join(
        f'<li class="{"passed" if a["passed"] else "failed"}">'
        f'<span class="tag">{"✓ PASSED" if a["passed"] else "✗ FAILED"}</span> '
        f'<b>{html.escape(a["name"])}</b> <span class="detail">{html.escape(a["detail"])}'
        "</span></li>" for a in assertions)
    return f'<ul class="checks" id="assertions">{items}</ul>'


def _pipeline(steps: Sequence[PipelineStep]) -> str:
    if not steps:
        return "<p>No pipeline run during this scenario.</p>"
    items = "".join(f"<li><code>{_clock(p['t'])}</code> <b>{html.escape(p['status'])}</b>"
                    f" {html.escape(p['message'])}</li>"
                    for p in sorted(steps, key=lambda p: p["t"]))
    return f'<ol class="pipeline" id="pipeline">{items}</ol>'


def _devices(rows: Sequence[DeviceRow]) -> str:
    def cell(value: object) -> str:
        return html.escape("–" if value is None else str(value))

    def row(d: DeviceRow) -> str:
        version = "–" if d["version"] is None else f"v{d['version']}"
        stored = "lost" if d["telemetry_stored"] != d["telemetry_sent"] else "ok"
        return (f"<tr><td>{cell(d['device_id'])}</td><td>{cell(d['group'])}</td>"
                f"<td>{version}</td><td>{cell(d['state'])}</td>"
                f"<td>{d['telemetry_sent']:,}</td><td class=\"{stored}\">"
                f"{d['telemetry_stored']:,}</td><td>{_pct(d['accuracy_before'])}</td>"
                f"<td>{_pct(d['accuracy_after'])}</td></tr>")

    body = "".join(row(d) for d in rows)
    return ('<table id="devices"><tr><th>device</th><th>group</th><th>version</th><th>state</th>'
            "<th>telemetry sent</th><th>stored</th><th>accuracy before</th>"
            f"<th>accuracy after</th></tr>{body}</table>")


def render_html(timeline: Timeline, png: bytes) -> str:
    """The self-contained report page; `png` is `timeline_png(timeline)`, inlined."""
    checks = timeline["assertions"]
    failed = sum(not a["passed"] for a in checks)
    verdict = (f'<p class="verdict pass">✓ all {len(checks)} assertions passed</p>'
               if all_passed(timeline) else
               f'<p class="verdict fail">✗ {failed} of {len(checks)} assertions failed</p>'
               if failed else '<p class="verdict fail">no assertions were checked</p>')
    name = html.escape(timeline["scenario"])
    data = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>EdgeOps scenario {name}</title><style>{_CSS}</style></head>
<body><main>
<h1>EdgeOps scenario: {name}</h1>
{verdict}
<section class="cards" id="summary">{_cards(timeline["summary"])}</section>
<figure><img id="timeline" alt="timeline of {name}: drift score, accuracy, versions, pipeline"
 src="data:image/png;base64,{data}">
<figcaption>One time axis for every panel. Red bands are faults, black dashed lines are drift
onsets; shaded windows are the ones the monitor called drift.</figcaption></figure>
<h2>Assertions</h2>
{_checks(checks)}
<h2>Pipeline run</h2>
{_pipeline(timeline["pipeline"])}
<h2>Devices</h2>
{_devices(timeline["devices"])}
</main></body></html>
"""


def report_json(timeline: Timeline) -> dict[str, Any]:
    """The machine-readable report: the timeline as given, plus the schema and the verdict."""
    return {"schema": REPORT_SCHEMA, "passed": all_passed(timeline), **timeline}


def write_timeline_report(timeline: Timeline, out_dir: Path) -> dict[str, Path]:
    """Check `timeline`, then write report.json, timeline.png and report.html into `out_dir`
    (created if missing); return their paths under the keys json, png and html."""
    check_timeline(timeline)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "png": out_dir / "timeline.png",
             "html": out_dir / "report.html"}
    png = timeline_png(timeline)
    write_json_atomic(paths["json"], report_json(timeline), mode=REPORT_FILE_MODE)
    write_bytes_atomic(paths["png"], png, mode=REPORT_FILE_MODE)
    write_bytes_atomic(paths["html"], render_html(timeline, png).encode(), mode=REPORT_FILE_MODE)
    return paths


# ── a sample for tests and previews ───────────────────────────────────────────────────────

def sample_timeline(*, fail: str | None = None) -> Timeline:
    """A drift-recovery run of 180 s over six devices in two cohorts: `north` drifts at 60 s,
    is detected at 80 s, retrained, canaried and recovered by 165 s; the broker is down for
    5 s and two agents are killed. `fail` names an assertion to mark as failed."""
    release = {1: "digits/1/model.int8.onnx", 2: "digits/2/model.int8.onnx"}
    windows: list[Window] = []
    for i in range(1, 19):
        t = 10.0 * i
        for cohort in ("north", "south"):
            drifted = cohort == "north" and 60 < t <= 150
            version = 2 if (cohort == "north" and t > 150) or t > 165 else 1
            realised = 0.71 - 0.004 * i if drifted else 0.95 - 0.002 * (i % 3)
            windows.append(Window(
                t=t, cohort=cohort, release=release[version], version=version,
                drift_score=(0.62 + 0.01 * i) if drifted else 0.04 + 0.005 * (i % 4),
                verdict="drift" if drifted and t >= 80 else "inconclusive" if drifted else "ok",
                estimated_accuracy=realised + (0.03 if drifted else -0.01),
                realised_accuracy=None if i % 4 == 0 else realised, count=120 + i))
    versions: list[VersionShare] = [
        VersionShare(t=0.0, counts={"1": 6}), VersionShare(t=130.0, counts={"1": 5, "2": 1}),
        VersionShare(t=150.0, counts={"1": 3, "2": 3}), VersionShare(t=165.0, counts={"2": 6}),
    ]
    marks: list[Mark] = [
        Mark(t=60.0, until=None, kind="drift", label="north: brightness shift"),
        Mark(t=100.0, until=105.0, kind="fault", label="broker down 5 s"),
        Mark(t=120.0, until=None, kind="fault", label="2 agents SIGKILLed"),
        Mark(t=80.0, until=None, kind="event", label="drift detected"),
        Mark(t=130.0, until=150.0, kind="rollout", label="canary (1 device)"),
        Mark(t=150.0, until=165.0, kind="rollout", label="waves 2-3"),
    ]
    pipeline: list[PipelineStep] = [
        PipelineStep(t=t, status=s, message=m) for t, s, m in (
            (80.0, "triggered", "drift on digits/1@north"),
            (82.0, "training", "3 federated rounds on fresh feedback"),
            (108.0, "evaluating", "held-out accuracy 94.1 %"),
            (112.0, "gated", "accuracy, fidelity and latency gates passed"),
            (114.0, "packaging", "int8 quantization"),
            (122.0, "signed", "digits/2/model.int8.onnx"),
            (124.0, "awaiting_approval", "auto-approve policy"),
            (130.0, "canary", "1 device against a control cohort"),
            (150.0, "promoted", "canary beat control by 21 points"),
        )]
    devices: list[DeviceRow] = [
        DeviceRow(device_id=f"dev-{i:02d}", group="north" if i < 3 else "south", version=2,
                  state="idle", telemetry_sent=36, telemetry_stored=36,
                  accuracy_before=0.95 if i >= 3 else 0.70, accuracy_after=0.94)
        for i in range(6)]
    names = ("drift detected within 3 windows", "north recovered to 90 %",
             "no telemetry lost or duplicated", "no device half-updated")
    assertions = [AssertionResult(name=n, passed=n != fail,
                                  detail="as required" if n != fail else "did not hold")
                  for n in names]
    summary = Summary(
        scenario="drift-recovery", detection_delay_s=20.0, recovery_s=85.0,
        accuracy_before=0.95, accuracy_during=0.70, accuracy_after=0.94, ota_bytes=6 * 27_648,
        telemetry_sent=216, telemetry_stored=216, published_version=2, devices=6, wall_s=182.4)
    started = 1_790_000_000.0
    return Timeline(scenario="drift-recovery", started_at=started, ended_at=started + 180.0,
                    windows=windows, versions=versions, marks=marks, pipeline=pipeline,
                    devices=devices, summary=summary, assertions=assertions)
