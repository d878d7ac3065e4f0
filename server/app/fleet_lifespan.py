"""A lifespan hook (see server.background.periodic.LifespanHook) running MQTT ingest and commands;
server.app.build.build_app installs it with the fleet router.

Both connect in the background, so the server starts even while the broker is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from server.fleet.commands import CommandPublisher
from server.fleet.ingest.worker import Ingest

__all__ = ["fleet_lifespan"]


def fleet_lifespan(
    publisher: CommandPublisher, ingest: Ingest | None
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Start `publisher` (and `ingest`, if any) with the app; stop them when it stops."""

    @asynccontextmanager
    async def hook(_app: Any) -> AsyncIterator[None]:
        publisher.start()
        if ingest is not None:
            ingest.start()
        try:
            yield
        finally:
            if ingest is not None:
                await asyncio.to_thread(ingest.stop)
            await asyncio.to_thread(publisher.stop)

    return hook
