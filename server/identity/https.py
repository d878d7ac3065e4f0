"""The certificate `edgeops server run` serves HTTPS with.

Either the operator's own (`http_tls_cert_file` / `http_tls_key_file` in server.toml, e.g.
from a public CA for a console people open in a browser), or one the fleet CA issues for the
names the server is reached by: `localhost`, `127.0.0.1`, the bind address and the host of
`public_url`. Devices trust the fleet CA (pinned by fingerprint at enrollment), so they
verify the server without any public CA. The issued certificate is reissued when those
names change.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from edgeops.errors import ConfigError
from server.config.settings import ServerSettings
from server.identity.ca import SERVER_IDENTITY_PREFIX, FleetCA

__all__ = ["HTTPS_IDENTITY", "ServerTls", "server_hosts", "server_tls"]

HTTPS_IDENTITY = f"{SERVER_IDENTITY_PREFIX}-https"
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path
    key_file: Path


def server_hosts(settings: ServerSettings) -> tuple[str, ...]:
    """The names the server's own certificate must hold, in a stable order."""
    names = ["localhost", "127.0.0.1"]
    if settings.http_host not in _WILDCARD_BINDS:
        names.append(settings.http_host)
    if settings.public_url:
        host = urlsplit(settings.public_url).hostname
        if host:
            names.append(host)
    return tuple(dict.fromkeys(names))


def _names_in(cert_file: Path) -> set[str]:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    return {str(name) for name in san.get_values_for_type(x509.DNSName)} | {
        str(address) for address in san.get_values_for_type(x509.IPAddress)
    }


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def server_tls(settings: ServerSettings) -> ServerTls:
    """The certificate and key to serve HTTPS with (issuing one from the fleet CA if needed)."""
    if settings.http_tls_cert_file or settings.http_tls_key_file:
        files = ServerTls(
            settings.home / settings.http_tls_cert_file, settings.home / settings.http_tls_key_file
        )
        for setting, path in (
            ("http_tls_cert_file", files.cert_file),
            ("http_tls_key_file", files.key_file),
        ):
            if not path.is_file():
                raise ConfigError(f"{setting} = {str(path)!r}: no such file")
        return files
    hosts = server_hosts(settings)
    ca = FleetCA.for_settings(settings)
    existing = ca.directory / "identities" / f"{HTTPS_IDENTITY}.crt"
    stale = _names_in(existing) != {_canonical(host) for host in hosts}
    issued = ca.identity(HTTPS_IDENTITY, server=True, hosts=hosts, reissue=stale)
    return ServerTls(issued.cert_file, issued.key_file)
