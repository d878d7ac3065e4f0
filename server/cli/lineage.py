"""`edgeops lineage`: which release a device ran at a moment and why; a release's devices.

Both commands go through the server's API (server.cli.api_client); the answers are
server.governance.lineage's. The time is checked here first, so a typo fails before any
request (exit code 3, configuration).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from edgeops.cli import emit
from server.cli.api_client import HomeOption, JsonOption, ServerOption, TokenOption, connect
from server.governance.lineage import parse_time

__all__ = ["app", "render_chain", "render_device", "render_release"]

app = typer.Typer(
    name="lineage",
    help="Lineage for an auditor: which release a device ran at a given time, since and until "
    "when, and where that release came from (model version, the pipeline run or manual "
    "publish, the training run's rounds, data fingerprint, cohorts and code version, the "
    "signing keys and TUF metadata version, who approved it, what triggered it, the rollout "
    "that installed it).\n\nExample: edgeops lineage device pi-07 --at 2026-12-01T10:00:00Z",
    no_args_is_help=True,
)


def _value(value: Any) -> str:
    return "-" if value in (None, "", []) else str(value)


def render_chain(chain: dict[str, Any] | None) -> list[str]:
    """A release's chain as indented lines (pure)."""
    if chain is None:
        return ["  no release installed"]
    if chain.get("registered") is False:
        return [f"  {chain['target']}: not a release of this server's registry"]
    mv = chain["model_version"]
    published = chain["published_by"]
    lines = [f"  release {chain['target']}  ({mv['model']} v{mv['version']} {mv['format']}, "
             f"released {chain['released_at']})"]
    if published["kind"] == "pipeline":
        lines.append(f"  published by pipeline run {published['pipeline_run']} "
                     f"[{published['status']}], started by {published['started_by']}")
    else:
        lines.append("  published manually (no pipeline run)")
    training = chain.get("training")
    if training and not training.get("missing"):
        cohorts = (training.get("participants") or {}).get("cohorts")
        lines.append(
            f"  trained in run {training['training_run']} ({training['kind']}): "
            f"{_value(training['rounds'])} rounds, SecAgg+ "
            f"{'yes' if training['secure_aggregation'] else 'no'}, data "
            f"{_value(training['data_fingerprint'])[:16]}, code {_value(training['code_version'])}"
            + (f", cohorts {cohorts}" if cohorts else ""))
    else:
        lines.append("  no training run recorded")
    signing = chain["signing"]
    keys = ", ".join(k[:12] for k in signing.get("signed_by_keyids", [])) or "-"
    lines.append(f"  signed in targets v{signing['targets_version']} by {keys}")
    approval = chain["approval"]
    starters = _value(", ".join(approval["rollouts_created_by"]))
    lines.append(f"  approval: {_value(approval['pipeline'])}; rollouts started by {starters}")
    lines.append(f"  triggered by {chain['trigger']}")
    return lines


def render_device(answer: dict[str, Any]) -> str:
    """A device lineage answer as the text an operator reads (pure)."""
    head = f"device {answer['device_id']} at {answer['at']}"
    if answer["status"] != "ran":
        return f"{head}: {answer['status'].replace('_', ' ')} ({answer['detail']})"
    lines = [f"{head}: ran {_value(answer['release'])} "
             f"since {answer['since']} until {answer['until'] or 'now'}"]
    arrived = answer.get("arrived_by")
    if arrived:
        lines.append(f"  installed by {arrived['how']} of rollout {arrived['rollout']} "
                     f"(wave {arrived['wave']}, {arrived['phase']}, by {arrived['created_by']})")
    lines += render_chain(answer.get("lineage"))
    return "\n".join(lines)


def render_release(answer: dict[str, Any]) -> str:
    """A release lineage answer (chain, then each device's intervals) as text (pure)."""
    lines = render_chain(answer)
    lines.append(f"  devices ({len(answer['devices'])}):")
    for device in answer["devices"]:
        spans = "; ".join(f"{i['since']} -> {i['until'] or 'now'}" for i in device["intervals"])
        lines.append(f"    {device['device_id']}: {spans}")
    return "\n".join(lines)


@app.command("device")
def device(
    device_id: Annotated[str, typer.Argument(help="The device id.")],
    at: Annotated[str, typer.Option(
        "--at", help="ISO 8601 with a timezone (2026-12-01T10:00:00Z), or 'now'.")] = "now",
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Which release DEVICE_ID ran at --at, since and until when, and its whole chain.

    Example: edgeops lineage device pi-07 --at 2026-12-01T10:00:00+01:00 --json
    """
    moment = parse_time(at).isoformat()
    client = connect(home, server, token)
    try:
        answer = client.get(f"/api/lineage/devices/{quote(device_id, safe='')}",
                            params={"at": moment})
    finally:
        client.close()
    emit(answer, as_json, render_device(answer))


@app.command("release")
def release(
    name: Annotated[str, typer.Argument(
        help="The release: its TUF target path (digits/2/model.int8.onnx) or model:version.")],
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A release's chain and every device that had it installed, with when.

    Example: edgeops lineage release digits:2
    """
    client = connect(home, server, token)
    try:
        answer = client.get(f"/api/lineage/releases/{quote(name, safe='/:')}")
    finally:
        client.close()
    emit(answer, as_json, render_release(answer))
