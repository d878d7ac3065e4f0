from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError, RegistryError
from edgeops.schemas import ReleaseInfo
from server.config.settings import ServerSettings
from server.pipeline import publishing
from server.pipeline.publishing import load_package, publish_package
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Registry
from server.trust.repository import TufRepository

pytestmark = [pytest.mark.pipeline]


def _edit_report(package_dir: Path, edit: Any) -> None:
    path = package_dir / "report.json"
    report = json.loads(path.read_text())
    edit(report)
    path.write_text(json.dumps(report))


def test_publish_registers_both_formats_and_signs_the_chosen_one(
    server_settings: ServerSettings, session_factory: sessionmaker, package_dir: Path
) -> None:
    released = publish_package(server_settings, session_factory, package_dir)

    assert (released.model, released.version, released.format) == ("digits", 1, "int8")
    assert released.target_path == "digits/1/model.int8.onnx"
    assert released.targets_version == 2
    registry = Registry(session_factory, ArtifactStore(server_settings.artifacts_dir))
    versions = registry.list_versions("digits")
    assert [(v.version, v.format) for v in versions] == [(1, "fp32"), (1, "int8")]
    assert versions[1].metrics == {"accuracy": 0.96}
    assert versions[1].lineage.code_version == "test-1"
    [release] = registry.list_releases()
    assert (release.target_path, release.targets_version) == (released.target_path, 2)
    [target] = TufRepository(server_settings.tuf_dir).targets()
    assert target.sha256 == released.artifact_sha256
    info = ReleaseInfo.from_custom(target.custom)
    assert (info.version, info.format, info.model) == (1, "int8", "digits")


def test_publishing_again_assigns_the_next_version_with_lineage(
    server_settings: ServerSettings, session_factory: sessionmaker, package_dir: Path
) -> None:
    publish_package(server_settings, session_factory, package_dir)
    _edit_report(package_dir, lambda r: r["lineage"].update(parent_version=1))

    second = publish_package(server_settings, session_factory, package_dir, "fp32")

    assert (second.version, second.target_path) == (2, "digits/2/model.fp32.onnx")
    registry = Registry(session_factory, ArtifactStore(server_settings.artifacts_dir))
    parent = registry.get_version("digits", 1, "fp32")
    assert registry.get_version("digits", 2, "fp32").lineage.parent_version_id == parent.id


