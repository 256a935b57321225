"""Finished jobs do not pile up: those untouched for ``job_max_age`` are removed in the background."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker

from orchestrator.db.models import utcnow
from orchestrator.domain.jobs import purge

log = logging.getLogger(__name__)
MAX_INTERVAL = 3600.0  # a purge at least hourly; more often when the age kept is short


class JobPurge:
    def __init__(self, sessions: async_sessionmaker, max_age: float) -> None:
        self.sessions = sessions
        self.max_age = timedelta(seconds=max_age)
        self.interval = min(MAX_INTERVAL, max(1.0, max_age / 4))

    async def once(self) -> int:
        async with self.sessions.begin() as s:
            removed = await purge(s, self.max_age, utcnow())
        if removed:
            log.info("purged %d finished jobs older than %s", removed, self.max_age)
        return removed

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:  # the store briefly unavailable: the next round tries again
                log.exception("job purge failed; trying again")
            await asyncio.sleep(self.interval)
