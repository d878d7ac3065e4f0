from __future__ import annotations

import pytest
from tuf.api import exceptions as tuf_errors

from agent.ota.updater import map_tuf_error
from edgeops.errors import TransportError, TrustError, UpdateError

pytestmark = [pytest.mark.ota]


@pytest.mark.parametrize(
    ("error", "expected", "needle"),
    [
        (tuf_errors.LengthOrHashMismatchError("Observed hash a does not match expected hash b"), TrustError, "artifact hash mismatch"),
        (tuf_errors.LengthOrHashMismatchError("Observed length 3 does not match expected length 4"), TrustError, "artifact length mismatch"),
        (tuf_errors.ExpiredMetadataError("timestamp.json is expired"), TrustError, "expired metadata"),
        (tuf_errors.UnsignedMetadataError("root was signed by 0/1 keys"), TrustError, "bad signature"),
        (tuf_errors.BadVersionNumberError("new version 1 < 2"), TrustError, "version rollback"),
        (tuf_errors.RepositoryError("odd"), TrustError, "untrusted data"),
        (tuf_errors.DownloadLengthMismatchError("Downloaded 9 bytes"), TrustError, "length mismatch"),
        (tuf_errors.DownloadHTTPError("nope", 503), TransportError, "HTTP 503"),
        (tuf_errors.SlowRetrievalError(), TransportError, "download failed"),
        (FileNotFoundError("gone"), UpdateError, "local disk"),
    ],
)
def test_tuf_errors_map_to_the_edgeops_hierarchy(error: Exception, expected: type, needle: str) -> None:
    mapped = map_tuf_error(error, "artifact")

    assert type(mapped) is expected
    assert needle in str(mapped)
