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
