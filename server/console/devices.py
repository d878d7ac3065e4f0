"""`/console/devices`: the device list and one device's facts, health and status history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from edgeops.errors import EdgeOpsError
from server.api.deps import SessionFactoryDep
from server.console.auth import ConsoleUserDep
from server.console.render import ago, e, html, page, table
from server.db.tables import DeviceEvent, DeviceLabel, TelemetryRecord
from server.fleet import inventory

__all__ = ["health_table", "router"]

router = APIRouter(prefix="/devices")


@router.get("", response_class=HTMLResponse)
def devices_page(user: ConsoleUserDep, session_factory: SessionFactoryDep) -> HTMLResponse:
    with session_factory() as session:
        devices = inventory.list_devices(session)
        labels = {x.device_id: x for x in session.scalars(select(DeviceLabel))}
    rows = [
        (f'<a href="/console/devices/{e(d.device_id)}">{e(d.device_id)}</a>',
         "online" if d.online else "offline", e(d.state), e(d.release),
         e(labels[d.device_id].group_name if d.device_id in labels else "default"),
         e(ago(d.last_seen_at)))
        for d in devices
    ]
    return html(page("Devices", table(
        ["device", "presence", "state", "release", "group", "last seen"], rows, "devices"),
        user))


@router.get("/{device_id}", response_class=HTMLResponse)
def device_page(device_id: str, user: ConsoleUserDep,
                session_factory: SessionFactoryDep) -> HTMLResponse:
    with session_factory() as session:
        try:
            device = inventory.get_device(session, device_id)
        except EdgeOpsError as err:
            return html(page("Not found", f"<p>{e(err)}</p>", user), 404)
        label = session.get(DeviceLabel, device_id)
        events = list(session.scalars(
            select(DeviceEvent).where(DeviceEvent.device_id == device_id)
            .order_by(DeviceEvent.id.desc()).limit(50)))
        telemetry = session.scalars(
            select(TelemetryRecord).where(TelemetryRecord.device_id == device_id)
            .order_by(TelemetryRecord.window_end.desc()).limit(1)).first()
    facts = [
        ("presence", "online" if device.online else "offline"),
        ("state", device.state), ("release", device.release),
        ("update target", device.target), ("reason", device.reason),
        ("model", f"{device.model} v{device.version}" if device.model else None),
        ("agent", device.agent_version),
        ("group", label.group_name if label else "default"),
        ("tags", ", ".join(label.tags) if label else ""),
        ("last seen", ago(device.last_seen_at)),
        ("telemetry messages", device.telemetry_messages),
    ]
    body = table(["", ""], [(e(k), e(v)) for k, v in facts], "device-facts")
    body += f'<p><a href="/console/lineage/devices/{e(device_id)}">Lineage: what it ran when, and why</a></p>'
    body += "<h2>Health (last telemetry)</h2>" + health_table(telemetry)
    body += "<h2>Status history</h2>" + table(
        ["at", "presence", "state", "release", "target", "reason"],
        [(e(ago(ev.at)), "online" if ev.online else "offline", e(ev.state), e(ev.release),
          e(ev.target), e(ev.reason)) for ev in events], "history")
    return html(page(f"Device {device_id}", body, user))


def health_table(record: TelemetryRecord | None) -> str:
    """The last telemetry window as a table: volume, error rate, latency, confidence."""
    if record is None:
        return "<p>No telemetry yet.</p>"
    payload: dict[str, Any] = dict(record.payload)
    latency = payload.get("latency") or {}
    confidence = payload.get("confidence") or {}
    count = payload.get("count", 0)
    errors = payload.get("errors", 0)
    facts = [
        ("window", f"{record.window_end - record.window_start:.1f} s, {count} predictions"),
        ("error rate", f"{errors / count:.1%}" if count else "-"),
        ("latency p50 / p95", f"{latency.get('p50_ms', '-')} / {latency.get('p95_ms', '-')} ms"),
        ("mean confidence", confidence.get("mean", "-")),
        ("model", f"{payload.get('model')} v{payload.get('version')}"),
        ("RSS", f"{payload.get('rss_mb', '-')} MB"),
    ]
    return table(["", ""], [(e(k), e(v)) for k, v in facts], "health")