def test_a_signing_failure_leaves_nothing_published(
    server_settings: ServerSettings,
    session_factory: sessionmaker,
    package_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(publishing.TufRepository, "add_target", refuse)
    with pytest.raises(OSError):
        publish_package(server_settings, session_factory, package_dir)
    monkeypatch.undo()

    registry = Registry(session_factory, ArtifactStore(server_settings.artifacts_dir))
    assert registry.list_releases() == [] and registry.list_versions("digits") == []
    assert TufRepository(server_settings.tuf_dir).targets_version() == 1
    assert publish_package(server_settings, session_factory, package_dir).version == 1


def test_a_publish_killed_before_signing_is_removed_by_the_next(
    server_settings: ServerSettings, session_factory: sessionmaker, package_dir: Path
) -> None:
    # A real SIGKILL after the database commit, where add_target would sign the release.
    code = """if True:
        import os, signal, sys
        from pathlib import Path
        from server.pipeline import publishing
        from server.db.engine import open_database
        from server.config.settings import ServerSettings

        publishing.TufRepository.add_target = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        settings = ServerSettings(home=Path(sys.argv[1]))
        factory = open_database(settings.resolved_database_url)
        publishing.publish_package(settings, factory, Path(sys.argv[2]))
    """
    killed = subprocess.run(
        [sys.executable, "-c", code, str(server_settings.home), str(package_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    registry = Registry(session_factory, ArtifactStore(server_settings.artifacts_dir))
    [orphan] = registry.list_releases()  # recorded, never signed: no agent can see it
    assert TufRepository(server_settings.tuf_dir).targets() == []

    released = publish_package(server_settings, session_factory, package_dir, "fp32")

    assert released.version == orphan.version == 1
    assert [r.target_path for r in registry.list_releases()] == ["digits/1/model.fp32.onnx"]
    assert [t.path for t in TufRepository(server_settings.tuf_dir).targets()] == [
        "digits/1/model.fp32.onnx"
    ]
    assert [(v.version, v.format) for v in registry.list_versions("digits")] == [
        (1, "fp32"), (1, "int8")
    ]


def test_a_duplicate_target_leaves_the_registry_unchanged(
    server_settings: ServerSettings, session_factory: sessionmaker, package_dir: Path
) -> None:
    # A target signed outside the registry (e.g. a lost database) occupies digits/1.
    TufRepository(server_settings.tuf_dir).add_target(
        "digits/1/model.int8.onnx", package_dir / "model.int8.onnx", {}
    )
    with pytest.raises(RegistryError, match="already exists"):
        publish_package(server_settings, session_factory, package_dir)
    registry = Registry(session_factory, ArtifactStore(server_settings.artifacts_dir))
    assert registry.list_versions("digits") == []


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "model.int8.onnx").unlink(), "missing model.int8.onnx"),
        (lambda d: (d / "report.json").unlink(), "missing report.json"),
        (lambda d: (d / "report.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "report.json").write_text("[]"), "expected a JSON object"),
        (lambda d: _edit_report(d, lambda r: r.pop("task")), "missing field 'task'"),
        (lambda d: _edit_report(d, lambda r: r.update(model=3)), "field 'model' must be str"),
        (
            lambda d: _edit_report(d, lambda r: r["release_info"].pop("fp32")),
            "release_info.fp32' must be an object",
        ),
        (
            lambda d: _edit_report(d, lambda r: r["release_info"]["int8"].update(format="fp32")),
            "release_info.int8.format' is 'fp32', expected 'int8'",
        ),
        (
            lambda d: _edit_report(d, lambda r: r["release_info"]["int8"].update(model="other")),
            "release_info.int8.model' is 'other'",
        ),
        (
            lambda d: _edit_report(d, lambda r: r["release_info"]["int8"]["golden"].update(atol=0)),
            "release_info.int8.golden.atol' is invalid",
        ),
        (
            lambda d: _edit_report(d, lambda r: r["release_info"]["fp32"].update(surprise=1)),
            "release_info.fp32.surprise' is invalid",
        ),
        (
            lambda d: _edit_report(d, lambda r: r["lineage"].pop("code_version")),
            "missing field 'code_version'",
        ),
        (
            lambda d: _edit_report(d, lambda r: r.update(sha256={"int8": "0" * 64})),
            "field 'sha256.int8' does not match model.int8.onnx",
        ),
        (
            lambda d: _edit_report(d, lambda r: r["lineage"].update(parent_version="1")),
            "field 'parent_version' must be int",
        ),
    ],
)
def test_bad_packages_are_refused_naming_the_problem(
    package_dir: Path, breakage: Any, message: str
) -> None:
    breakage(package_dir)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_package(package_dir)


def test_a_model_that_misses_its_golden_outputs_is_not_published(
    server_settings: ServerSettings, session_factory: sessionmaker, package_dir: Path
) -> None:
    (package_dir / "model.int8.onnx").write_bytes((package_dir / "model.fp32.onnx").read_bytes())
    _edit_report(package_dir, lambda r: r.pop("sha256"))
    with pytest.raises(ConfigError, match="model.int8.onnx does not reproduce its golden outputs"):
        publish_package(server_settings, session_factory, package_dir)
    assert TufRepository(server_settings.tuf_dir).targets() == []


def test_unknown_parent_version_and_format_are_config_errors(
    server_settings: ServerSettings, session_factory: sessionmaker, package_dir: Path
) -> None:
    with pytest.raises(ConfigError, match="format must be one of"):
        publish_package(server_settings, session_factory, package_dir, "fp16")  # type: ignore[arg-type]
    _edit_report(package_dir, lambda r: r["lineage"].update(parent_version=7))
    with pytest.raises(ConfigError, match="parent_version 7"):
        publish_package(server_settings, session_factory, package_dir)


def test_a_missing_package_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_package(tmp_path / "nope")
