"""The simulation's report: `report.json` for machines, `report.html` with plots for people,
and a summary table for the terminal."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeops.atomic_io import write_bytes_atomic, write_json_atomic

__all__ = [
    "DeviceResult",
    "SimulationResult",
    "render_html",
    "rollout_line",
    "summary_table",
    "write_report",
]


@dataclass(frozen=True)
class DeviceResult:
    device_id: str
    version: int | None
    state: str | None
    online: bool
    telemetry_messages: int
    local_samples: int
    local_accuracy: float | None
    classes_seen: int


@dataclass(frozen=True)
class SimulationResult:
    task: str
    published_version: int
    published_target: str
    devices: list[DeviceResult]
    package: dict[str, Any]
    stage_seconds: dict[str, float]
    wall_seconds: float
    broker: str
    server_url: str
    out_dir: str
    ingest: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)  # the staged rollout, as the API showed it

    @property
    def devices_on_published(self) -> int:
        return sum(d.version == self.published_version for d in self.devices)

    @property
    def devices_with_telemetry(self) -> int:
        return sum(d.telemetry_messages > 0 for d in self.devices)

    @property
    def fleet_accuracy(self) -> float | None:
        """Accuracy over every sample the fleet predicted (sample-weighted)."""
        scored = [(d.local_accuracy, d.local_samples) for d in self.devices
                  if d.local_accuracy is not None]
        total = sum(samples for _, samples in scored)
        if not total:
            return None
        return sum(accuracy * samples for accuracy, samples in scored) / total

    @property
    def succeeded(self) -> bool:
        n = len(self.devices)
        return n > 0 and self.devices_on_published == n and self.devices_with_telemetry == n

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "succeeded": self.succeeded,
            "task": self.task,
            "published_version": self.published_version,
            "published_target": self.published_target,
            "fleet_accuracy": self.fleet_accuracy,
            "devices_on_published": self.devices_on_published,
            "devices_with_telemetry": self.devices_with_telemetry,
            "devices": [asdict(d) for d in self.devices],
            "package": self.package,
            "stage_seconds": self.stage_seconds,
            "wall_seconds": self.wall_seconds,
            "broker": self.broker,
            "server_url": self.server_url,
            "ingest": self.ingest,
            "rollout": self.rollout,
        }


def rollout_line(result: SimulationResult) -> str:
    """One line on the staged rollout: its verdict and the devices of each wave."""
    rollout = result.rollout
    if not rollout:
        return "rollout: -"
    waves = " + ".join(str(w["devices"]) for w in rollout.get("waves", []))
    return (
        f"rollout {rollout['id']}: {rollout['status']} in {rollout['wave_count']} waves"
        f" ({waves} devices), soak {rollout['policy']['soak_s']:g}s"
    )


def summary_table(result: SimulationResult) -> str:
    """A plain-text table: one row per device, then the fleet line."""
    header = f"{'device':<14}{'version':>8}{'state':>10}{'telemetry':>11}{'samples':>9}{'accuracy':>10}"
    lines = [header, "-" * len(header)]
    for d in result.devices:
        accuracy = f"{d.local_accuracy:.1%}" if d.local_accuracy is not None else "-"
        lines.append(
            f"{d.device_id:<14}{d.version if d.version is not None else '-':>8}"
            f"{(d.state or '-'):>10}{d.telemetry_messages:>11}{d.local_samples:>9}{accuracy:>10}"
        )
    lines.append("-" * len(header))
    fleet = result.fleet_accuracy
    pkg = result.package
    lines += [
        f"devices on v{result.published_version}: {result.devices_on_published}/{len(result.devices)}"
        f"   with telemetry: {result.devices_with_telemetry}/{len(result.devices)}"
        f"   fleet accuracy: {fleet:.1%}" if fleet is not None else "fleet accuracy: -",
        rollout_line(result),
        f"model: int8 {pkg.get('sizes_bytes', {}).get('int8', 0):,} B"
        f" ({pkg.get('size_ratio', 0):.2f}x fp32), held-out accuracy"
        f" fp32 {pkg.get('accuracy', {}).get('fp32', 0):.1%} / int8 {pkg.get('accuracy', {}).get('int8', 0):.1%}",
        "stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
        + f"; total {result.wall_seconds:.1f}s",
    ]
    return "\n".join(lines)


def _figure_png(result: SimulationResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = [d.device_id for d in result.devices]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    on_release = [d.version == result.published_version for d in result.devices]
    axes[0].barh(ids, [d.local_accuracy or 0 for d in result.devices],
                 color=["#2a9d8f" if ok else "#e76f51" for ok in on_release])
    axes[0].set_xlim(0, 1)
    axes[0].set_title(f"accuracy on local data (green: on v{result.published_version})")
    axes[0].invert_yaxis()
    axes[1].barh(ids, [d.telemetry_messages for d in result.devices], color="#457b9d")
    axes[1].set_title("telemetry batches received by the server")
    axes[1].invert_yaxis()
    stages = list(result.stage_seconds.items())
    left = 0.0
    for name, seconds in stages:
        axes[2].barh(["run"], [seconds], left=left, label=f"{name} ({seconds:.1f}s)")
        left += seconds
    axes[2].set_title("where the time went (s)")
    axes[2].legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def render_html(result: SimulationResult) -> str:
    png = base64.b64encode(_figure_png(result)).decode()
    verdict = "all devices updated and reporting" if result.succeeded else "INCOMPLETE: see table"
    rows = "".join(
        f"<tr><td>{html.escape(d.device_id)}</td><td>{d.version if d.version is not None else '-'}</td>"
        f"<td>{html.escape(d.state or '-')}</td><td>{d.telemetry_messages}</td><td>{d.local_samples}</td>"
        f"<td>{'-' if d.local_accuracy is None else f'{d.local_accuracy:.1%}'}</td></tr>"
        for d in result.devices
    )
    pkg = result.package
    fleet = "-" if result.fleet_accuracy is None else f"{result.fleet_accuracy:.1%}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>EdgeOps simulation</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
.kpi{{display:inline-block;margin:0 2em 1em 0}}.kpi b{{display:block;font-size:1.8em}}
table{{border-collapse:collapse}}td,th{{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>EdgeOps simulation: {html.escape(result.task)} → v{result.published_version}</h1>
<p>{html.escape(verdict)}</p>
<div class="kpi"><b>{result.devices_on_published}/{len(result.devices)}</b>devices on v{result.published_version}</div>
<div class="kpi"><b>{result.devices_with_telemetry}/{len(result.devices)}</b>devices reporting telemetry</div>
<div class="kpi"><b>{fleet}</b>fleet accuracy on local data</div>
<div class="kpi"><b>{pkg.get('size_ratio', 0):.2f}×</b>int8 size vs fp32</div>
<div class="kpi"><b>{result.wall_seconds:.0f} s</b>wall time</div>
<img alt="accuracy, telemetry and timing per device" src="data:image/png;base64,{png}" style="max-width:100%">
<p>{html.escape(rollout_line(result))}</p>
<h2>Devices</h2><table><tr><th>device</th><th>version</th><th>state</th><th>telemetry</th><th>samples</th><th>accuracy</th></tr>{rows}</table>
<h2>Release</h2><p>target <code>{html.escape(result.published_target)}</code>; held-out accuracy fp32
{pkg.get('accuracy', {}).get('fp32', 0):.1%}, int8 {pkg.get('accuracy', {}).get('int8', 0):.1%},
agreement {pkg.get('agreement', 0):.1%}; p50 latency fp32 {pkg.get('p50_latency_us', {}).get('fp32', 0):.0f} µs,
int8 {pkg.get('p50_latency_us', {}).get('int8', 0):.0f} µs.</p>
</body></html>"""


def write_report(result: SimulationResult, out_dir: Path) -> dict[str, Path]:
    """Write report.json and report.html into `out_dir`; return their paths."""
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    write_json_atomic(json_path, result.to_json())
    write_bytes_atomic(html_path, render_html(result).encode())
    return {"json": json_path, "html": html_path}
