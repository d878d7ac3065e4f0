"""Importing and running the agent never loads the server's heavy dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.agent.support import build_model, make_release, model_weights

pytestmark = [pytest.mark.integration]

FORBIDDEN = ("torch", "flwr", "fastapi", "sqlalchemy", "starlette", "server", "onnx")


def test_running_the_agent_loads_no_heavy_dependency(tmp_path: Path) -> None:
    weights = model_weights(1)
    (tmp_path / "model.onnx").write_bytes(build_model(weights))
    (tmp_path / "release.json").write_text(make_release(1, weights).model_dump_json(by_alias=True))
    script = textwrap.dedent(
        f"""
        import hashlib, sys
        from pathlib import Path
        import numpy as np
        from agent import Agent, AgentConfig
        from agent.ota.model_store import ModelStore
        from edgeops.schemas import ReleaseInfo

        tmp = Path({str(tmp_path)!r})
        data = (tmp / "model.onnx").read_bytes()
        release = ReleaseInfo.model_validate_json((tmp / "release.json").read_text())
        store = ModelStore(tmp / "home")
        store.stage("a", data, "digits/1/model.fp32.onnx", release, hashlib.sha256(data).hexdigest())
        store.activate("a")
        config = AgentConfig(home=tmp / "home", device_id="imports", server_url="http://127.0.0.1:9",
                             broker_port=9, http_port=0)
        agent = Agent(config).start()
        try:
            prediction = agent.predict(np.zeros((2, 64), dtype=np.float32))
            assert prediction.version == 1, prediction
        finally:
            agent.stop(timeout_s=2)
        loaded = sorted(m for m in {FORBIDDEN!r} if m in sys.modules)
        assert not loaded, f"the agent loaded {{loaded}}"
        print("ok")
        """
    )

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
