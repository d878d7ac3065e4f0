"""A Prometheus scrape config and alerting rules for one server (pure: options in, text out).

`edgeops server prometheus-config` fills `ScrapeTarget` from the server's settings and writes
what `scrape_config` and `alert_rules` return. The rules are the template
`prometheus_rules.yml` beside this module with its `@name` placeholders filled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from edgeops.errors import ConfigError

__all__ = [
    "AlertOptions",
    "ScrapeTarget",
    "alert_rules",
    "scrape_config",
    "scrape_target",
]

JOB = "edgeops"
RULES_TEMPLATE = "prometheus_rules.yml"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ScrapeTarget:
    """Where and how Prometheus reads `/metrics`. `token_file` holds a viewer token (the
    server's `metrics_token` setting); `ca_file` verifies the server's certificate."""

    scheme: str
    address: str  # host:port
    metrics_path: str = "/metrics"
    token_file: Path | None = None
    ca_file: Path | None = None
    scrape_interval_s: int = 15


@dataclass(frozen=True)
class AlertOptions:
    """`offline_share`: fire when more than this share of known devices is offline.
    `tuf_expiry_share`: fire when less than this share of a role's validity is left.
    `default_accuracy_gate`: the gate for releases no pipeline run gated (None: no alert)."""

    offline_share: float = 0.2
    tuf_expiry_share: float = 0.25
    default_accuracy_gate: float | None = None
    window: str = "15m"
    accuracy_for: str = "10m"
    offline_for: str = "10m"

    def __post_init__(self) -> None:
        for name in ("offline_share", "tuf_expiry_share", "default_accuracy_gate"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ConfigError(f"{name} must be between 0 and 1 (exclusive), got {value}")


def scrape_target(
    public_url: str,
    *,
    token_file: Path | None = None,
    ca_file: Path | None = None,
    scrape_interval_s: int = 15,
) -> ScrapeTarget:
    """The target for a server reached at `public_url` (e.g. https://edge.example:8443/)."""
    parts = urlsplit(public_url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"cannot scrape {public_url!r}: expected http(s)://host[:port]")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    path = parts.path.rstrip("/") + "/metrics"
    return ScrapeTarget(
        parts.scheme, f"{host}:{port}", path, token_file, ca_file, scrape_interval_s
    )


def scrape_config(target: ScrapeTarget, rules_file: Path) -> str:
    """prometheus.yml scraping one server and loading `rules_file`."""
    q = json.dumps  # a JSON string is a YAML string, quoted safely
    interval = f"{target.scrape_interval_s}s"
    lines = [
        "# Written by `edgeops server prometheus-config` (see docs/monitoring.md).",
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        "rule_files:",
        f"  - {q(str(rules_file))}",
        "scrape_configs:",
        f"  - job_name: {q(JOB)}",
        f"    scheme: {target.scheme}",
        f"    metrics_path: {q(target.metrics_path)}",
        "    static_configs:",
        f"      - targets: [{q(target.address)}]",
    ]
    if target.token_file is not None:
        lines += [
            "    authorization:",
            "      type: Bearer",
            f"      credentials_file: {q(str(target.token_file))}",
        ]
    if target.ca_file is not None:
        lines += ["    tls_config:", f"      ca_file: {q(str(target.ca_file))}"]
    return "\n".join(lines) + "\n"


class _RulesTemplate(Template):
    delimiter = "@"  # Prometheus templates use $ and {{ }} themselves


def alert_rules(options: AlertOptions) -> str:
    """The alerting rules file for `options`."""
    gate = f'max by (model, version) (edgeops_release_accuracy_gate{{job="{JOB}"}})'
    if options.default_accuracy_gate is not None:
        gate += (
            f" or on (model, version) (max by (model, version) "
            f'(edgeops_estimated_accuracy{{job="{JOB}"}}) * 0 '
            f"+ {options.default_accuracy_gate:g})"
        )
    text = files("server.monitoring").joinpath(RULES_TEMPLATE).read_text(encoding="utf-8")
    return _RulesTemplate(text).substitute(
        job=JOB,
        gate=gate,
        window=options.window,
        accuracy_for=options.accuracy_for,
        offline_for=options.offline_for,
        offline_share=f"{options.offline_share:g}",
        offline_percent=f"{options.offline_share * 100:g}",
        tuf_expiry_share=f"{options.tuf_expiry_share:g}",
        tuf_expiry_percent=f"{options.tuf_expiry_share * 100:g}",
    )
