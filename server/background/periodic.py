"""Lifespan hooks: background work that lives exactly as long as the server app.

    LifespanHook             what build_app composes (an async context manager per app)
    periodic(name, work, interval_s)   run `work` in a thread every `interval_s`, never dying
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

__all__ = ["LifespanHook", "periodic"]

logger = logging.getLogger(__name__)

LifespanHook = Callable[[Any], AbstractAsyncContextManager[Any]]


def periodic(
    name: str,
    work: Callable[[], object],
    interval_s: float,
    *,
    run_at_start: bool = False,
    on_error: Callable[[Exception], None] | None = None,
) -> LifespanHook:
    """A hook running `work` off the event loop every `interval_s` until the app stops.

    An exception is logged (and passed to `on_error`) and the next run goes ahead: one bad
    tick must not stop the work for the rest of the server's life.
    """

    async def run_once() -> None:
        try:
            await asyncio.to_thread(work)
        except Exception as err:  # noqa: BLE001 - see the docstring
            if on_error is not None:
                on_error(err)
            logger.exception("%s failed; retrying in %.1f s", name, interval_s)

    @asynccontextmanager
    async def hook(_app: Any) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                await run_once()

        if run_at_start:
            await run_once()
        task = asyncio.create_task(loop(), name=name)
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    return hook
