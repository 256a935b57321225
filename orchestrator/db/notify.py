"""PostgreSQL ``LISTEN``/``NOTIFY`` between the API nodes of one database: a node publishes a
payload on a channel, every node (itself included) hears it.  One asyncpg connection of its own
per node, made again after it broke (what was sent meanwhile is lost: listeners are told with
``None`` so that they may catch up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

MAX_PAYLOAD = 7900  # PostgreSQL's limit is 8000 bytes
Listener = Callable[[str | None], None]


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Bus:
    def __init__(self, url: str, channel: str) -> None:
        self.dsn = asyncpg_dsn(url)
        self.channel = channel
        self.listeners: list[Listener] = []
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def send(self, payload: str) -> None:
        """Queue a payload (at most ``MAX_PAYLOAD`` bytes) for every node."""
        self._outbox.put_nowait(payload)

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for listener in self.listeners:
            try:
                listener(payload)
            except Exception:
                log.exception("a %s listener failed", self.channel)

    async def _run(self) -> None:
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn)
                await conn.add_listener(self.channel, self._heard)
                self._connected.set()
                while True:
                    payload = await self._outbox.get()
                    await conn.execute("SELECT pg_notify($1, $2)", self.channel, payload)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("%s notifications: %s; connecting again", self.channel, err)
                for listener in self.listeners:
                    listener(None)
                await asyncio.sleep(1)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
