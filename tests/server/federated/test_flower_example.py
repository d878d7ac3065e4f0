"""The documented `flwr run . local-sim` in examples/flower, as a user runs it: a copy of the
app, `$FLWR_HOME/config.toml` copied from `flwr_home_config.toml`, Flower's own local
SuperLink with the Simulation Engine, and nothing fetched from a package index (uv offline)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.mosquitto import free_port
from tests.cli_support import REPO_ROOT

pytestmark = [pytest.mark.federated, pytest.mark.integration]

APP_DIR = REPO_ROOT / "examples" / "flower"
FEDERATION_SIZE = "options.num-supernodes = 5"


def _superlinks_using(flwr_home: Path) -> list[int]:
    """Pids of the local SuperLinks `flwr run` left running for this FLWR_HOME (detached)."""
    pids: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"flower-superlink" in part for part in cmdline) and any(
            str(flwr_home).encode() in part for part in cmdline
        ):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def flwr_home(tmp_path: Path) -> Iterator[Path]:
    """`cp examples/flower/flwr_home_config.toml $FLWR_HOME/config.toml`, with 3 SuperNodes (the fewest SecAgg+ takes);
    the local SuperLink the run starts is stopped afterwards."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    config = (APP_DIR / "flwr_home_config.toml").read_text()
    assert FEDERATION_SIZE in config, "the local-sim federation size moved; update this test"
    (home / "config.toml").write_text(config.replace(FEDERATION_SIZE, "options.num-supernodes = 3"))
    try:
        yield home
    finally:
        for pid in _superlinks_using(home):
            os.kill(pid, signal.SIGTERM)


def test_the_documented_local_sim_command_runs_offline(tmp_path: Path, flwr_home: Path) -> None:
    app = tmp_path / "flower"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "UV_OFFLINE": "1",  # the app's runtime environment must need nothing from an index
        # Flower's local SuperLink listens on fixed ports unless told otherwise.
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    run_config = (
        "num-rounds=1 num-clients=3 local-epochs=1 "
        "secagg.num-shares=3 secagg.reconstruction-threshold=2"
    )

    result = subprocess.run(
        ["flwr", "run", ".", "local-sim", "--stream", "--run-config", run_config],
        cwd=app, env=env, capture_output=True, text=True, timeout=420, check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # `flwr run --stream` exits 0 even when the run fails, so the log says whether it ran.
    assert "Exit Code: 608" not in output and "Simulation raised an exception" not in output, output
    assert "Run finished 1 round(s)" in output, output
    assert "aggregate_fit: received 3 results and 0 failures" in output, output
