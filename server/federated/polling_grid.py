"""A Grid that waits for replies by polling every `poll_interval_s` (default 0.1 s).

Flower 1.42's deployment grid (`HttpGrid`, the one `flwr-serverapp` hands the ServerApp)
sleeps a fixed 3 s between pulls in `send_and_receive`, whatever the timeout; its in-memory
grid (Simulation Engine) polls every 0.1 s. SecAgg+ makes four round trips per round, so
in deployment the fixed sleep added up to 3 s per stage after the last reply had arrived.
This wrapper keeps Flower's contract — push, then pull until every message has a reply or
`timeout` has passed — and does the pulling itself with the in-memory grid's interval,
never sleeping past the deadline. Everything else goes to the wrapped grid unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["DEFAULT_POLL_INTERVAL_S", "PollingGrid"]

DEFAULT_POLL_INTERVAL_S = 0.1


class PollingGrid(Grid):
    def __init__(self, grid: Grid, *, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self.inner = grid
        self.poll_interval_s = poll_interval_s

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = set(self.inner.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:
            received = list(self.inner.pull_messages(pending))
            replies.extend(received)
            pending.difference_update(m.metadata.reply_to_message_id for m in received)
            if not pending:
                return replies
            if deadline is None:
                time.sleep(self.poll_interval_s)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return replies
            time.sleep(min(self.poll_interval_s, remaining))
