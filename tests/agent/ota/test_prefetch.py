"""agent.ota.prefetch: the timestamp is fetched while ngclient probes for the next root.

Through the real agent and ngclient against a server we control: the timestamp request
arrives while the root probe is still unanswered, ngclient uses those bytes (one timestamp
request in all), and an early request that fails in transit is made again by ngclient
itself, whose error is the one reported (test_attacks covers a timestamp served endless
to both). Bytes that arrive are ngclient's to verify, as if it had fetched them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from tuf.ngclient import FetcherInterface

from agent import Agent
from agent.ota.prefetch import TimestampPrefetch, timestamp_url
from edgeops.messages import Command
from tests.agent.ota.support import (
    ControlledRepository,
    OtaSetup,
    RangeHandler,
    RepoServer,
    make_setup,
)

pytestmark = [pytest.mark.ota, pytest.mark.integration]

PROBE_DELAY_S = 0.4


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[OtaSetup]:
    repo = ControlledRepository(tmp_path / "repo")
    with RepoServer(repo.root_dir) as server:
        yield make_setup(tmp_path, server, repo)


def _update(setup: OtaSetup, target: str) -> bool:
    """Whether the agent commits `target`."""
    agent = Agent(setup.config(health_window_s=0.1, health_min_samples=0)).start()
    try:
        agent.handle_command(Command(kind="update", target=target))
        return agent.wait_for_state("committed", timeout_s=10)
    finally:
        agent.stop(timeout_s=2)


def test_the_timestamp_is_requested_while_the_root_probe_is_unanswered(setup: OtaSetup) -> None:
    target = setup.publish(2)
    answered: list[tuple[str, float]] = []

    def slow_not_found(handler: RangeHandler, _data: bytes) -> None:
        time.sleep(PROBE_DELAY_S)
        answered.append(("root", time.monotonic()))
        handler.send_not_found()

    setup.server.behaviours[r"/2\.root\.json$"] = slow_not_found
    started = time.monotonic()

    committed = _update(setup, target)

    paths = [path for path, _range in setup.server.requests]
    assert committed
    assert paths.count("/tuf/metadata/timestamp.json") == 1  # ngclient used the early one
    assert paths.index("/tuf/metadata/timestamp.json") < paths.index("/tuf/metadata/2.root.json") + 2
    assert answered and answered[0][1] - started >= PROBE_DELAY_S


def test_an_early_timestamp_cut_off_is_fetched_again_by_ngclient(setup: OtaSetup) -> None:
    target = setup.publish(2)
    served: list[int] = []

    def cut_off_once(handler: RangeHandler, data: bytes) -> None:
        served.append(1)
        handler.send_bytes(data, limit=10 if len(served) == 1 else None)

    setup.server.behaviours[r"/timestamp\.json$"] = cut_off_once

    assert _update(setup, target)
    assert len(served) == 2


class _Recorder(FetcherInterface):
    """Pure-logic stand-in: answers every URL with its own name, counting requests."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.urls.append(url)
        return iter([url.encode()])

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        with super().download_file(url, max_length) as file:
            yield file


@pytest.mark.parametrize("base", ["http://h/tuf/metadata", "http://h/tuf/metadata/"])
def test_the_early_timestamp_serves_one_request_then_the_fetcher_answers(base: str) -> None:
    main, early = _Recorder(), _Recorder()
    prefetch = TimestampPrefetch(main, base, lambda: early, max_length=1024)
    url = timestamp_url(base)
    assert url == "http://h/tuf/metadata/timestamp.json"
    assert prefetch.download_bytes(url, 1024) == url.encode()
    assert main.urls == [url] and early.urls == []  # not started: the fetcher answers
    main.urls.clear()

    prefetch.start()
    answers = [prefetch.download_bytes(url, 1024) for _ in range(2)]
    prefetch.close()

    assert answers == [url.encode(), url.encode()]
    assert early.urls == [url] and main.urls == [url]  # the second went to the fetcher


def test_an_early_timestamp_over_the_cap_is_not_used() -> None:
    main, early = _Recorder(), _Recorder()
    url = timestamp_url("http://h/m")
    prefetch = TimestampPrefetch(main, "http://h/m", lambda: early, max_length=1024)
    prefetch.start()

    with pytest.raises(Exception, match="exceeding"):
        prefetch.download_bytes(url, 5)  # ngclient's own request is held to its own cap
    prefetch.close()
    assert early.urls == [url] and main.urls == [url]
