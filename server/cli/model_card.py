"""`edgeops model card`: a release's model card, through the server's API.

    edgeops model card digits 3 [--json | --html [--out card.html]]
    edgeops model card digits/3/model.int8.onnx

The card is GET /api/models/{model}/versions/{version}/card (or /api/releases/card?target=):
the signed part the release's TUF metadata carries, and the deployment record appended since.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer

from edgeops.cli import emit
from edgeops.errors import ConfigError
from server.cli.api_client import HomeOption, JsonOption, ServerOption, TokenOption, connect

__all__ = ["card", "render_card"]


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def render_card(card: dict[str, Any]) -> str:
    """The card as the text an operator reads (pure): what, why, how trained, gates,
    metrics, limitations and the deployment so far."""
    details, ext = card["model_details"], card["edgeops"]
    release, data, training = ext["release"], ext["data"], ext.get("training")
    lines = [
        f"model card  {details['name']} v{details['version']['name']}  "
        f"({release['target']}, sha256 {release['artifact_sha256'][:12]}…)",
        f"  {details['version'].get('diff', '')}; signed {details['version']['date']}"
        + ("" if card.get("signed", True) else " [rebuilt: published before model cards]"),
        f"  data: fingerprint {data.get('fingerprint') or '-'}; devices {_number(data.get('devices'))}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(data['cohorts'].items()))})"
           if data.get("cohorts") else ""),
    ]
    if training:
        lines.append(
            f"  training run {training['training_run_id']}: {_number(training.get('rounds'))} "
            f"rounds, {training.get('strategy') or '-'}, SecAgg+ "
            f"{'on' if training.get('secagg') else 'off'}, DP {'on' if training.get('dp') else 'off'}, "
            f"code {training.get('code_version') or '-'}")
    if ext["gates"]:
        lines.append("  gates:")
        lines += [f"    {'pass' if g['passed'] else 'FAIL'}  {g['name']:<22} "
                  f"{_number(g.get('value')):>8}  threshold {_number(g['threshold'])}  "
                  f"champion {_number(g.get('champion_value'))}" for g in ext["gates"]]
    lines.append("  metrics:")
    lines += [f"    {m['type']:<18} {_number(m['value']):>8}  {m['slice']}"
              for m in card["quantitative_analysis"]["performance_metrics"]]
    lines.append("  limitations:")
    lines += [f"    - {item['description']}" for item in card["considerations"]["limitations"]]
    deployment = card.get("deployment")
    if deployment:
        lines.append(
            f"  deployment: {deployment.get('verdict') or 'manual release'}; "
            f"{len(deployment['rollouts'])} rollouts; devices reached "
            f"{deployment['devices_reached']}, running it now {deployment['devices_running']}")
    return "\n".join(lines)


def card(
    release: Annotated[str, typer.Argument(
        help="A model name (then give VERSION) or a release's target path "
        "(digits/3/model.int8.onnx).")],
    version: Annotated[int | None, typer.Argument(help="The model version.", min=1)] = None,
    as_html: Annotated[bool, typer.Option(
        "--html", help="Write the card as one self-contained HTML page.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="With --html: write the page to this file instead of stdout.")] = None,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a release's model card: where it came from, how it was trained and gated, its
    metrics and limitations (the part signed into the release), then its deployment.

    Example: edgeops model card digits 3 --home ./server
    """
    if as_json and as_html:
        raise ConfigError("choose one of --json and --html")
    if version is None and "/" not in release:
        raise ConfigError(f"give the version of {release!r} (edgeops model card {release} 3) "
                          f"or a target path ({release}/3/model.int8.onnx)")
    client = connect(home, server, token)
    try:
        result = (
            client.get(f"/api/models/{release}/versions/{version}/card") if version is not None
            else client.get("/api/releases/card", params={"target": release})
        )
    finally:
        client.close()
    if as_html:
        from server.console.model_card import standalone_html

        page = standalone_html(result)
        if out is not None:
            out.write_text(page)
            click.echo(f"wrote {out}", err=True)
        else:
            click.echo(page)
        return
    emit(result, as_json, render_card(result))
