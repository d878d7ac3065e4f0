"""`/console/models/{model}/{version}/card`: a release's model card as a page.

    GET /console/models/{model}/{version}/card   viewer   the full card (signed part + deployment)

    card_link(target)       a link to the card of the release with that TUF target path
    card_html(card)         the card as an HTML fragment (every value escaped)
    standalone_html(card)   a whole document with the console's CSS inline (`model card --html`)

The card comes from server.governance.model_card.full_card, like `/api/models/.../card`; an
unknown release is a 404 page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from edgeops.errors import EdgeOpsError
from server.api.deps import SessionFactoryDep
from server.api.errors import status_for
from server.console.auth import ConsoleUserDep
from server.console.render import e, html, page, table
from server.governance.model_card import full_card

__all__ = ["card_html", "card_link", "router", "standalone_html"]

router = APIRouter(prefix="/models")

ModelName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
_CSS = FilePath(__file__).with_name("console.css")
_CARD_CSS = (".mc dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }"
             " .mc dt { font-weight: 600; } .mc dd { margin: 0; } .mc code { word-break: break-all; }")


def card_link(target: str, label: str | None = None) -> str:
    """A link to the card of the release `model/version/model.<fmt>.onnx` (escaped text if
    the target does not have that shape)."""
    model, _, rest = target.partition("/")
    version = rest.partition("/")[0]
    if not model or not version.isdigit():
        return e(label or target)
    return (f'<a class="card-link" href="/console/models/{e(model)}/{e(version)}/card">'
            f"{e(label or target)}</a>")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else e(value)


def _pairs(items: Sequence[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _descriptions(items: Sequence[Mapping[str, Any]], key: str = "description") -> str:
    return "<ul>" + "".join(f"<li>{e(i.get(key))}" + (
        f" — <em>{e(i['mitigation_strategy'])}</em>" if i.get("mitigation_strategy") else "")
        + "</li>" for i in items) + "</ul>"


def _recipe(training: Mapping[str, Any] | None) -> str:
    if not training:
        return "<p>No training run recorded (the package names none).</p>"
    secagg = training.get("secagg")
    dp = training.get("dp")
    return _pairs([
        ("training run", e(training.get("training_run_id"))),
        ("kind", e(training.get("kind"))),
        ("rounds", f"{_number(training.get('rounds'))} "
                   f"({_number(training.get('rounds_aggregated'))} aggregated)"),
        ("strategy", e(training.get("strategy"))),
        ("local epochs · learning rate",
         f"{_number(training.get('local_epochs'))} · {_number(training.get('learning_rate'))}"),
        ("warm start from", _number(training.get("warm_start_from_version"))),
        ("SecAgg+", e(", ".join(f"{k} {v}" for k, v in secagg.items() if k != "protocol"))
         if isinstance(secagg, dict) else "off"),
        ("differential privacy", e(", ".join(f"{k} {v}" for k, v in dp.items()))
         if isinstance(dp, dict) else "off"),
        ("code version", f"<code>{e(training.get('code_version'))}</code>"),
    ])


def _gates(gates: Sequence[Mapping[str, Any]]) -> str:
    if not gates:
        return '<p id="card-no-gates">No gates: manual publish.</p>'
    rows = [
        (e(g.get("stage")), e(g.get("name")), _number(g.get("value")), _number(g.get("threshold")),
         _number(g.get("champion_value")),
         '<span class="status completed">pass</span>' if g.get("passed")
         else '<span class="status aborted">fail</span>')
        for g in gates
    ]
    return table(["stage", "gate", "value", "threshold", "baseline (champion)", "result"], rows,
                 "card-gates")


def _deployment(deployment: Mapping[str, Any] | None) -> str:
    if not deployment:
        return ""
    rollouts = [
        (f'<a href="/console/rollouts/{e(r["id"])}">#{e(r["id"])}</a>', e(r.get("status")),
         e(r.get("group") or "(fleet)"), f"{e(r.get('done'))} / {e(r.get('devices'))}",
         e(" ".join(f"{w['index']}:{w['status']}" for w in r.get("waves", []))),
         e(r.get("created_by")))
        for r in deployment.get("rollouts", [])
    ]
    checks = [(e(c.get("wave")), e(c.get("verdict")), e(c.get("reason")))
              for c in deployment.get("canary_checks", [])]
    audit = [(e(a.get("at")), e(a.get("actor")), e(a.get("role") or "–"), e(a.get("action")),
              e(a.get("target")), e(a.get("outcome")), e(a.get("reason") or a.get("detail") or ""))
             for a in deployment.get("audit", [])]
    approvals = ", ".join(f"{a.get('by')} ({a.get('how')})" for a in deployment.get("approvals", []))
    return (
        "<h2>Deployment</h2>"
        + _pairs([
            ("verdict", f'<span id="card-verdict">{e(deployment.get("verdict") or "manual release")}</span>'),
            ("champion now", "yes" if deployment.get("champion") else "no"),
            ("approvals", e(approvals or "none recorded")),
            ("devices reached", f'<span id="card-reached">{e(deployment.get("devices_reached"))}</span>'),
            ("devices running it now", e(deployment.get("devices_running"))),
            ("as of", e(deployment.get("as_of"))),
        ])
        + (table(["rollout", "status", "group", "committed", "waves", "by"], rollouts,
                 "card-rollouts") if rollouts else "<p>No rollout yet.</p>")
        + (table(["step", "verdict", "reason"], checks, "card-canary") if checks else "")
        + (table(["at (UTC)", "who", "role", "action", "on", "outcome", "reason"], audit,
                 "card-audit") if audit else '<p id="card-no-audit">No recorded actions yet.</p>')
    )


def card_html(card: Mapping[str, Any]) -> str:
    """The card as an HTML fragment: details, recipe, gates, metrics, considerations,
    deployment. Every value is escaped."""
    details, params = card["model_details"], card["model_parameters"]
    ext = card["edgeops"]
    release, data, int8 = ext["release"], ext["data"], ext["int8"]
    trigger = ext["trigger"]
    metrics = [(e(m["type"]), _number(m["value"]), e(m["slice"]), _number(m.get("threshold")),
                "" if "passed" not in m else ("pass" if m["passed"] else "fail"))
               for m in card["quantitative_analysis"]["performance_metrics"]]
    cohorts = ", ".join(f"{k} {v}" for k, v in sorted(data.get("cohorts", {}).items()))
    considerations = card["considerations"]
    signed = card.get("signed", True)
    return f"""<div class="mc" id="model-card">
