"""`edgeops train` as a user runs it, on the Flower Simulation Engine (Ray): a run that
trains is recorded with lineage and per-round metrics and packages into a release; a run
whose SecAgg+ rounds all halt exits non-zero and registers nothing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from edgeops.exit_codes import ExitCode
from tests.cli_support import run_edgeops
from tests.server.federated.support import recorded_training_runs

pytestmark = [pytest.mark.federated, pytest.mark.e2e, pytest.mark.integration]

# Few clients, one local epoch, one CPU per client actor: Ray on 2 shared cores.
SMALL = ("--task", "digits", "--clients", "3", "--local-epochs", "1", "--cpus", "2")
# What Flower's console handler, its deprecation banners and Ray's warnings look like.
FLOWER_LINE = re.compile(
    r"^\s*(INFO|WARNING|ERROR|DEBUG)\s*:|DEPRECATED|FutureWarning|ray[/.:]|flwr|warnings\.warn",
    re.MULTILINE,
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def assert_flower_logs_in_file(done: subprocess.CompletedProcess[str], log_file: Path) -> None:
    """The terminal has the command's own lines only and names the file that has Flower's."""
    terminal = ANSI.sub("", done.stderr)  # stdout is the command's summary
    assert f"Flower and Ray logs: {log_file}" in terminal
    stray = [m.group(0) for m in FLOWER_LINE.finditer(terminal.replace(str(log_file), ""))]
    assert not stray, terminal[-3000:]
    assert "flwr" in log_file.read_text()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("server")
    done = run_edgeops("server", "init", "--home", str(where / "srv"), cwd=where)
    assert done.returncode == 0, done.stderr
    return where / "srv"


def test_halted_secagg_rounds_exit_non_zero_and_register_nothing(home: Path) -> None:
    done = run_edgeops(
        "train", *SMALL, "--rounds", "1", "--drop-clients", "0,1", "--home", str(home), "--json",
        cwd=home.parent,
    )

    assert done.returncode == ExitCode.TRAINING, done.stderr[-3000:]
    assert "produced no new model" in done.stderr
    assert "secure aggregation halted" in done.stderr
    assert recorded_training_runs(home) == []
    assert_flower_logs_in_file(done, home / "logs" / "flower.log")


def test_train_records_the_run_and_packaging_from_it_carries_the_lineage(home: Path) -> None:
    done = run_edgeops("train", *SMALL, "--rounds", "2", "--home", str(home), "--json", cwd=home.parent)

    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["log_file"] == str(home / "logs" / "flower.log")
    assert_flower_logs_in_file(done, home / "logs" / "flower.log")
    run_id = summary["training_run_id"]
    [run] = [r for r in recorded_training_runs(home) if r["id"] == run_id]
    assert run["kind"] == "federated" and run["status"] == "succeeded"
    assert run["config"]["secagg_resolved"]["protocol"].startswith("SecAgg+")
    assert run["data_fingerprint"] and run["code_version"] and run["weights_sha256"]
    rounds = run["metrics"]["rounds"]
    assert [r["status"] for r in rounds] == ["aggregated", "aggregated"]
    assert all(r["heldout_accuracy"] is not None and r["federated_accuracy"] is not None for r in rounds)
    assert (home / "artifacts" / "sha256" / run["weights_sha256"]).is_file()
    reference = run["metrics"]["drift_reference"]
    assert reference["examples"] == 1347 and len(reference["counts"]) == 64

    out = home.parent / "pkg"
    packaged = run_edgeops(
        "model", "package", "--from-run", str(run_id), "--home", str(home), "--out", str(out),
        "--json", cwd=home.parent,
    )

    assert packaged.returncode == 0, packaged.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["lineage"]["training_run_id"] == run_id
    assert report["lineage"]["data_fingerprint"] == run["data_fingerprint"]
    assert report["release_info"]["int8"]["drift_reference"] == reference["counts"]
    assert report["accuracy"]["fp32"] == pytest.approx(rounds[-1]["heldout_accuracy"], abs=0.01)

    published = run_edgeops(
        "release", "publish", "--home", str(home), "--package", str(out), "--json", cwd=home.parent
    )
    assert published.returncode == 0, published.stderr[-3000:]
