"""A cohort's network link to the broker: a TCP relay the scenario can make lossy.

The devices of a cohort named by a `lossy_link` event connect to the broker through their
cohort's `LinkRelay` for the whole scenario; it passes bytes straight through until the event
impairs it. A TCP stream does not lose bytes on a lossy link, it gets them late: each lost
segment is sent again after the retransmission timeout, which doubles while it keeps being
lost. So during the event each chunk the relay forwards is, with probability `loss_pct`, held
back for 200 ms, 400 ms, 800 ms ... (one doubling per further loss), and nothing behind it
overtakes it. Keep-alives that time out on the way are the broker's and the agent's own
business, as on a real link.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

__all__ = ["FIRST_RTO_S", "LinkRelay"]

FIRST_RTO_S = 0.2  # Linux's minimum TCP retransmission timeout
MAX_RETRIES = 6  # 0.2 + 0.4 + ... + 6.4 s: about 12.6 s late at worst
CHUNK_BYTES = 64 * 1024


class LinkRelay:
    """Relays 127.0.0.1:`port` to the broker at `upstream_host`:`upstream_port`."""

    def __init__(self, upstream_host: str, upstream_port: int, seed: int = 0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._random = random.Random(seed)
        self._loss = 0.0
        self._impaired_until = 0.0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self.port = 0
        self.delayed_chunks = 0
        self._thread = threading.Thread(target=self._run, name="link-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the link relay did not start")

    def impair(self, loss_pct: float, duration_s: float) -> None:
        """Lose `loss_pct` percent of the chunks (each then comes late) for `duration_s`."""
        self._loss = loss_pct / 100.0
        self._impaired_until = time.monotonic() + duration_s

    def close(self) -> None:
        """Close the listener and every relayed connection."""
        if self._loop is None or self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._shut_down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _shut_down(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # The relay -------------------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        loop.run_forever()
        loop.close()

    def _late_by(self) -> float:
        """How late the next chunk arrives: 0 on a clean link."""
        if time.monotonic() >= self._impaired_until:
            return 0.0
        delay, rto = 0.0, FIRST_RTO_S
        for _ in range(MAX_RETRIES):
            if self._random.random() >= self._loss:
                break
            delay += rto
            rto *= 2
        if delay:
            self.delayed_chunks += 1
        return delay

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:  # the broker is down: the device sees a refused connection
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk at its due time, in order."""
        loop = asyncio.get_running_loop()
        due_chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await due_chunks.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        last_due = 0.0
        try:
            while data := await reader.read(CHUNK_BYTES):
                last_due = max(last_due, loop.time() + self._late_by())  # nothing overtakes
                due_chunks.put_nowait((last_due, data))
        except OSError:
            pass
        due_chunks.put_nowait((last_due, b""))
        try:
            await sender
        except OSError:
            pass
        finally:
            writer.close()
