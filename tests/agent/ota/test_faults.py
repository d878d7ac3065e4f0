"""SIGKILL the agent at every named point of an update, restart it, and check that every
restart serves a complete, valid model and every update ends committed, rolled back or
failed-before-the-switch — never half-applied.

The agent runs as a real subprocess (`tests/agent/ota/fault_driver.py`, which loads its settings
like `edgeops agent run`); `EDGEOPS_AGENT_FAULT_POINT` makes it SIGKILL itself at a point.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.config import dump_toml
from edgeops.schemas import HealthPolicy
from tests.agent.ota.support import (
    ControlledRepository,
    OtaSetup,
    RepoServer,
    active_model_sha,
    make_setup,
    read_state,
)
from tests.cli_support import REPO_ROOT

pytestmark = [pytest.mark.ota, pytest.mark.faults]

LENIENT = HealthPolicy(max_confidence_drop=0.5, max_p95_latency_ratio=10, latency_slack_ms=50)

HAPPY = [
    "downloading:enter",
    "mid_download",
    "downloading:exit",
    "verifying:enter",
    "mid_stage",
    "verifying:exit",
    "staged:enter",
    "staged:exit",
    "smoke_testing:enter",
    "smoke_testing:exit",
    "switching:enter",
    "mid_switch",
    "switching:exit",
    "health_window:enter",
    "health_window:tick",
    "health_window:exit",
    "committed:enter",
]
REGRESSING = ["health_window:exit", "rolling_back:enter", "mid_rollback", "rolling_back:exit", "rolled_back:enter"]
BROKEN = ["smoke_testing:enter", "update_failed:enter"]
# agent.ota.delta: inside the apply of a delta, and of a compressed artifact
DELTA = ["delta:downloaded", "delta:mid_apply", "delta:written", "downloading:exit"]
COMPRESSED = ["compressed:downloaded", "compressed:written"]
# (scenario, fault point) -> the state the update must end in after the restart
CASES = (
    [("good", p, "committed") for p in HAPPY]
    + [("regressing", p, "rolled_back") for p in REGRESSING]
    + [("broken", p, "update_failed") for p in BROKEN]
    + [("delta", p, "committed") for p in DELTA]
    + [("compressed", p, "committed") for p in COMPRESSED]
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OtaSetup, dict[str, str]]]:
    """One repository with a good, a regressing and a broken v2, and a v1 home to copy."""
    tmp = tmp_path_factory.mktemp("faults")
    repo = ControlledRepository(tmp / "repo")
    with RepoServer(repo.root_dir) as server:
        setup = make_setup(tmp, server, repo)
        targets = {"good": setup.publish(2, health=LENIENT)}
        release, data = setup.release(3, scale=0.01, health=LENIENT)  # near-uniform outputs
        targets["regressing"] = repo.add_release(release, data)
        broken, data = setup.release(4, health=LENIENT)
        wrong = setup.release(5)[0].golden  # golden vectors of another model
        targets["broken"] = repo.add_release(broken.model_copy(update={"golden": wrong}), data)
        targets["delta"] = _with_delta(setup, 6)
        targets["compressed"] = _with_compressed(setup, 7)
        yield setup, targets


def _with_delta(setup: OtaSetup, version: int) -> str:
    """Release `version`, v1's weights slightly moved, and the signed delta to it from v1."""
    from edgeops import ota_delta
    from edgeops.ota_delta import Region
    from server.pipeline.deltas import initializers

    old = setup.release(1)[1]
    setup.weights[version] = setup.weights[1] + np.float32(1e-3)
    release, new = setup.release(version, health=LENIENT)
    target = setup.repo.add_release(release, new)
    w_old, w_new = initializers(old)["W"], initializers(new)["W"]
    delta = ota_delta.encode(old, new, [Region(w_old.offset, w_new.offset, w_new.length, 4)])
    old_sha, new_sha = (hashlib.sha256(d).hexdigest() for d in (old, new))
    setup.repo.add_signed(ota_delta.delta_target_path(target, old_sha), delta, {"delta": {
        "from_sha256": old_sha, "to": target, "to_sha256": new_sha, "to_length": len(new),
    }})  # fmt: skip
    return target


def _with_compressed(setup: OtaSetup, version: int) -> str:
    """Release `version` and its signed zstd-compressed copy."""
    import zstandard

    from edgeops import ota_delta

    release, data = setup.release(version, health=LENIENT)
    target = setup.repo.add_release(release, data)
    setup.repo.add_signed(
        ota_delta.compressed_target_path(target), zstandard.ZstdCompressor(level=19).compress(data),
        {"compressed": {"of": target, "sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}},
    )  # fmt: skip
    return target


def run_driver(home: Path, target: str, fault: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEOPS_AGENT_")}
    if fault is not None:
        env["EDGEOPS_AGENT_FAULT_POINT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "tests.agent.ota.fault_driver", "--home", str(home), "--target", target],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def assert_serves_a_valid_model(home: Path) -> str:
    """The active slot is complete (sha256 matches its record) and runs."""
    target, _sha = active_model_sha(home)
    pointer = json.loads((home / "active.json").read_text())
    session = ort.InferenceSession(
        str(home / "slots" / pointer["slot"] / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(["probabilities"], {"input": np.full((2, 64), 3.0, dtype=np.float32)})
    assert out.shape == (2, 10) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4)
    return target


def kill_and_restart(
    setup: OtaSetup, home: Path, target: str, point: str, final: str
) -> list[str]:
    """One row of the table; returns what went wrong (empty: all good)."""
    shutil.copytree(setup.home, home)
    config = setup.config(home=home, health_window_s=0.4, health_min_samples=5, download_retries=2)
    (home / "agent.toml").write_text(dump_toml(config))
    v1 = active_model_sha(home)[0]
    problems: list[str] = []

    killed = run_driver(home, target, point)

    if killed.returncode != -signal.SIGKILL:
        return [f"{point}: not killed (rc {killed.returncode}): {killed.stderr[-800:]}"]
    saved = read_state(home)
    if saved is None or saved["target"] != target:
        problems.append(f"{point}: no update state saved before the kill")
    if assert_serves_a_valid_model(home) not in (v1, target):
        problems.append(f"{point}: serves neither the old nor the new model after the kill")

    restarted = run_driver(home, target, None)

    if restarted.returncode != 0:
        return [*problems, f"{point}: restart did not finish: {restarted.stderr[-800:]}"]
    status = json.loads(restarted.stdout.strip().splitlines()[-1])
    serving = assert_serves_a_valid_model(home)
    expected_release = target if final == "committed" else v1
    if (status["state"], status["target"], status["release"], serving) != (
        final, target, expected_release, expected_release
    ):
        problems.append(f"{point}: ended {status} serving {serving}, expected {final}")
    if final != "committed" and not status["reason"]:
        problems.append(f"{point}: {final} without a reason")
    return problems


@pytest.mark.parametrize("scenario", ["good", "regressing", "broken", "delta", "compressed"])
def test_sigkill_at_every_point_of_an_update(
    template: tuple[OtaSetup, dict[str, str]], tmp_path: Path, scenario: str
) -> None:
    """Each fault point in its own agent home; a few run at once (they mostly wait)."""
    setup, targets = template
    rows = [(p, final) for s, p, final in CASES if s == scenario]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(
            lambda row: kill_and_restart(
                setup, tmp_path / row[0].replace(":", "-"), targets[scenario], *row
            ),
            rows,
        )
        problems = [problem for result in results for problem in result]
    assert problems == []


def test_the_table_covers_at_least_twenty_distinct_points() -> None:
    assert len({point for _s, point, _f in CASES}) >= 20
