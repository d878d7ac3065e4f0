"""A device user's install: a fresh venv with only `pip install '<checkout>[agent]'`.

There, none of the server's packages (nor rich's terminal output) is installed; `edgeops
--help` lists the server's command groups apart as not installed; each of them says, with
no traceback and exit code MISSING_DEPENDENCY, which extra to install; and the agent's own
commands work, `agent run` included.

The venv is made once per module from a wheelhouse on disk (tests.agent_install), so the
install is a real resolve and install of the checkout, without the network after the first
session.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from edgeops.exit_codes import ExitCode
from tests.agent.support import TufTestRepository
from tests.agent_install import agent_wheelhouse, copy_checkout, create_venv, pip_install
from tests.test_agent_footprint import server_only_packages

# The first session downloads the wheels and every session installs them: minutes on a
# busy machine, not the 300 s default.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LIST_DISTRIBUTIONS = "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"

SERVER_GROUPS = (
    "audit", "fleet", "lineage", "model", "monitor", "pipeline", "release", "rollout",
    "server", "simulate", "train",
)  # fmt: skip


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("agent-only")
    house = agent_wheelhouse(work)
    python = create_venv(work / "venv")
    source = copy_checkout(work / "source")
    pip_install(python, ["--no-index", "--find-links", str(house), f"{source}[agent]"])
    return python.parent


def edgeops(
    venv_bin: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv_bin / "edgeops"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd or venv_bin,
    )


def test_no_server_or_rich_terminal_package_is_installed(venv_bin: Path) -> None:
    listed = subprocess.run(
        [str(venv_bin / "python"), "-c", LIST_DISTRIBUTIONS],
        capture_output=True, text=True, timeout=120, check=True, cwd=venv_bin,
    )  # fmt: skip  # (not the checkout: its edgeops.egg-info would be listed too)

    installed = {name.lower().replace("_", "-") for name in json.loads(listed.stdout)}
    assert "edgeops" in installed and "onnxruntime" in installed
    assert installed & server_only_packages() == set()


def test_help_lists_the_server_groups_as_not_installed(venv_bin: Path) -> None:
    done = edgeops(venv_bin, "--help")

    assert done.returncode == ExitCode.OK, done.stderr
    available, _, unavailable = done.stdout.partition(
        "Not installed (pip install 'edgeops[server]'):"
    )
    assert "agent" in available.split("Commands:")[1]
    for group in SERVER_GROUPS:
        assert f"\n  {group} " in unavailable, done.stdout
        assert f"\n  {group} " not in available


@pytest.mark.parametrize(
    "args",
    [
        ("server", "init", "--home", "srv"),
        ("simulate",),
        ("train", "--clients", "3"),
        ("model", "--help"),
        ("release", "publish", "--home", "srv"),
        ("rollout", "list"),
    ],
)
def test_a_server_command_says_which_extra_to_install(
    venv_bin: Path, args: tuple[str, ...], tmp_path: Path
) -> None:
    done = edgeops(venv_bin, *args, cwd=tmp_path)

    assert done.returncode == ExitCode.MISSING_DEPENDENCY, done.stdout + done.stderr
    assert f"'edgeops {args[0]}' needs the 'server' extra" in done.stderr
    assert "pip install 'edgeops[server]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration  # `agent run` opens its local API on 127.0.0.1
def test_the_agent_commands_work(venv_bin: Path, tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_bytes(TufTestRepository(tmp_path / "repo").root_bytes)
    home = tmp_path / "home"

    init = edgeops(
        venv_bin, "agent", "init", "--home", str(home), "--device-id", "pi-1",
        "--server", "http://127.0.0.1:9", "--broker", "127.0.0.1:9", "--root", str(root),
        "--http-port", "-1",
    )  # fmt: skip
    status = edgeops(venv_bin, "agent", "status", "--home", str(home), "--json")
    unit = edgeops(
        venv_bin, "agent", "install-service", "--home", str(home), "--output", str(tmp_path / "u")
    )

    assert init.returncode == ExitCode.OK, init.stderr
    assert status.returncode == ExitCode.OK and json.loads(status.stdout)["active"] is None
    assert unit.returncode == ExitCode.OK, unit.stderr
    assert f"ExecStart={venv_bin / 'edgeops'} -v agent run" in (tmp_path / "u").read_text()
    process = subprocess.Popen(
        [str(venv_bin / "edgeops"), "agent", "run", "--home", str(home)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    assert first.startswith("agent pi-1 running (state idle"), first + rest
    assert process.returncode == 0 and "agent pi-1 stopped" in rest, rest
