"""Fetch `timestamp.json` while ngclient probes for the next root, saving a round trip.

A TUF refresh is four sequential round trips: the next root (usually a 404), timestamp,
snapshot, targets. Only the first two are independent: the timestamp's URL is fixed, while
the snapshot's and the targets' versions come from the metadata before them. So the
timestamp is requested on a second connection as the refresh starts, and handed to ngclient
when it asks. Trust is unchanged: ngclient verifies those bytes as it would any it fetched,
against the root it ends the root step with. If the early request failed, ngclient's own
request is made as usual, so its error is the one reported.

    TimestampPrefetch(fetcher, metadata_base_url, new_fetcher, max_length)
        a FetcherInterface for ngclient's Updater: `start()` as the refresh starts,
        `close()` after it
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from tuf.ngclient import FetcherInterface

__all__ = ["TimestampPrefetch", "timestamp_url"]

logger = logging.getLogger(__name__)


def timestamp_url(metadata_base_url: str) -> str:
    """The URL ngclient fetches the timestamp from (it is never versioned)."""
    base = metadata_base_url if metadata_base_url.endswith("/") else metadata_base_url + "/"
    return f"{base}timestamp.json"


class TimestampPrefetch(FetcherInterface):
    """`fetcher` for everything, except the timestamp, fetched early by `new_fetcher()`."""

    def __init__(
        self,
        fetcher: FetcherInterface,
        metadata_base_url: str,
        new_fetcher: Callable[[], FetcherInterface],
        max_length: int,
    ) -> None:
        self._fetcher = fetcher
        self._url = timestamp_url(metadata_base_url)
        self._max_length = max_length
        self._data: bytes | None = None
        self._new_fetcher = new_fetcher
        self._thread = threading.Thread(target=self._prefetch, name="tuf-timestamp", daemon=True)

    def start(self) -> None:
        """Send the early request (once, as the refresh starts)."""
        self._thread.start()

    def _prefetch(self) -> None:
        early = self._new_fetcher()
        try:
            self._data = early.download_bytes(self._url, self._max_length)
        except Exception as err:  # noqa: BLE001 - ngclient's own request reports the error
            logger.debug("early request of %s failed: %s", self._url, err)
            self._data = None
        finally:
            close = getattr(early, "close", None)
            if close is not None:
                close()

    def _take(self, url: str) -> bytes | None:
        if url != self._url or not self._thread.ident:  # not started
            return None
        self._thread.join()
        self._url = ""  # used once: a second refresh fetches anew
        data, self._data = self._data, None
        return data

    def close(self) -> None:
        """Wait for the early request (it is bounded by the fetcher's timeouts)."""
        if self._thread.ident:
            self._thread.join()

    def download_bytes(self, url: str, max_length: int) -> bytes:
        data = self._take(url)
        if data is not None and len(data) <= max_length:
            return data
        return self._fetcher.download_bytes(url, max_length)

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._fetcher.fetch(url)

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        with self._fetcher.download_file(url, max_length) as file:
            yield file
