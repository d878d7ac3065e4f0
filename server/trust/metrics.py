"""TUF metadata expiry for `/metrics` (a collector read at scrape time).

    edgeops_tuf_metadata_expiry_timestamp_seconds{role}   when the current metadata expires
    edgeops_tuf_metadata_validity_seconds{role}           the period each role is signed for

The refresher re-signs targets, snapshot and timestamp with half their period left, and root
needs its offline keys, so an alert fires when less than a share of the period is left.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from edgeops.errors import ConfigError
from server.trust.repository import TufRepository

__all__ = ["TufExpiryCollector"]

logger = logging.getLogger(__name__)


class TufExpiryCollector:
    def __init__(self, repository: TufRepository) -> None:
        self._repository = repository

    def collect(self) -> Iterator[Metric]:
        try:
            expiries = self._repository.expiries()
        except ConfigError:
            logger.exception("TUF metrics: metadata unreadable")
            return
        expiry = GaugeMetricFamily(
            "edgeops_tuf_metadata_expiry_timestamp_seconds",
            "Unix time the current TUF metadata of a role expires.",
            labels=["role"],
        )
        validity = GaugeMetricFamily(
            "edgeops_tuf_metadata_validity_seconds",
            "How long a role's TUF metadata is valid when it is signed.",
            labels=["role"],
        )
        for role, (expires, period) in sorted(expiries.items()):
            expiry.add_metric([role], expires.timestamp())
            validity.add_metric([role], period.total_seconds())
        yield from (expiry, validity)
