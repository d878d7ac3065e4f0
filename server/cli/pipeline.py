"""`edgeops pipeline`: start, follow, approve and list continuous-delivery runs; check a policy.

Every command but `policy check` goes through the server's API (server.cli.api_client);
`policy check` reads a file on this machine and needs no server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from edgeops.cli import emit
from edgeops.exit_codes import ExitCode
from server.cli.api_client import (
    ApiClient,
    HomeOption,
    JsonOption,
    ServerOption,
    TokenOption,
    connect,
)
from server.pipeline.machine import FINAL_STATUSES, STATUSES

__all__ = ["app", "render_run", "render_timeline_entry"]

STATES_HELP = (
    "A run moves through: triggered -> training -> evaluating -> gated -> packaging -> "
    "signed -> awaiting_approval -> canary -> promoted | rolled_back; any state before "
    "canary can end refused (a gate, a training failure, an approval timeout)."
)
EXIT_FOR_FINAL = {"promoted": ExitCode.OK, "rolled_back": ExitCode.UPDATE,
                  "refused": ExitCode.GATE_REFUSED}
FINAL_HELP = "Exit code 0 promoted, 7 rolled_back, 4 refused, 1 if --timeout passes first."

app = typer.Typer(
    name="pipeline",
    help="The continuous-delivery pipeline: retrain the model on the fleet's fresh data, "
    "gate it, sign it, canary it against a control cohort, then promote it or roll it back, "
    "as the release policy (<home>/pipeline.toml) says.\n\n" + STATES_HELP
    + "\n\nExample: edgeops pipeline run --watch --home ./server",
    no_args_is_help=True,
)
policy_app = typer.Typer(name="policy", help="Release policy files (no server needed).",
                         no_args_is_help=True)
app.add_typer(policy_app)

RunArgument = Annotated[int, typer.Argument(help="The pipeline run id.", min=1)]
IntervalOption = Annotated[float, typer.Option("--interval", min=0.05,
                                                help="Seconds between polls.")]
TimeoutOption = Annotated[float | None, typer.Option(
    "--timeout", min=0, help="Give up (exit 1) after this many seconds; default: wait.")]


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch))


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def render_timeline_entry(entry: dict[str, Any]) -> str:
    """One timeline entry as one line: "HH:MM:SS  state  message" (UTC)."""
    return f"{_clock(entry['at'])}  {entry['status']:<17}  {entry['message']}"


def _trigger(trigger: dict[str, Any]) -> str:
    kind = trigger.get("kind", "manual")
    if kind == "event":
        return f"{trigger.get('event')} on {trigger.get('cohort')}"
    if kind == "manual":
        return f"manual ({trigger.get('actor', '?')})"
    return str(kind)


def _gate_lines(gates: list[dict[str, Any]]) -> list[str]:
    lines = ["  gates:"]
    for g in gates:
        verdict = "pass" if g.get("passed") else "FAIL"
        lines.append(f"    {verdict}  {g['name']:<22} {_number(g.get('value')):>8}  "
                     f"threshold {_number(g.get('threshold'))}")
    return lines


def _canary_lines(checks: list[dict[str, Any]]) -> list[str]:
    lines = ["  canary checks:"]
    for c in checks:
        when = f"{_clock(c['at'])}  " if isinstance(c.get("at"), int | float) else ""
        lines.append(f"    {when}{c.get('verdict', '?'):<12} {c.get('reason', '')}".rstrip())
    return lines


def render_run(run: dict[str, Any], *, timeline: bool = True) -> str:
    """A run as the text an operator reads (pure; `status` and the end of `watch`):
    its state, trigger and versions, the gate results and canary checks in
    `results`, and (if `timeline` and the run has one) every timeline entry."""
    head = f"pipeline run {run['id']}  {run['model']}  [{run['status']}]"
    if run.get("reason"):
        head += f"  {run['reason']}"
    champion, candidate = run.get("champion_version"), run.get("candidate_version")
    lines = [
        head,
        f"  trigger {_trigger(run.get('trigger') or {})}; champion "
        + (f"v{champion}" if champion is not None else "none") + "; candidate "
        + (f"v{candidate} ({run.get('candidate_target')})" if candidate is not None else "-"),
    ]
    links = [f"{label} {run[key]}" for label, key in (
        ("training run", "training_run_id"), ("rollout", "rollout_id"),
        ("approved by", "approved_by")) if run.get(key) is not None]
    if links:
        lines.append("  " + "; ".join(links))
    results = run.get("results") or {}
    if results.get("gates"):
        lines += _gate_lines(results["gates"])
    canary = results.get("canary") or {}
    if canary.get("checks"):
        lines += _canary_lines(canary["checks"])
    if timeline and run.get("timeline"):
        lines.append("  timeline (UTC):")
        lines += ["    " + render_timeline_entry(entry) for entry in run["timeline"]]
    return "\n".join(lines)


def _exit_for(run: dict[str, Any]) -> None:
    code = EXIT_FOR_FINAL.get(run["status"], ExitCode.OK)
    if code != ExitCode.OK:
        raise typer.Exit(code)


def _follow(client: ApiClient, run_id: int, interval_s: float, timeout_s: float | None,
            as_json: bool) -> dict[str, Any]:
    """Print each new timeline entry of the run until it ends; return the ended run.

    With --json each entry is one JSON line and the last line is the whole run."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    while True:
        run = client.get(f"/api/pipeline/runs/{run_id}")
        for entry in run.get("timeline", [])[shown:]:
            click.echo(json.dumps({"run": run_id, **entry}, sort_keys=True) if as_json
                       else render_timeline_entry(entry))
        shown = len(run.get("timeline", []))
        if run["status"] in FINAL_STATUSES:
            click.echo(json.dumps(run, sort_keys=True) if as_json
                       else f"run {run_id} {run['status']}: {run.get('reason') or ''}".rstrip())
            return run
        if deadline is not None and time.monotonic() >= deadline:
            click.echo(f"run {run_id} is still {run['status']} after {timeout_s:g} s", err=True)
            raise typer.Exit(ExitCode.FAILURE)
        time.sleep(interval_s)


