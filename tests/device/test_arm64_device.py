"""Issue 18 item 1: an arm64 device in the fleet.

The agent, installed with `pip install 'edgeops-*.whl[agent]'` in an emulated arm64 Debian
root (aarch64 wheels from the package index), enrolls with a token, runs a signed int8
release received over the air, serves predictions, sends telemetry and rolls back a
regressing release (tests/device/arm64_fleet.py). The first run builds the root (minutes,
cached under ~/.cache/edgeops); `make device-arm64` installs what the host needs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.device.arm64 import AGENT_VENV, Arm64Root, host_problem
from tests.device.arm64_fleet import run_device_scenario

pytestmark = [pytest.mark.slow, pytest.mark.device, pytest.mark.integration]


@pytest.mark.timeout(3600)  # a first run builds the root and installs 47 MB of wheels emulated
def test_an_arm64_device_enrolls_updates_serves_and_rolls_back(tmp_path: Path) -> None:
    problem = host_problem()
    if problem is not None:
        pytest.skip(problem)

    figures = run_device_scenario(tmp_path, progress=lambda line: print(line, flush=True))

    platform = Arm64Root.ensure().run([
        f"{AGENT_VENV}/bin/python", "-c",
        "import platform, onnxruntime; print(platform.machine(), onnxruntime.__file__)",
    ])  # fmt: skip
    assert platform.split()[0] == "aarch64", platform
    assert f"{AGENT_VENV}/lib/" in platform  # the root's venv, not the host's packages
    assert figures.predict_p50_ms > 0 and figures.agent_rss_mb > 0
    assert figures.update_s < 180 and figures.rollback_s < 180
