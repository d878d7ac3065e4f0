"""Keys where they belong (issue 16, item 5): a server home holds no root key and no CA key
in clear.

An attacker who takes the server (its home folder, its process) gets the online keys —
targets, snapshot, timestamp — but cannot sign a new TUF root, so cannot make devices
trust keys of their own; root changes are signed offline by 2 of the 3 root keys, each an
encrypted file of its own. The fleet CA key is encrypted at rest, so a copy of the home
mints no device certificate.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root
from typer.testing import CliRunner

from agent import Agent, AgentConfig, init_agent_home
from edgeops.errors import ConfigError, TrustError
from server.app.build import build_app
from server.cli.server import app as server_app
from server.config.settings import ServerSettings, load_settings
from server.db.engine import close_database, open_database
from server.identity.ca import FleetCA
from server.pipeline.publishing import publish_package
from server.trust import keys as tuf_keys
from server.trust.repository import TufRepository, load_private_key
from simulations.mosquitto import MosquittoBroker
from tests.server.helpers import live_server, make_package
from tests.server.identity.secure_fleet import tls_client

pytestmark = [pytest.mark.security]

PASSPHRASES = (b"first holder's words", b"second holder's words", b"third holder's words")


def cli(*args: str, stdin: bytes | None = None) -> Any:
    """Run `edgeops server ...` in-process; the result, asserted to have succeeded."""
    result = CliRunner().invoke(server_app, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result


def passphrase_files(where: Path) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    files = [where / f"holder-{i + 1}.txt" for i in range(len(PASSPHRASES))]
    for path, passphrase in zip(files, PASSPHRASES, strict=True):
        path.write_bytes(passphrase + b"\n")
    return files


def init_offline_home(tmp_path: Path, *extra: str) -> tuple[Path, Path, list[Path]]:
    """`edgeops server init` with one passphrase per root key: (home, root key folder,
    passphrase files)."""
    home = tmp_path / "server"
    files = passphrase_files(tmp_path / "holders")
    options = [opt for path in files for opt in ("--root-passphrase-file", str(path))]
    result = cli("init", "--home", str(home), *options, *extra, "--json")
    return home, Path(json.loads(result.output)["root_keys"]), files


def clear_private_keys(folder: Path) -> list[CryptoSigner]:
    """Every private key under `folder` that loads without a passphrase: what a copy of
    the folder gives an attacker."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and b"PRIVATE KEY-----" in path.read_bytes()[:64]:
            try:
                found.append(CryptoSigner(load_pem_private_key(path.read_bytes(), None)))
            except (TypeError, ValueError):
                continue  # encrypted, or not a key CryptoSigner takes
    return found


def current_root(home: Path) -> Root:
    root = Metadata.from_file(str(home / "tuf" / "metadata" / "root.json")).signed
    assert isinstance(root, Root)
    return root


def test_a_taken_server_cannot_sign_a_new_root(tmp_path: Path) -> None:
    home, root_keys, _files = init_offline_home(tmp_path)
    root = current_root(home)
    repo = TufRepository(home / "tuf")

    # Attack: with everything in the server home, sign a root v2 that makes the attacker's
    # own key the timestamp key — devices would then follow whatever it signs.
    stolen = clear_private_keys(home)
    forged = Metadata(Root.from_dict(root.to_dict()))
    attacker = CryptoSigner.generate_ed25519()
    forged.signed.version = root.version + 1
    forged.signed.add_key(attacker.public_key, "timestamp")
    for signer in stolen:
        forged.sign(signer, append=True)

    assert stolen, "the online keys (targets, snapshot, timestamp) are in the home"
    assert not {s.public_key.keyid for s in stolen} & set(root.roles["root"].keyids)
    with pytest.raises(TrustError, match="0/2"):
        tuf_keys.verify_root(root, forged)
    # The server's own root-signing path refuses, naming the offline steps.
    with pytest.raises(ConfigError, match="sign-root.*import-root"):
        tuf_keys.rotate_key(repo, "timestamp")
    with pytest.raises(ConfigError, match="root keys belong offline"):
        repo.signers_for(root, "root")
    with pytest.raises(ConfigError, match="--key-dir"):
        tuf_keys.create_key(repo, "root")
    assert tuf_keys.online_root_keys(repo) == []
    assert current_root(home).version == 1

    # The three root keys are separate files outside the home, each encrypted with its
    # holder's passphrase: the folder alone gives nothing either.
    key_files = sorted(root_keys.glob("*.pem"))
    assert [p.name for p in key_files] == ["root.2.pem", "root.3.pem", "root.pem"]
    assert not root_keys.resolve().is_relative_to(home.resolve())
    assert clear_private_keys(root_keys) == []
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_private_key(root_keys / "root.pem", PASSPHRASES[1])
    unlocked = {
        load_private_key(root_keys / "root.pem", PASSPHRASES[0]).public_key.keyid,
        load_private_key(root_keys / "root.2.pem", PASSPHRASES[1]).public_key.keyid,
        load_private_key(root_keys / "root.3.pem", PASSPHRASES[2]).public_key.keyid,
    }
    assert unlocked == set(root.roles["root"].keyids)


