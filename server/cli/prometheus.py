"""`edgeops server prometheus-config`: a Prometheus scrape config and alerting rules for this
server. Merged into `edgeops server` (server/cli/server.py adds this app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli import JsonOption, emit, home_option
from edgeops.errors import ConfigError

__all__ = ["CONFIG_FILE", "RULES_FILE", "app"]

CONFIG_FILE = "prometheus.yml"
RULES_FILE = "edgeops-rules.yml"
TOKEN_HINT = (
    "edgeops fleet tokens create prometheus --service prometheus --role viewer, "
    "then store the secret in a file only Prometheus can read"
)

app = typer.Typer()


@app.command("prometheus-config")
def prometheus_config(
    home: Annotated[Path, home_option("The server home folder (server.toml, fleet CA).")],
    out: Annotated[
        Path, typer.Option("--out", help=f"Folder to write {CONFIG_FILE} and {RULES_FILE} to.")
    ],
    url: Annotated[
        str,
        typer.Option(
            "--url", help="URL Prometheus reaches the server at (default: its public_url)."
        ),
    ] = "",
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="File holding a viewer API token, sent as a bearer token "
            "(required when server.toml sets metrics_token = true).",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help="CA that signed the server's HTTPS certificate (default: the fleet "
            "CA, which issues it unless http_tls_cert_file is set).",
        ),
    ] = None,
    scrape_interval_s: Annotated[
        int,
        typer.Option(
            "--scrape-interval", min=1, help="Seconds between scrapes and rule evaluations."
        ),
    ] = 15,
    offline_share: Annotated[
        float,
        typer.Option(
            "--offline-share", help="Alert when more than this share of devices is offline."
        ),
    ] = 0.2,
    tuf_expiry_share: Annotated[
        float,
        typer.Option(
            "--tuf-expiry-share",
            help="Alert when less than this share of a TUF role's validity "
            "is left (the server re-signs at one half).",
        ),
    ] = 0.25,
    default_accuracy_gate: Annotated[
        float | None,
        typer.Option(
            "--default-accuracy-gate",
            help="Accuracy gate for releases no pipeline run gated "
            "(default: alert only on gated releases).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write prometheus.yml (scraping this server's /metrics) and the EdgeOps alerting rules:
    server down, drift detected, estimated accuracy below the release's gate, rollout
    aborted, devices offline, ingest rejecting messages, TUF metadata close to expiry.

    Check them with `promtool check config prometheus.yml`; run Prometheus with
    `prometheus --config.file prometheus.yml`. Alerts reach people through an Alertmanager
    you add under `alerting:` (see docs/monitoring.md).
    """
    from server.config.settings import load_settings
    from server.identity.ca import CA_DIR
    from server.monitoring.prometheus import (
        AlertOptions,
        alert_rules,
        scrape_config,
        scrape_target,
    )

    settings = load_settings(home)
    if settings.metrics_token and token_file is None:
        raise ConfigError(
            f"{home}: metrics_token = true, so /metrics needs a viewer token: "
            f"pass --token-file FILE ({TOKEN_HINT})"
        )
    if token_file is not None and not token_file.is_file():
        raise ConfigError(f"--token-file {token_file} is not a file ({TOKEN_HINT})")
    public_url = url or settings.resolved_public_url
    if ca_file is None and public_url.startswith("https:") and not settings.http_tls_cert_file:
        ca_file = settings.home / CA_DIR / "ca.crt"
    target = scrape_target(
        public_url,
        token_file=token_file.resolve() if token_file else None,
        ca_file=ca_file.resolve() if ca_file else None,
        scrape_interval_s=scrape_interval_s,
    )
    rules = alert_rules(
        AlertOptions(
            offline_share=offline_share,
            tuf_expiry_share=tuf_expiry_share,
            default_accuracy_gate=default_accuracy_gate,
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    rules_file = (out / RULES_FILE).resolve()
    config_file = out / CONFIG_FILE
    rules_file.write_text(rules, encoding="utf-8")
    config_file.write_text(scrape_config(target, rules_file), encoding="utf-8")
    result = {
        "config": str(config_file),
        "rules": str(rules_file),
        "target": f"{target.scheme}://{target.address}{target.metrics_path}",
        "token_file": str(target.token_file) if target.token_file else None,
    }
    emit(
        result,
        as_json,
        f"Prometheus config written to {config_file} (scrapes {result['target']})\n"
        f"  alerting rules: {rules_file}\n"
        f"  check: promtool check config {config_file}\n"
        f"  run:   prometheus --config.file {config_file}",
    )
