from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeops.errors import ConfigError
from server.app.home import init_home, read_admin_token
from server.cli.release import app as release_app
from server.cli.server import app as server_app
from server.config.settings import ServerSettings, load_settings

pytestmark = [pytest.mark.pipeline]


def test_init_home_creates_everything(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "home", http_port=9000)

    info = init_home(settings)

    assert load_settings(info.home).http_port == 9000
    assert (info.home / "registry.db").is_file()
    assert (info.artifacts_dir / "sha256").is_dir()
    assert (info.tuf_dir / "metadata" / "1.root.json").is_file()
    assert stat.S_IMODE(info.admin_token_file.stat().st_mode) == 0o600
    assert len(read_admin_token(settings)) >= 40


def test_init_home_refuses_an_existing_home(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "home")
    init_home(settings)
    token = read_admin_token(settings)
    with pytest.raises(ConfigError, match="it is a server home already"):
        init_home(settings)
    assert read_admin_token(settings) == token


def test_a_failed_init_removes_what_it_created(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "home", database_url="nosuchdriver://x")
    with pytest.raises(ConfigError, match="cannot open database"):
        init_home(settings)
    assert not settings.home.exists()


def test_cli_init_publish_list(tmp_path: Path, package_template: Path) -> None:
    runner = CliRunner()
    home = tmp_path / "home"

    result = runner.invoke(
        server_app, ["init", "--home", str(home), "--http-port", "9001", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["public_url"] == "https://127.0.0.1:9001"  # TLS by default

    result = runner.invoke(
        release_app, ["publish", "--home", str(home), "--package", str(package_template), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["target_path"] == "digits/1/model.int8.onnx"

    result = runner.invoke(release_app, ["list", "--home", str(home), "--json"])
    assert [r["target_path"] for r in json.loads(result.output)["releases"]] == [
        "digits/1/model.int8.onnx"
    ]
    result = runner.invoke(release_app, ["list", "--home", str(home)])
    assert "digits/1/model.int8.onnx" in result.output


def test_cli_errors_are_domain_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    assert runner.invoke(server_app, ["init", "--home", str(home)]).exit_code == 0

    again = runner.invoke(server_app, ["init", "--home", str(home)])
    assert isinstance(again.exception, ConfigError)
    bad = runner.invoke(
        release_app, ["publish", "--home", str(home), "--package", str(tmp_path / "nope")]
    )
    assert isinstance(bad.exception, ConfigError)
    fmt = runner.invoke(
        release_app, ["publish", "--home", str(home), "--package", str(tmp_path), "--format", "x"]
    )
    assert isinstance(fmt.exception, ConfigError)
