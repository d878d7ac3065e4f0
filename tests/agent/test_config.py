from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.config import AgentConfig, init_agent_home, load_config
from edgeops.errors import ConfigError

ROOT = json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []}).encode()


def config(home: Path, **overrides: object) -> AgentConfig:
    values: dict[str, object] = dict(home=home, device_id="dev-1", server_url="http://server:8000")
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


def test_init_writes_settings_and_trust_root_and_load_reads_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_agent_home(home, config(home, broker_password="s3cret", http_port=8765), ROOT)

    loaded = load_config(home, environ={})

    assert loaded == config(home, broker_password="s3cret", http_port=8765)
    assert (home / "tuf" / "root.json").read_bytes() == ROOT
    assert stat.S_IMODE((home / "agent.toml").stat().st_mode) == 0o600


def test_init_refuses_an_existing_home_unless_forced(tmp_path: Path) -> None:
    init_agent_home(tmp_path, config(tmp_path), ROOT)

    with pytest.raises(ConfigError, match="already an agent home"):
        init_agent_home(tmp_path, config(tmp_path, device_id="dev-2"), ROOT)
    init_agent_home(tmp_path, config(tmp_path, device_id="dev-2"), ROOT, force=True)

    assert load_config(tmp_path, environ={}).device_id == "dev-2"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    init_agent_home(tmp_path, config(tmp_path), ROOT)
    environ = {
        "EDGEOPS_AGENT_BROKER_PORT": "1884",
        "EDGEOPS_AGENT_TELEMETRY_INTERVAL_S": "2.5",
        "EDGEOPS_AGENT_HTTP_PORT": "off",
    }

    loaded = load_config(tmp_path, environ=environ)

    assert (loaded.broker_port, loaded.telemetry_interval_s, loaded.http_port) == (1884, 2.5, None)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"device_id": "bad/id"}, "invalid device id"),
        ({"server_url": "ftp://x"}, "server url"),
        ({"broker_port": 0}, "broker_port"),
        ({"telemetry_interval_s": 0}, "telemetry_interval_s"),
        ({"fleet": "a/b"}, "fleet"),
    ],
)
def test_invalid_settings_are_refused(tmp_path: Path, overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config(tmp_path, **overrides)


def test_missing_or_corrupt_home_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="edgeops agent init"):
        load_config(tmp_path / "nowhere", environ={})
    (tmp_path / "agent.toml").write_text("device_id = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path, environ={})
    (tmp_path / "agent.toml").write_text('device_id = "d"\nserver_url = "http://s"\nsurprise = 1\n')
    with pytest.raises(ConfigError, match="unknown settings surprise"):
        load_config(tmp_path, environ={})


def test_init_refuses_a_root_that_is_not_tuf_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not TUF root"):
        init_agent_home(tmp_path, config(tmp_path), b"hello")


def test_mirrors_come_first_in_order_and_the_server_last(tmp_path: Path) -> None:
    loaded = config(tmp_path, mirrors=["https://cdn.example/edgeops", "http://10.0.0.2:8080/m/"])

    sources = loaded.repository_sources

    assert loaded.mirrors == ("https://cdn.example/edgeops/", "http://10.0.0.2:8080/m/")
    assert [s.metadata_base_url for s in sources] == [
        "https://cdn.example/edgeops/metadata/",
        "http://10.0.0.2:8080/m/metadata/",
        "http://server:8000/tuf/metadata/",
    ]
    assert [s.targets_base_url for s in sources][-1] == "http://server:8000/tuf/targets/"
    assert sources[0].label == "mirror https://cdn.example/edgeops/"
    assert [s.label for s in config(tmp_path).repository_sources] == [
        "server http://server:8000/tuf/"
    ]


def test_mirrors_round_trip_through_agent_toml_and_the_environment(tmp_path: Path) -> None:
    mirrors = ("https://a.example/m/", "https://b.example/m/")
    init_agent_home(tmp_path, config(tmp_path, mirrors=mirrors), ROOT)

    assert 'mirrors = ["https://a.example/m/", "https://b.example/m/"]' in (
        tmp_path / "agent.toml").read_text()
    assert load_config(tmp_path, environ={}).mirrors == mirrors
    overridden = load_config(tmp_path, environ={"EDGEOPS_AGENT_MIRRORS": "https://c.example"})
    assert overridden.mirrors == ("https://c.example/",)
    assert load_config(tmp_path, environ={"EDGEOPS_AGENT_MIRRORS": ""}).mirrors == ()


@pytest.mark.parametrize(
    ("mirrors", "needle"),
    [
        (["ftp://cdn.example/m/"], "mirror 'ftp://cdn.example/m/' must be an http"),
        (["cdn.example/m/"], "must be an http"),
        (["https://"], "must be an http"),
        (["https://cdn.example/m/?sig=1"], "must not have a query"),
        ("https://cdn.example/m/", "mirrors must be a list"),
        ([3], "mirror 3 must be an http"),
    ],
)
def test_bad_mirrors_are_refused(tmp_path: Path, mirrors: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config(tmp_path, mirrors=mirrors)


def test_a_bad_mirror_in_agent_toml_names_it(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(
        'device_id = "d"\nserver_url = "http://s"\nmirrors = ["file:///srv/m"]\n'
    )

    with pytest.raises(ConfigError, match="mirror 'file:///srv/m' must be an http"):
        load_config(tmp_path, environ={})
