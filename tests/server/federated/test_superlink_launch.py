"""The SuperLink launch plan (which addresses are allowed, what runs where) and the Fleet
gateway's filter, without starting anything (tests/security/test_training_link.py runs
them for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeops.errors import ConfigError
from server.federated.fleet_gateway import is_fleet_call
from server.federated.superlink_launch import (
    SuperLinkRequest,
    TlsFiles,
    is_loopback,
    plan_superlink,
)


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    files = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.pem", tmp_path / "server.key")
    for path in (files.ca_file, files.cert_file, files.key_file):
        path.write_text("x")
    return files


def _request(tls: TlsFiles, tmp_path: Path, **changes: object) -> SuperLinkRequest:
    fields: dict[str, object] = {
        "tls": tls,
        "state_dir": tmp_path / "state",
        "fleet_host": "0.0.0.0",
        "fleet_port": 9092,
    }
    fields.update(changes)
    return SuperLinkRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
     ("server.example", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_superlink_listens_on_loopback_with_supernode_auth(
    tls: TlsFiles, tmp_path: Path
) -> None:
    plan = plan_superlink(_request(tls, tmp_path), {"PATH": "/bin", "EDGEOPS_SERVER_X": "secret"})
    command = list(plan.command)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "9093"
    assert "--enable-supernode-auth" in command
    assert "--disable-runtime-dependency-installation" in command
    assert "--insecure" not in command
    assert plan.upstream_url == "https://127.0.0.1:9093"
    # ServerApps inherit this: no server settings, HOME and cwd in the state folder.
    assert not any(name.startswith("EDGEOPS_") for name in plan.env)
    assert plan.env["HOME"] == str(plan.cwd) == str((tmp_path / "state").resolve())
    assert "FLWR_OIDC_ENABLED" not in plan.env


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "server.example"])
def test_a_non_loopback_control_address_is_refused_without_auth(
    tls: TlsFiles, tmp_path: Path, host: str
) -> None:
    with pytest.raises(ConfigError, match="Control and Runtime APIs"):
        plan_superlink(_request(tls, tmp_path, control_host=host), {})


def test_a_non_loopback_control_address_needs_oidc(tls: TlsFiles, tmp_path: Path) -> None:
    plan = plan_superlink(_request(tls, tmp_path, control_host="10.0.0.5", control_oidc=True), {})
    assert plan.env["FLWR_OIDC_ENABLED"] == "1"
    assert plan.upstream_url == "https://10.0.0.5:9093"


def test_the_state_folder_must_lie_outside_the_server_home(tls: TlsFiles, tmp_path: Path) -> None:
    home = tmp_path / "srv"
    with pytest.raises(ConfigError, match="inside the server home"):
        plan_superlink(_request(tls, tmp_path, state_dir=home / "superlink", server_home=home), {})


def test_missing_tls_files_are_named(tls: TlsFiles, tmp_path: Path) -> None:
    tls.key_file.unlink()
    with pytest.raises(ConfigError, match=r"TLS key file .*server\.key does not exist"):
        plan_superlink(_request(tls, tmp_path), {})


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("POST", "/v1/fleet/activate-node", True), ("POST", "/v1/fleet/pull-messages", True),
     ("GET", "/v1/fleet/pull-messages", False), ("POST", "/v1/control/start-run", False),
     ("POST", "/v1/control/register-node", False), ("POST", "/v1/runtime/get-nodes", False),
     ("POST", "/v1/fleet/../control/start-run", False), ("POST", "/v1/fleet/a/b", False),
     ("POST", "/v1/fleet/", False), ("POST", "/docs", False), ("POST", "/health", False)],
)  # fmt: skip
def test_the_gateway_passes_only_fleet_calls(method: str, path: str, allowed: bool) -> None:
    assert is_fleet_call(method, path) is allowed
