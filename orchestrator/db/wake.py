"""Waking the API node when a command line queued work for it (``strato servers migrate``, ``strato
hosts drain|evacuate``: ``server_migrate``/``server_evacuate`` jobs that only the node, which holds
the host connections, can run).

* PostgreSQL: the command's own transaction runs ``pg_notify`` on :data:`CHANNEL`; PostgreSQL
  delivers it at commit to every node listening (a :class:`~orchestrator.db.notify.Bus`).
* SQLite (one API node, on the machine that has the database file): after the commit, a datagram
  to a Unix socket beside the database file (``strato.db.wake``), which the node binds while it runs.

A wake-up is a hint, never the only way the work is found: the node still looks every few seconds,
so one that is lost (no node running yet, the node's listening connection being made again) delays
the work and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)

CHANNEL = "strato_queue"
SUN_PATH_MAX = 107  # bytes a Unix socket's path may have (sockaddr_un.sun_path, less its NUL)


def socket_path(url: str) -> Path | None:
    """Where the node serving this SQLite database listens; None for PostgreSQL, an in-memory
    database, or a path too long for a Unix socket (the node then only looks now and then)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(f"{os.path.abspath(parsed.database)}.wake")
    return path if len(os.fsencode(path)) <= SUN_PATH_MAX else None


async def wake_at_commit(session: AsyncSession) -> None:
    """In the transaction that queues the work: the node hears of it once it is committed."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})  # sent at commit
        return
    path = socket_path(str(session.bind.url))
    if path is not None:
        event.listen(session.sync_session, "after_commit", lambda _s: _send(path), once=True)


def _send(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(b"", os.fsencode(path))  # no node running: nobody to wake


class Wakeups:
    """The node's side: ``event`` is set whenever a command line queued work (or a wake-up may
    have been missed); whoever waits on it clears it before looking."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.event = asyncio.Event()
        self._bus: Any = None  # a Bus on PostgreSQL
        self._transport: asyncio.DatagramTransport | None = None
        self._path: Path | None = None

    async def start(self) -> None:
        if make_url(self.url).drivername.startswith("postgresql"):
            from orchestrator.db.notify import Bus  # asyncpg: not for the command lines of a SQLite installation

            self._bus = Bus(self.url, CHANNEL)
            self._bus.listeners.append(lambda _payload: self.event.set())  # None (reconnected): look too
            await self._bus.start()
            return
        self._path = socket_path(self.url)
        if self._path is None:
            return
        self._path.unlink(missing_ok=True)  # left by a node that was killed (one node per SQLite file)
        event = self.event

        class Heard(asyncio.DatagramProtocol):
            def datagram_received(self, _data: bytes, _addr: object) -> None:
                event.set()

        try:
            self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                Heard, local_addr=str(self._path), family=socket.AF_UNIX)
        except OSError as err:
            log.warning("cannot listen for wake-ups at %s (%s): queued work is found by looking every few seconds",
                        self._path, err)
            self._path = None

    async def stop(self) -> None:
        if self._bus is not None:
            await self._bus.stop()
        if self._transport is not None:
            self._transport.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    async def wait(self, timeout: float) -> None:
        """Until woken or ``timeout`` seconds passed; then clear, before the caller looks."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()
