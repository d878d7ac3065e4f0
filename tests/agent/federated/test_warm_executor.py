"""The warm executor's parts without a SuperNode: its loop launches every task it is given,
each task runs in a forked child that reports flwr's exit code and never returns into the
executor, and loading the ClientApp or the executor does not import torch (the executor
preloads it explicitly). The whole path runs against real SuperNodes in test_deployment."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.federated import warm_executor
from agent.federated.warm_executor import ExecutorSettings, fork_clientapp, reap_children, serve
from edgeops.errors import ConfigError

pytestmark = [pytest.mark.federated]


class ScriptedTasks:
    """Hands out the given tokens (None: no task this time), then stops the loop."""

    def __init__(self, tokens: list[str | None], stop: threading.Event) -> None:
        self.tokens = list(tokens)
        self.stop = stop
        self.asked = 0

    def acquire(self) -> str | None:
        self.asked += 1
        token = self.tokens.pop(0)
        if not self.tokens:
            self.stop.set()
        return token


def test_the_loop_launches_every_task_and_waits_only_when_there_is_none() -> None:
    stop = threading.Event()
    tasks = ScriptedTasks(["t1", None, "t2", "t3", None], stop)
    launched: list[str] = []

    count = serve(
        tasks, lambda token: launched.append(token) or 1, poll_interval_s=0.01, stop=stop,
        reap=list,
    )

    assert launched == ["t1", "t2", "t3"] and count == 3
    assert tasks.asked == 5


def _wait_for_exit(pid: int, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for finished, code in reap_children():
            if finished == pid:
                return code
        time.sleep(0.02)
    raise AssertionError(f"child {pid} did not exit")


@pytest.mark.parametrize(
    ("behaviour", "expected_code"),
    [("flwr_exit_ok", 0), ("flwr_exit_error", 1), ("raises", 1), ("returns", 0)],
)
def test_each_task_runs_in_a_child_that_exits_with_flowers_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behaviour: str, expected_code: int
) -> None:
    record = tmp_path / "ran"

    def fake_run_clientapp(**kwargs: object) -> None:
        record.write_text(f"{os.getpid()} {kwargs['token']} {kwargs['parent_pid']}")
        if behaviour == "flwr_exit_ok":
            sys.exit(0)
        if behaviour == "flwr_exit_error":
            sys.exit(1)
        if behaviour == "raises":
            raise RuntimeError("the ClientApp broke")

    monkeypatch.setattr(warm_executor, "run_clientapp", fake_run_clientapp)

    pid = fork_clientapp("token-1", ExecutorSettings(runtime_api_address="127.0.0.1:1"))
    code = _wait_for_exit(pid)

    child, token, parent = record.read_text().split()
    assert int(child) == pid != os.getpid() and int(parent) == os.getpid()
    assert token == "token-1"
    assert code == expected_code


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        ExecutorSettings(runtime_api_address="")
    with pytest.raises(ConfigError):
        ExecutorSettings(runtime_api_address="127.0.0.1:9094", poll_interval_s=0)
    assert ExecutorSettings(runtime_api_address="127.0.0.1:9094").insecure


def test_loading_the_client_app_or_the_executor_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import agent.federated.client_app, agent.federated.mods, agent.federated.warm_executor\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'agent.federated.task_client' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
