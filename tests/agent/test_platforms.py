"""On a CPU onnxruntime publishes no wheels for (armv7, i686), the agent says so and what
to do instead, without a traceback; on a supported one a missing onnxruntime says which
extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.runtime import onnxruntime_import_error
from edgeops.errors import MissingDependencyError
from edgeops.exit_codes import ExitCode

# `edgeops agent run` in a fresh interpreter where onnxruntime cannot be imported and
# platform.machine() reports the CPU under test.
AGENT_RUN_WITHOUT_ONNXRUNTIME = """
import platform, sys
sys.modules["onnxruntime"] = None  # what `import onnxruntime` meets without a wheel
platform.machine = lambda: {machine!r}
from edgeops.cli import main
main(["agent", "run", "--home", "/nonexistent-agent-home"])
"""


@pytest.mark.parametrize("machine", ["armv7l", "i686"])
def test_an_unsupported_cpu_is_named_with_what_to_do(machine: str) -> None:
    error = onnxruntime_import_error(ImportError("No module named 'onnxruntime'"), machine)

    assert isinstance(error, MissingDependencyError)
    assert f"does not run on this {machine} machine" in str(error)
    assert "only x86-64 and aarch64" in str(error)
    assert "64-bit (aarch64) OS" in str(error)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64", "arm64", "AMD64"])
def test_on_a_supported_cpu_the_extra_is_named(machine: str) -> None:
    error = onnxruntime_import_error(ImportError("No module named 'onnxruntime'"), machine)

    assert "pip install 'edgeops[agent]'" in str(error)
    assert "does not run" not in str(error)


def test_agent_run_on_armv7_exits_with_the_platform_error() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AGENT_RUN_WITHOUT_ONNXRUNTIME.format(machine="armv7l")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == ExitCode.MISSING_DEPENDENCY, done.stderr
    assert "does not run on this armv7l machine" in done.stderr
    assert "Traceback" not in done.stderr
