"""The agent's footprint: what `pip install 'edgeops[agent]'` puts on a device, as a ratio to
its direct runtime dependencies (onnxruntime, numpy, paho-mqtt, tuf, cryptography,
pydantic, zstandard) installed alone, and the resident memory of a running agent serving a model.

    python benchmarks/bench_footprint.py --quick   # pip may use its cache; about a minute
    python benchmarks/bench_footprint.py           # the same, RSS sampled for longer

Two fresh venvs in a temporary folder, filled by pip from the package index (its cache
allowed): one with this checkout's `[agent]` (copied first, built as a wheel, installed
like a user installs it, .pyc compiled as pip does), one with the seven dependencies alone
at the versions the first one resolved. Each install's size is the bytes of the files it
added to site-packages (what an empty venv already holds is subtracted).

`agent_rss_mb` is the peak RSS of `edgeops agent run` from the agent-only venv, on a home
with the tests' 64x10 ONNX classifier installed in slot A (tests.agent.support), no broker
reachable and the local HTTP API on: startup, the model loaded into onnxruntime, and
`--predictions` local API predictions answered. The baseline `deps_rss_mb` is an
interpreter in the dependencies' venv that imports the six an agent loads at rest
(zstandard is loaded only to update) and runs the same model in an onnxruntime session,
so `rss_ratio` is what the agent's own code adds.

The last line printed is one JSON object: agent_install_mb, deps_install_mb,
install_ratio, agent_rss_mb, deps_rss_mb, rss_ratio, the packages the agent install added
over the dependencies (`extra_packages`) and the versions measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from simulations.mosquitto import free_port  # noqa: E402
from tests.agent.support import (  # noqa: E402
    NUM_FEATURES,
    TufTestRepository,
    build_model,
    install_model,
    make_release,
    model_weights,
)
from tests.agent_install import (  # noqa: E402
    copy_checkout,
    create_venv,
    pip_install,
    site_packages,
    tree_bytes,
)

DIRECT_DEPENDENCIES = ("onnxruntime", "numpy", "paho-mqtt", "tuf", "cryptography", "pydantic",
                       "zstandard")
MB = 1e6

# The baseline process: the six dependencies an agent loads at rest imported and the same model served.
DEPS_PROCESS = """
import sys, time
import numpy, onnxruntime, paho.mqtt.client, tuf.ngclient, cryptography.x509, pydantic
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = numpy.ones((1, {features}), dtype=numpy.float32)
for _ in range(int(sys.argv[2])):
    session.run(None, {{"input": x}})
print("ready", flush=True)
time.sleep(float(sys.argv[3]))
"""

LIST_VERSIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
)


def _versions(python: Path) -> dict[str, str]:
    # Run outside the checkout: its edgeops.egg-info would count as installed everywhere.
    done = subprocess.run(
        [str(python), "-c", LIST_VERSIONS],
        capture_output=True,
        text=True,
        check=True,
        cwd=python.parent,
    )
    return {name.replace("_", "-"): v for name, v in json.loads(done.stdout).items()}


def _installed_mb(venv: Path, requirements: list[str]) -> tuple[float, Path]:
    python = create_venv(venv)
    empty = tree_bytes(site_packages(venv))
    pip_install(python, requirements)
    return (tree_bytes(site_packages(venv)) - empty) / MB, python


def _peak_rss_mb(process: subprocess.Popen[str], until: float) -> float:
    watched = psutil.Process(process.pid)
    peak = 0
    while time.monotonic() < until and process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    return peak / MB


def _agent_home(work: Path, http_port: int) -> Path:
    """An agent home with the tests' classifier installed and active in slot A."""
    root = work / "root.json"
    root.write_bytes(TufTestRepository(work / "repo").root_bytes)
    home = work / "agent-home"
    weights = model_weights(1)
    done = subprocess.run(
        [
            sys.executable, "-m", "edgeops.cli", "agent", "init", "--home", str(home),
            "--device-id", "bench-1", "--server", "http://127.0.0.1:9",
            "--broker", "127.0.0.1:9", "--root", str(root), "--http-port", str(http_port),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"agent init failed: {done.stderr}")
    install_model(home, make_release(1, weights), build_model(weights))
    (work / "model.onnx").write_bytes(build_model(weights))
    return home


def _agent_rss_mb(agent_bin: Path, home: Path, port: int, predictions: int, hold_s: float) -> float:
    process = subprocess.Popen(
        [str(agent_bin / "edgeops"), "agent", "run", "--home", str(home)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=home.parent,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        if "running (state running" not in line:
            raise RuntimeError(f"the agent did not start serving: {line}{process.stderr.read()}")
        body = json.dumps({"inputs": np.ones((1, NUM_FEATURES)).tolist()}).encode()
        token = (home / "api_token").read_text().strip()
        for _ in range(predictions):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/predict",
                data=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        return _peak_rss_mb(process, time.monotonic() + hold_s)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _deps_rss_mb(deps_python: Path, model: Path, predictions: int, hold_s: float) -> float:
    process = subprocess.Popen(
        [
            str(deps_python), "-c", DEPS_PROCESS.format(features=NUM_FEATURES),
            str(model), str(predictions), str(hold_s + 5),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=model.parent,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the dependencies' baseline process failed")
        return _peak_rss_mb(process, time.monotonic() + hold_s)
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(quick: bool) -> dict[str, Any]:
    predictions = 100 if quick else 1000
    hold_s = 2.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        work = Path(tmp)
        source = copy_checkout(work / "source")
        agent_mb, agent_python = _installed_mb(work / "agent-venv", [f"{source}[agent]"])
        agent_versions = _versions(agent_python)
        pinned = [f"{name}=={agent_versions[name]}" for name in DIRECT_DEPENDENCIES]
        deps_mb, deps_python = _installed_mb(work / "deps-venv", pinned)
        extra = sorted(set(agent_versions) - set(_versions(deps_python)))
        port = free_port()
        home = _agent_home(work, port)
        agent_rss = _agent_rss_mb(agent_python.parent, home, port, predictions, hold_s)
        deps_rss = _deps_rss_mb(deps_python, work / "model.onnx", predictions, hold_s)
    return {
        "agent_install_mb": round(agent_mb, 2),
        "deps_install_mb": round(deps_mb, 2),
        "install_ratio": round(agent_mb / deps_mb, 4),
        "agent_rss_mb": round(agent_rss, 1),
        "deps_rss_mb": round(deps_rss, 1),
        "rss_ratio": round(agent_rss / deps_rss, 3),
        "extra_packages": {name: agent_versions[name] for name in extra},
        "versions": {name: agent_versions[name] for name in DIRECT_DEPENDENCIES},
        "predictions": predictions,
        "mode": "quick" if quick else "full",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100 predictions, RSS held 2 s")
    args = parser.parse_args()
    print(json.dumps(run(args.quick)))


if __name__ == "__main__":
    main()