<p>{e(details.get("overview"))}</p>
<p id="card-origin">Version {e(details["version"]["name"])} · {e(details["version"].get("diff"))}
· signed {e(details["version"]["date"])}{"" if signed else " · <strong>rebuilt: published before model cards, not signed</strong>"}</p>
{_pairs([
    ("release", f'<code id="card-target">{e(release["target"])}</code>'),
    ("artifact sha256", f'<code>{e(release["artifact_sha256"])}</code>'),
    ("architecture", e(params["model_architecture"])),
    ("input", e(params["input_format"])), ("output", e(params["output_format"])),
    ("owners", e(", ".join(o["name"] for o in details.get("owners", [])) or "not recorded")),
])}
<h2>Why it exists</h2>
{_pairs([
    ("origin", e(ext["origin"]["summary"])),
    ("trigger", f'<span id="card-trigger">{e(trigger.get("kind"))}</span> '
                + e(" ".join(str(trigger[k]) for k in ("event", "cohort") if trigger.get(k)))),
    ("champion (baseline)", _number(ext.get("champion_version"))),
])}
<h2>Data</h2>
{_pairs([
    ("fingerprint", f'<code>{e(data.get("fingerprint"))}</code>'),
    ("devices", _number(data.get("devices"))), ("per cohort", e(cohorts or "–")),
    ("labelled examples on the devices", _number(data.get("feedback_examples"))),
])}
<h2>Training recipe</h2>{_recipe(ext.get("training"))}
<h2>Gates</h2>{_gates(ext["gates"])}
<h2>Metrics</h2>{table(["metric", "value", "slice", "threshold", "gate"], metrics, "card-metrics")}
<h2>int8 fidelity and latency</h2>
{_pairs([
    ("quantization", e(int8.get("quantization"))),
    ("accuracy fp32 → int8", f'{_number(int8.get("fp32_accuracy"))} → {_number(int8.get("int8_accuracy"))}'
                            f' (drop {_number(int8.get("accuracy_drop_pp"))} pp)'),
    ("agreement", _number(int8.get("agreement"))),
    ("p50 latency (µs)", e(", ".join(f"{k} {v:.1f}" for k, v in (int8.get("p50_latency_us") or {}).items()))),
])}
<h2>Intended use and limitations</h2>
{_descriptions(considerations["use_cases"])}
{_descriptions(considerations["limitations"])}
<h2>Ethical considerations</h2>
{_descriptions(considerations["ethical_considerations"], "name")}
<h2>Policy</h2>
{'<p>None: manual publish.</p>' if ext.get("policy") is None else
 _pairs([(k, f"<code>{e(json.dumps(v))}</code>") for k, v in ext["policy"].items()
         if k != "schema_version"])}
{_deployment(card.get("deployment"))}
</div>"""


def standalone_html(card: Mapping[str, Any]) -> str:
    """A whole HTML document of the card, CSS inline, nothing fetched from elsewhere."""
    name = f"{card['model_details']['name']} v{card['model_details']['version']['name']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Model card · {e(name)}</title>
<style>{_CSS.read_text()}\n{_CARD_CSS}</style></head>
<body><main><h1>Model card · {e(name)}</h1>
{card_html(card)}
</main></body></html>"""


@router.get("/{model}/{version}/card", response_class=HTMLResponse)
def card_page(model: ModelName, version: Version, user: ConsoleUserDep,
              session_factory: SessionFactoryDep) -> HTMLResponse:
    try:
        with session_factory() as session:
            card = full_card(session, model, version)
    except EdgeOpsError as err:
        return html(page("Not found", f"<p>{e(err)}</p>", user), status_for(err))
    body = f"<style>{_CARD_CSS}</style>" + card_html(card)
    return html(page(f"Model card · {model} v{version}", body, user))
