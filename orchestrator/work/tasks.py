"""The one supervisor of the API node's background work (aiojobs): every step that runs after a
request's commit is spawned here, logged when it fails, and cancelled when the app stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiojobs

log = logging.getLogger(__name__)


class Tasks:
    def __init__(self) -> None:
        self._scheduler = aiojobs.Scheduler(limit=None, close_timeout=5.0,
                                            exception_handler=self._failed)

    async def spawn(self, work: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        await self._scheduler.spawn(work, name)

    async def run(self, work: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        """Spawn ``work`` and wait for its end; cancelling the waiter leaves the work running (its
        failure is logged like any other)."""
        ended = asyncio.Event()

        async def tracked() -> None:
            try:
                await work
            finally:
                ended.set()

        await self._scheduler.spawn(tracked(), name)
        await ended.wait()

    async def close(self) -> None:
        await self._scheduler.close()

    @staticmethod
    def _failed(_scheduler: aiojobs.Scheduler, context: dict[str, Any]) -> None:
        job = context.get("job")
        log.error("background task %s failed", getattr(job, "_name", None) or job,
                  exc_info=context.get("exception"))
