"""Where the fleet CA's certificate revocation list is published for the brokers to check.

    <home>/ca/crl.pem             the current CRL, signed by the fleet CA
    <home>/ca/crl_targets.json    the copies broker configs point at (`crlfile` in mosquitto.conf)

`edgeops server broker-config` installs a copy next to the config it writes and registers it;
every revocation rewrites the CRL and all registered copies. A broker rereads its `crlfile`
on SIGHUP (`edgeops fleet revoke --broker-pid`, or `systemctl reload mosquitto`). A broker on
another machine needs the file copied there: the CRL is public, only its signature matters.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError
from server.identity.ca import CRL_FILE, FleetCA

__all__ = ["CrlFiles"]

logger = logging.getLogger(__name__)

TARGETS_FILE = "crl_targets.json"


class CrlFiles:
    """The CRL of `ca` and the registered copies of it."""

    def __init__(self, ca: FleetCA) -> None:
        self._ca = ca
        self.path = ca.directory / CRL_FILE
        self._targets_file = ca.directory / TARGETS_FILE

    def targets(self) -> list[Path]:
        try:
            return [Path(item) for item in json.loads(self._targets_file.read_text())]
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"cannot read the CRL copies list {self._targets_file}: {err}"
            ) from err

    def install(self, target: Path) -> Path:
        """Copy the current CRL (an empty one if nothing was ever revoked) to `target` and
        keep it current from now on."""
        if not self.path.exists():
            write_bytes_atomic(self.path, self._ca.sign_crl([]), mode=0o644)
        target = Path(target).resolve()
        write_bytes_atomic(target, self.path.read_bytes(), mode=0o644)
        known = self.targets()
        if target not in known:
            data = json.dumps([str(path) for path in [*known, target]], indent=1).encode()
            write_bytes_atomic(self._targets_file, data, mode=0o600)
        return target

    def publish(self, crl_pem: bytes) -> list[Path]:
        """Write `crl_pem` as the current CRL and to every copy; the files written."""
        write_bytes_atomic(self.path, crl_pem, mode=0o644)
        written = [self.path]
        for target in self.targets():
            if not target.parent.is_dir():
                logger.warning("CRL copy %s skipped: its folder is gone", target)
                continue
            write_bytes_atomic(target, crl_pem, mode=0o644)
            written.append(target)
        return written
