"""`edgeops server broker-config` and `edgeops server enroll-token`: the broker's side of
device identity. Merged into `edgeops server` (server/cli/server.py adds this app)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeops.cli import JsonOption, emit, home_option
from edgeops.errors import ConfigError

if TYPE_CHECKING:
    from server.config.settings import ServerSettings

__all__ = ["app"]

app = typer.Typer()

HomeOption = Annotated[Path, home_option("The server home folder (holds the fleet CA).")]


@app.command("broker-config")
def broker_config(
    home: HomeOption,
    out: Annotated[Path, typer.Option("--out", help="Folder to write mosquitto.conf, acl and certs to.")],
    port: Annotated[int, typer.Option(help="TLS listener port.")] = 8883,
    bind: Annotated[str, typer.Option(help="Address to listen on (default: every interface).")] = "",
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Name or IP devices use to reach the broker (repeatable; "
                     "goes into the broker certificate)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Persistence folder (default: keep sessions in memory).")
    ] = None,
    server_client: Annotated[
        list[str] | None,
        typer.Option("--server-client", help="Extra server identity with fleet-wide rights "
                     "(a second ingest worker, e.g. edgeops-server-ingest-2): its client "
                     "certificate is minted in <home>/ca/identities/ and no device may "
                     "enroll under the name."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write a Mosquitto config: a TLS listener that requires client certificates from the
    fleet CA, the certificate CN as username and client id, ACLs confining every device to
    its own topics, the server's own identities, and queue limits far above 1,000.

    With device_auth = "password" (simulations; needs allow_password_auth = true) devices
    log in with the passwords issued at enrollment instead of client certificates.
    """
    from server.config.settings import load_settings
    from server.identity.broker_config import write_broker_config

    settings = load_settings(home)
    _refuse_enrolled_names(settings, server_client or ())
    files = write_broker_config(
        settings, out, port=port, bind_host=bind, hosts=tuple(host or ("localhost", "127.0.0.1")),
        data_dir=data_dir.resolve() if data_dir else None,
        extra_server_clients=tuple(server_client or ()),
    )
    result = {
        "config": str(files.config_file),
        "acl": str(files.acl_file),
        "ca": str(files.ca_file),
        "password_file": str(files.password_file) if files.password_file else None,
        "auth": files.spec.auth,
        "port": port,
    }
    emit(
        result,
        as_json,
        f"Mosquitto config written to {files.config_file} ({files.spec.auth} auth, port {port})\n"
        f"  run it with: mosquitto -c {files.config_file}\n"
        f"  the broker's key is 0600: make it readable by the user Mosquitto runs as\n"
        f"  the server connects with TLS once server.toml says broker_tls = true",
    )


def _refuse_enrolled_names(settings: ServerSettings, names: Sequence[str]) -> None:
    """ConfigError if a server client name is already a device: it would get fleet rights."""
    from server.db.engine import open_database
    from server.identity.certificates import CertificateStore

    if not names:
        return
    store = CertificateStore(open_database(settings.resolved_database_url))
    for name in names:
        if store.is_enrolled(name):
            raise ConfigError(
                f"--server-client {name!r} is an enrolled device: the ACL would give that "
                "device fleet-wide rights; choose another name"
            )


@app.command("enroll-token")
def enroll_token(
    home: HomeOption,
    device_id: Annotated[
        str | None, typer.Option("--device-id", help="Only this device id may use the token.")
    ] = None,
    ttl_s: Annotated[float, typer.Option("--ttl-s", help="Seconds until the token expires.")] = 86400.0,
    as_json: JsonOption = False,
) -> None:
    """Create a one-time enrollment token (stored hashed; shown once) and print it with the
    fleet CA's fingerprint. Give both to the device out of band; it enrolls with
    `edgeops agent enroll --token-file FILE --ca-fingerprint FP` and refuses a server that
    offers another CA."""
    from edgeops.ca_pin import ca_fingerprint
    from server.config.settings import load_settings
    from server.identity.enrollment import Enrollment

    enrollment = Enrollment(load_settings(home))
    token, record = enrollment.tokens.create(ttl_s=ttl_s, device_id=device_id)
    fingerprint = ca_fingerprint(enrollment.ca().ca_pem)
    emit(
        {"token": token, "device_id": record.device_id, "expires_at": record.expires_at,
         "ca_fingerprint": fingerprint},
        as_json,
        f"{token}\nca fingerprint: {fingerprint}\n(one use, expires in {ttl_s:.0f} s"
        + (f", only for device {device_id})" if device_id else ")"),
    )
