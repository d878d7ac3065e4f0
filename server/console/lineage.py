"""`/console/lineage`: a device's lineage at a chosen time, and a release's chain and devices.

    /console/lineage/devices/{id}?at=ISO|now    reached from the device page
    /console/lineage/releases/{target}          linked from a device's answer
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from edgeops.errors import EdgeOpsError
from server.api.deps import SessionFactoryDep, SettingsDep
from server.api.errors import status_for
from server.console.auth import ConsoleUserDep
from server.console.render import e, html, page, table
from server.governance.lineage import device_lineage, parse_time, release_lineage

__all__ = ["chain_html", "router"]

router = APIRouter(prefix="/lineage")


def _release_link(target: str | None) -> str:
    if target is None:
        return "none"
    return f'<a href="/console/lineage/releases/{quote(target, safe="/")}">{e(target)}</a>'


def chain_html(chain: dict[str, Any] | None) -> str:
    """A release's chain as a two-column table: each step and what it was."""
    if chain is None:
        return "<p>No release installed.</p>"
    if chain.get("registered") is False:
        return f"<p>{e(chain['target'])} is not a release of this server's registry.</p>"
    mv, published = chain["model_version"], chain["published_by"]
    training, signing = chain.get("training") or {}, chain["signing"]
    approval = chain["approval"]
    facts = [
        ("release", _release_link(chain["target"])),
        ("model version", e(f"{mv['model']} v{mv['version']} ({mv['format']}), "
                            f"sha256 {mv['artifact_sha256'][:16]}…")),
        ("published", e(f"pipeline run {published['pipeline_run']} [{published['status']}]"
                        if published["kind"] == "pipeline" else "manually")),
        ("training run", e(training.get("training_run", "none"))),
        ("rounds", e(training.get("rounds"))),
        ("data fingerprint", e(training.get("data_fingerprint"))),
        ("cohorts", e((training.get("participants") or {}).get("cohorts"))),
        ("code version", e(training.get("code_version"))),
        ("SecAgg+", e(training.get("secure_aggregation"))),
        ("signed", e(f"targets v{signing['targets_version']} by "
                     + (", ".join(k[:12] for k in signing.get("signed_by_keyids", [])) or "-"))),
        ("approved by", e(approval["pipeline"] or "-")),
        ("rollouts created by", e(", ".join(approval["rollouts_created_by"]) or "-")),
        ("trigger", e(chain["trigger"])),
    ]
    return table(["", ""], facts, "lineage-chain")


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_lineage_page(device_id: str, user: ConsoleUserDep, session_factory: SessionFactoryDep,
                        settings: SettingsDep, at: str = "now") -> HTMLResponse:
    form = (f'<form method="get" class="inline"><label>at <input name="at" value="{e(at)}" '
            'size="28"></label> <button type="submit">Show</button></form>')
    try:
        moment = parse_time(at)
        with session_factory() as session:
            answer = device_lineage(session, device_id, moment, settings.tuf_dir)
    except EdgeOpsError as err:
        return html(page(f"Lineage of {device_id}", form + f"<p>{e(err)}</p>", user),
                    status_for(err))
    if answer["status"] != "ran":
        body = f"<p>{e(answer['status'].replace('_', ' '))}: {e(answer['detail'])}</p>"
    else:
        arrived = answer.get("arrived_by") or {}
        facts = [
            ("at", e(answer["at"])), ("release", _release_link(answer["release"])),
            ("since", e(answer["since"])), ("until", e(answer["until"] or "now")),
            ("installed by", e(f"{arrived['how']} of rollout {arrived['rollout']} (wave "
                               f"{arrived['wave']}, by {arrived['created_by']})"
                               if arrived else "-")),
        ]
        body = table(["", ""], facts, "lineage-device") + "<h2>Chain</h2>"
        body += chain_html(answer.get("lineage")) + "<h2>Releases over time</h2>" + table(
            ["release", "since", "until"],
            [(_release_link(i["release"]), e(i["since"]), e(i["until"] or "now"))
             for i in answer["history"]], "lineage-history")
    back = f'<p><a href="/console/devices/{e(device_id)}">back to the device</a></p>'
    return html(page(f"Lineage of {device_id}", back + form + body, user))


@router.get("/releases/{name:path}", response_class=HTMLResponse)
def release_lineage_page(name: str, user: ConsoleUserDep, session_factory: SessionFactoryDep,
                         settings: SettingsDep) -> HTMLResponse:
    try:
        with session_factory() as session:
            answer = release_lineage(session, name, settings.tuf_dir)
    except EdgeOpsError as err:
        return html(page("Release lineage", f"<p>{e(err)}</p>", user), status_for(err))
    rows = [
        (f'<a href="/console/lineage/devices/{e(d["device_id"])}?at={quote(i["since"])}">'
         f'{e(d["device_id"])}</a>', e(i["since"]), e(i["until"] or "now"))
        for d in answer["devices"] for i in d["intervals"]
    ]
    body = chain_html(answer) + "<h2>Devices that ran it</h2>" + table(
        ["device", "since", "until"], rows, "lineage-devices")
    return html(page(f"Lineage of {answer['target']}", body, user))