def test_offline_keys_folder_must_leave_the_home(tmp_path: Path) -> None:
    home = tmp_path / "server"
    inside = CliRunner().invoke(
        server_app, ["init", "--home", str(home), "--offline-keys", str(home / "keys")]
    )
    assert isinstance(inside.exception, ConfigError)
    assert "outside" in str(inside.exception)
    assert not home.exists()

    usb = tmp_path / "usb"
    cli("init", "--home", str(home), "--offline-keys", str(usb))

    root = current_root(home)
    assert {s.public_key.keyid for s in clear_private_keys(usb)} == set(root.roles["root"].keyids)
    assert not {s.public_key.keyid for s in clear_private_keys(home)} & set(
        root.roles["root"].keyids
    )


def wait_for(probe: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.fixture
def offline_fleet(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[dict[str, Any]]:
    """A server home made by the CLI with offline encrypted root keys, served by uvicorn,
    and an agent on a real Mosquitto that trusts its root v1."""
    home, root_keys, files = init_offline_home(
        tmp_path, "--insecure-http", "--insecure-mqtt", "--broker-port", str(mosquitto.port)
    )
    settings = load_settings(home)
    session_factory = open_database(settings.resolved_database_url)
    with live_server(build_app(settings)) as url:
        config = AgentConfig(
            home=tmp_path / "device",
            device_id="device-1",
            server_url=url,
            broker_host=mosquitto.host,
            broker_port=mosquitto.port,
            telemetry_interval_s=0.5,
        )
        init_agent_home(
            config.home, config, (settings.tuf_dir / "metadata" / "1.root.json").read_bytes()
        )
        token = settings.admin_token_file.read_text().strip()
        with Agent(config) as agent, httpx.Client(base_url=url, timeout=10) as http:
            yield {
                "settings": settings,
                "session_factory": session_factory,
                "agent": agent,
                "http": http,
                "auth": {"Authorization": f"Bearer {token}"},
                "root_keys": root_keys,
                "passphrase_files": files,
                "tmp": tmp_path,
            }
    close_database(session_factory)


def deploy_and_wait(fleet: dict[str, Any], seed: int) -> int:
    settings: ServerSettings = fleet["settings"]
    release = publish_package(
        settings, fleet["session_factory"], make_package(fleet["tmp"] / f"pkg{seed}", seed=seed)
    )
    http, auth = fleet["http"], fleet["auth"]
    deployed = http.post("/api/deployments", json={"target": release.target_path}, headers=auth)
    assert deployed.status_code == 202, deployed.text

    def version() -> Any:
        response = http.get("/api/devices/device-1", headers=auth)
        return response.status_code == 200 and response.json().get("version") == release.version

    wait_for(version)
    assert fleet["agent"].predict(np.zeros((1, 64), np.float32)).version == release.version
    return release.version


@pytest.mark.integration  # uvicorn, a real Mosquitto, the agent's TUF client over HTTP
def test_offline_root_signing_rotates_the_timestamp_key_end_to_end(
    offline_fleet: dict[str, Any],
) -> None:
    fleet = offline_fleet
    home = fleet["settings"].home
    root_keys, files = fleet["root_keys"], fleet["passphrase_files"]
    wait_for(
        lambda: fleet["http"].get("/api/devices/device-1", headers=fleet["auth"]).status_code == 200
    )
    first = deploy_and_wait(fleet, seed=1)
    old_timestamp = current_root(home).roles["timestamp"].keyids

    # The operator, on the server: propose root v2 with a new timestamp key (not signable here).
    proposal = fleet["tmp"] / "root-v2.json"
    cli("keys", "rotate", "--home", str(home), "--role", "timestamp", "--out", str(proposal))
    # Holders 1 and 3, each on their own machine: one signature each, the passphrase from a
    # file or typed into stdin, never on the command line.
    cli(
        "keys",
        "sign-root",
        str(proposal),
        "--key",
        str(root_keys / "root.pem"),
        "--passphrase-file",
        str(files[0]),
    )
    refused = CliRunner().invoke(
        server_app, ["keys", "import-root", "--home", str(home), str(proposal)]
    )
    assert isinstance(refused.exception, TrustError)  # 1 of 2 is below the threshold
    cli(
        "keys",
        "sign-root",
        str(proposal),
        "--key",
        str(root_keys / "root.3.pem"),
        "--passphrase-file",
        "-",
        stdin=files[2].read_bytes(),
    )
    cli("keys", "import-root", "--home", str(home), str(proposal))

    new_root = current_root(home)
    assert new_root.version == 2 and new_root.roles["timestamp"].keyids != old_timestamp
    second = deploy_and_wait(fleet, seed=2)
    trusted = Metadata.from_file(str(fleet["tmp"] / "device" / "tuf" / "root.json")).signed
    assert (first, second, trusted.version) == (1, 2, 2)
    # The replaced timestamp key left the online keys; the home still holds no root key.
    assert (home / "tuf" / "keys" / "revoked").is_dir()
    assert tuf_keys.online_root_keys(TufRepository(home / "tuf")) == []


@pytest.mark.integration  # a real Mosquitto with the generated TLS config
def test_the_ca_key_is_encrypted_at_rest(tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "ca-passphrase"
    secret.parent.mkdir()
    secret.write_text("correct horse battery staple\n")
    home, _root_keys, _files = init_offline_home(tmp_path, "--ca-passphrase-file", str(secret))
    settings = dataclasses.replace(load_settings(home), fleet="f1", broker_tls=True)
    broker = MosquittoBroker.secured(tmp_path / "broker", settings)  # mints the broker's cert
    settings = dataclasses.replace(settings, broker_port=broker.port)

    # Attack: a copy of the home (a backup, a path traversal) and the CA key in it.
    key_file = home / "ca" / "ca.key"
    with pytest.raises(TypeError, match="encrypted"):
        load_pem_private_key(key_file.read_bytes(), None)
    with pytest.raises(ConfigError, match="ca_key_passphrase_file"):
        FleetCA.load(home)
    with pytest.raises(ConfigError, match="wrong passphrase"):
        FleetCA.load(home, passphrase=b"guess")

    # The server, given the passphrase file, still enrolls devices the broker accepts.
    broker.start()
    try:
        device = FleetCA.for_settings(settings).device_identity("dev-a", tmp_path / "dev-a")
        with tls_client(broker.port, device, client_id="dev-a") as client:
            assert client.is_connected()
    finally:
        broker.kill()


def test_a_clear_ca_key_is_encrypted_once_a_passphrase_is_configured(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "server")
    settings.home.mkdir()
    FleetCA.ensure(settings.home)  # a home from before the setting: the key in clear
    secret = tmp_path / "ca-passphrase"
    secret.write_bytes(b"s3cret words")

    FleetCA.for_settings(dataclasses.replace(settings, ca_key_passphrase_file=str(secret)))

    with pytest.raises(TypeError):
        load_pem_private_key((settings.home / "ca" / "ca.key").read_bytes(), None)
