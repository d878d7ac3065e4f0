"""Device certificates can be revoked (issue 16, item 6).

A stolen or retired device kept its broker access until its certificate expired: nothing
recorded what the CA had signed and the broker checked no revocation list. Now every issued
certificate is in `issued_certificates`, `edgeops fleet revoke` writes the CA's CRL to the
file the generated Mosquitto config names (`crlfile`) and reloads the broker, and a revoked
id cannot come back with an ordinary (unbound) enrollment token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from server.cli.fleet import app as fleet_app
from server.config.settings import ServerSettings
from server.db.engine import open_database
from server.identity.certificates import CertificateStore, serial_hex
from simulations.mosquitto import MosquittoBroker
from tests.integration.fleet_support import wait_until
from tests.security.identity_support import connects, serve_home

pytestmark = [pytest.mark.security, pytest.mark.integration]


def test_a_revoked_device_cannot_connect_to_the_broker(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "server", fleet="f1", broker_tls=True)
    with serve_home(settings) as server:
        stolen = server.enroll("dev-stolen", tmp_path / "stolen")
        kept = server.enroll("dev-kept", tmp_path / "kept")
        broker = MosquittoBroker.secured(tmp_path / "broker", settings).start()
        try:
            assert "crlfile" in broker.config_path.read_text()
            # The attack: the stolen device's certificate still opens the broker.
            assert connects(broker.port, stolen)

            result = CliRunner().invoke(
                fleet_app,
                [
                    "revoke",
                    "dev-stolen",
                    "--home",
                    str(settings.home),
                    "--server",
                    server.url,
                    "--broker-pid",
                    str(broker.process.pid if broker.process else 0),
                    "--json",
                ],
            )

            assert result.exit_code == 0, result.output
            revoked = json.loads(result.output)
            assert revoked["broker_reloaded"] and len(revoked["revoked_serials"]) == 1
            assert str(tmp_path / "broker" / "crl.pem") in revoked["crl_files"]
            # Mosquitto rereads its files on its next loop after SIGHUP, not at once.
            wait_until(
                lambda: not connects(broker.port, stolen, timeout_s=1),
                15,
                "the broker refuses the revoked certificate",
            )
            assert connects(broker.port, kept)
        finally:
            broker.kill()

        # The table says what was signed and what is revoked; the CRL lists exactly that.
        store = CertificateStore(open_database(settings.resolved_database_url))
        (record,) = store.for_device("dev-stolen")
        serial = x509.load_pem_x509_certificate(stolen.cert_file.read_bytes()).serial_number
        assert record.serial == serial_hex(serial) and record.revoked_at is not None
        crl = x509.load_pem_x509_crl((tmp_path / "broker" / "crl.pem").read_bytes())
        assert [entry.serial_number for entry in crl] == [serial]


def test_an_unbound_token_cannot_re_enroll_an_enrolled_device(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "server", fleet="f1", broker_tls=True)
    with serve_home(settings) as server:
        server.enroll("dev-1", tmp_path / "dev-1", token=server.token())

        # The attack: anyone holding an ordinary token claims the id of an enrolled device
        # (and would get a valid certificate for it, under a key of their own).
        refused = server.post_enroll(server.token(), "dev-1")
        assert refused.status_code == 403
        assert "already enrolled" in refused.json()["detail"]
        assert "--device-id dev-1" in refused.json()["detail"]

        # Revoked ids stay taken; the operator's explicit re-enrollment is a bound token.
        revoke = CliRunner().invoke(
            fleet_app, ["revoke", "dev-1", "--home", str(settings.home), "--server", server.url]
        )
        assert revoke.exit_code == 0, revoke.output
        assert server.post_enroll(server.token(), "dev-1").status_code == 403
        assert server.post_enroll(server.token("dev-1"), "dev-1").status_code == 200
