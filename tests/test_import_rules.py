"""DESIGN.md's import rules: static (import-linter contracts in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is part of the dev extra"
    result = subprocess.run(
        [lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_and_agent_import_without_heavy_dependencies() -> None:
    code = (
        "import sys, edgeops, edgeops.tasks, edgeops.messages, edgeops.sketches, edgeops.cli;"
        "import agent;"
        "heavy = [m for m in ('torch', 'flwr', 'fastapi', 'sqlalchemy', 'starlette', 'onnx')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
