"""An in-process Grid: delivers each message to a ClientApp in this thread, one after
another, with no Ray and no network. Tests and debugging use it to run the real ServerApp
workflows against real ClientApps, and to look at exactly what the server receives.

Node ids are FIRST_NODE_ID.. (1 is the SuperLink's); the k-th node gets `partition-id` k of
`num-partitions` N in its node config. Like Flower's own `run_simulation`, building one sets
Flower's process-wide TaskIdentity (run, task and SuperLink node id), which `Message` reads.
A ClientApp that raises answers with an error message, as the Simulation Engine does.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid"]

logger = logging.getLogger(__name__)

ReplyObserver = Callable[[Message, Message], None]
FIRST_NODE_ID = 100
RUN_ID = 4242


class LocalGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        observer: ReplyObserver | None = None,
        node_config: dict[str, Any] | None = None,
    ) -> None:
        self._app = client_app
        self._observer = observer
        self._run = Run.create_empty(run_id=RUN_ID)
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = RUN_ID
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._contexts = {
            node_id: Context(
                run_id=RUN_ID,
                node_id=node_id,
                node_config={
                    "partition-id": node_id - FIRST_NODE_ID,
                    "num-partitions": num_nodes,
                    **(node_config or {}),
                },
                state=RecordDict(),
                run_config={},
            )
            for node_id in range(FIRST_NODE_ID, FIRST_NODE_ID + num_nodes)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_run_id"] = self._run.run_id
            message.metadata.__dict__["_created_at"] = time.time()
            self._replies[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))

    def _deliver(self, message: Message) -> Message:
        context = self._contexts[message.metadata.dst_node_id]
        # Each node gets its own copy, as if it had come over the wire: workflows share one
        # content object between messages and client mods mutate what they receive.
        delivered = copy.deepcopy(message)
        try:
            reply = self._app(delivered, context)
        except Exception as err:  # the ClientApp failed: the server sees an error reply
            logger.debug("node %d failed: %s", message.metadata.dst_node_id, err)
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=traceback.format_exc()),
                reply_to=delivered,
            )
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        if self._observer is not None:
            self._observer(message, reply)
        return reply
