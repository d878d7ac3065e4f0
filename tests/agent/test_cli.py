from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeops.cli import main
from edgeops.exit_codes import ExitCode
from tests.agent.support import (
    TufTestRepository,
    build_model,
    install_model,
    make_release,
    model_weights,
)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


@pytest.fixture
def root_file(tmp_path: Path) -> Path:
    path = tmp_path / "root.json"
    path.write_bytes(TufTestRepository(tmp_path / "repo").root_bytes)
    return path


def init_args(home: Path, root: Path) -> list[str]:
    password_file = root.parent / "broker.password"
    password_file.write_text("pw\n")
    return [
        "agent", "init", "--home", str(home), "--device-id", "dev-7", "--server", "http://srv:8000",
        "--broker", "broker.local:1884", "--root", str(root), "--password-file", str(password_file),
        "--json",
    ]  # fmt: skip


def test_init_then_status_reads_local_state(tmp_path: Path, root_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"

    code, out, _ = run_cli(init_args(home, root_file), capsys)

    assert code == ExitCode.OK
    saved = json.loads(out)["config"]
    assert (saved["broker_host"], saved["broker_port"], saved["http_port"]) == ("broker.local", 1884, 8765)
    assert saved["broker_password"] == "***"
    code, out, _ = run_cli(["agent", "status", "--home", str(home), "--json"], capsys)
    assert code == ExitCode.OK and json.loads(out)["active"] is None

    weights = model_weights(4)
    install_model(home, make_release(4, weights), build_model(weights))
    code, out, _ = run_cli(["agent", "status", "--home", str(home)], capsys)
    assert code == ExitCode.OK and "digits v4 (fp32) in slot a" in out


def test_init_twice_needs_force(tmp_path: Path, root_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(init_args(tmp_path / "home", root_file), capsys)

    code, _, err = run_cli(init_args(tmp_path / "home", root_file), capsys)

    assert code == ExitCode.CONFIG and "--force" in err


@pytest.mark.parametrize("command", ["status", "run"])
def test_a_missing_home_is_a_config_error(tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["agent", command, "--home", str(tmp_path / "none")], capsys)

    assert code == ExitCode.CONFIG and "edgeops agent init" in err


def test_bad_broker_address_is_a_config_error(tmp_path: Path, root_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = init_args(tmp_path / "home", root_file)
    args[args.index("broker.local:1884")] = "broker.local"

    code, _, err = run_cli(args, capsys)

    assert code == ExitCode.CONFIG and "HOST:PORT" in err