@app.command("run")
def run_pipeline(
    model: Annotated[str | None, typer.Option(
        "--model", help="The model (must be the policy's; default: the policy's model).")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Follow the run until it ends. " + FINAL_HELP)] = False,
    interval_s: IntervalOption = 1.0,
    timeout_s: TimeoutOption = None,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a pipeline run now, under the server's release policy (operator token).

    Example: edgeops pipeline run --model digits --watch
    """
    client = connect(home, server, token)
    body = {"model": model} if model is not None else {}
    run = client.post("/api/pipeline/runs", json=body)
    if watch:
        _exit_for(_follow(client, run["id"], interval_s, timeout_s, as_json))
        return
    emit(run, as_json, f"started pipeline run {run['id']} of {run['model']}\n"
                       f"follow it with: edgeops pipeline watch {run['id']}")


@app.command("list")
def list_runs(
    model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
    status_filter: Annotated[str | None, typer.Option(
        "--status", help=f"Only this state: {', '.join(STATUSES)}.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many.")] = 100,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pipeline runs, newest first.

    Example: edgeops pipeline list --status awaiting_approval
    """
    if status_filter is not None and status_filter not in STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(STATUSES)}; got {status_filter!r}",
                                 param_hint="--status")
    params: dict[str, Any] = {"limit": limit}
    params.update({k: v for k, v in (("model", model), ("status", status_filter)) if v})
    rows = connect(home, server, token).get("/api/pipeline/runs", params=params)
    lines = [
        f"{r['id']:>4}  {r['model']:<12} {r['status']:<17} {_trigger(r.get('trigger') or {}):<24} "
        f"{r.get('reason') or ''}".rstrip()
        for r in rows
    ]
    emit({"runs": rows}, as_json, "\n".join(lines) if lines else "no pipeline runs yet")


@app.command("status")
def status(
    run_id: RunArgument,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A run's state, gate results, canary checks and timeline.

    Example: edgeops pipeline status 12 --json
    """
    run = connect(home, server, token).get(f"/api/pipeline/runs/{run_id}")
    emit(run, as_json, render_run(run))


@app.command("watch")
def watch(
    run_id: RunArgument,
    interval_s: IntervalOption = 1.0,
    timeout_s: TimeoutOption = None,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a run until it is promoted, rolled back or refused.

    Prints one line per timeline entry ("HH:MM:SS  state  message", UTC), then the verdict;
    with --json one JSON object per entry and the whole run as the last line.
    Exit code 0 promoted, 7 rolled_back, 4 refused, 1 if --timeout passes first.

    Example: edgeops pipeline watch 12 --timeout 600
    """
    _exit_for(_follow(connect(home, server, token), run_id, interval_s, timeout_s, as_json))


@app.command("approve")
def approve(
    run_id: RunArgument,
    home: HomeOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve a run in awaiting_approval (operator token); its canary starts next.

    Example: edgeops pipeline approve 12
    """
    run = connect(home, server, token).post(f"/api/pipeline/runs/{run_id}/approve")
    emit(run, as_json, render_run(run, timeline=False))


@policy_app.command("check")
def check_policy(
    path: Annotated[Path, typer.Argument(help="A release policy TOML file.")],
    as_json: JsonOption = False,
) -> None:
    """Validate a release policy file and summarise it; exit code 3 with every problem
    (key path and what is wrong) if it is invalid.

    Example: edgeops pipeline policy check examples/policies/default.toml
    """
    from server.pipeline.policy import load_policy

    policy = load_policy(path)
    triggers, gates = policy.triggers, policy.gates.model_dump(exclude_none=True)
    starts = [*triggers.events, *(["schedule"] if triggers.schedule_s else []),
              *(["manual"] if triggers.manual else [])]
    steps = ", ".join(f"{w:g}%" for w in policy.canary.step_weights)
    summary = "\n".join([
        f"{path}: a valid release policy for model {policy.model!r}",
        f"  starts on: {', '.join(starts) or 'nothing'}",
        f"  retraining: {policy.retraining.strategy}, {policy.retraining.rounds} rounds, "
        f"secagg {'on' if policy.retraining.secagg else 'off'}",
        f"  gates: {', '.join(f'{k} {v:g}' for k, v in gates.items()) or 'none'}",
        f"  approval: {policy.approval.mode}; canary steps {steps}",
    ])
    emit({"path": str(path), "valid": True, "policy": policy.to_json()}, as_json, summary)
