"""The agent on an emulated arm64 device: set-up, update and predict time, and memory.

    sudo python benchmarks/bench_device.py     # `make device-arm64` installs what it needs

Runs the arm64 device scenario of tests/device/arm64_fleet.py once: an arm64 Debian root
(built on first use, then cached under ~/.cache/edgeops), the agent installed there with
`pip install 'edgeops-*.whl[agent]'`, enrolled with a token against a server and a TLS
Mosquitto on this host, a signed int8 release deployed over the air, predictions through
the agent's local API, then a regressing release it rolls back.

Every figure is measured under qemu-user emulation, so it says how the agent behaves
emulated, not how fast an arm64 board is:

- setup_s: root (0 s when cached) + agent install (0 s when the checkout is unchanged) +
  `agent init` and `agent enroll` + `agent run` until the server sees the device online;
- update_s: deploy of the int8 release until the server sees the device run it (TUF
  refresh, download, golden smoke test on aarch64, switch, health window);
- rollback_s: deploy of the regressing release until the server sees it rolled back;
- predict_p50_ms: median round trip of one-sample POST /predict from this host;
- agent_rss_mb: peak RSS of the agent process, the emulator's own memory included.

The last line printed is one JSON object with these and the root's path.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.device.arm64 import host_problem  # noqa: E402
from tests.device.arm64_fleet import run_device_scenario  # noqa: E402


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    problem = host_problem()
    if problem is not None:
        print(f"bench_device: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgeops-bench-device-") as work:
        figures = run_device_scenario(Path(work), progress=lambda line: print(line, flush=True))
    print(json.dumps(figures.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
