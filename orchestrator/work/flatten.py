"""Flattening copy-on-write clones in the background, so that no chain of bases grows without bound
and a base goes once no overlay needs it (RBD's clone + flatten; ``orchestrator/domain/cow.py``).

Every drive whose ``base_uuid`` is set is flattened, one at a time per host, at ``rate`` bytes per
second: by ``qemu-img convert`` into a new file while no guest uses the drive, by libvirt's block
pull while one runs. A boot pauses the flattens of its drives (the agent cancels the copy; the
drive stays the overlay it was) and resumes them once the guest runs, now as a block pull. The
work is the rows' state, so a restarted API node flattens what is left (``resume``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from sqlalchemy.ext.asyncio import async_sessionmaker

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive
from orchestrator.domain.cow import overlays
from orchestrator.hosts.pool import Hosts
from orchestrator.work.tasks import Tasks
from orchestrator.work.volumes import VolumeWork

log = logging.getLogger(__name__)
RETRY = 2.0  # seconds before a cancelled or failed flatten tries again (doubling up to a minute)


class FlattenWork:
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts, tasks: Tasks, volumes: VolumeWork,
                 rate: int | None = None) -> None:
        self.sessions = sessions
        self.hosts = hosts
        self.tasks = tasks
        self.volumes = volumes
        self.rate = rate
        self._queued: set[str] = set()  # drives with a flatten task in this process
        self._paused: dict[str, int] = {}  # drives a boot holds, how many boots
        self._calling: set[str] = set()  # drives whose volume.flatten call is out now
        self._slots: dict[str, asyncio.Lock] = {}  # one flatten at a time per host

    async def schedule(self, drive_uuids: Iterable[str]) -> None:
        for uuid in drive_uuids:
            if uuid not in self._queued:
                self._queued.add(uuid)
                await self.tasks.spawn(self._flatten(uuid), f"flatten {uuid}")

    async def resume(self, host: str) -> None:
        """After a (re)connection of ``host``: flatten every overlay left there."""
        async with self.sessions() as s:
            await self.schedule(await overlays(s, host))

    @contextlib.asynccontextmanager
    async def paused(self, drive_uuids: list[str]) -> AsyncIterator[None]:
        """No offline flatten of these drives runs inside (a guest is about to open them)."""
        for uuid in drive_uuids:
            self._paused[uuid] = self._paused.get(uuid, 0) + 1
        try:
            async with self.sessions() as s:
                volumes = {d.uuid: (d.host, d.pool, d.volume) for d in [await s.get(Drive, u) for u in drive_uuids]
                           if d is not None and d.base_uuid is not None and d.host and d.volume}
            for uuid, (host, pool, volume) in volumes.items():
                # Until the flatten call returned: a cancel that reached the agent before the
                # flatten did found nothing to stop, and is sent again.
                for _attempt in range(600):
                    with contextlib.suppress(AgentCallError, AgentGone):
                        await self.hosts.call(host, "volume.flatten_cancel", pool=pool, name=volume)
                    if uuid not in self._calling:
                        break
                    await asyncio.sleep(0.1)
            yield
        finally:
            for uuid in drive_uuids:
                self._paused[uuid] -= 1
                if not self._paused[uuid]:
                    del self._paused[uuid]
            await self.schedule(drive_uuids)

    async def _flatten(self, uuid: str) -> None:
        delay = RETRY
        try:
            while True:
                while uuid in self._paused:
                    await asyncio.sleep(0.2)
                async with self.sessions() as s:
                    drive = await s.get(Drive, uuid)
                if drive is None or drive.base_uuid is None or drive.host is None or drive.volume is None:
                    return
                try:
                    async with self._slots.setdefault(drive.host, asyncio.Lock()):
                        if uuid in self._paused:
                            continue
                        self._calling.add(uuid)
                        try:
                            volume = await self.hosts.call(drive.host, "volume.flatten", timeout=24 * 3600,
                                                           pool=drive.pool, name=drive.volume, rate=self.rate)
                        finally:
                            self._calling.discard(uuid)
                except AgentGone as err:  # the host's next reconciliation resumes it
                    log.info("drive %s: flatten interrupted: %s", uuid, err)
                    return
                except AgentCallError as err:  # cancelled (a boot, a clone, a resize, a delete) or failed
                    log.info("drive %s: flatten stopped: %s; again in %.0fs", uuid, err, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
                    continue
                if volume.get("backing") is None and await self._flattened(uuid, drive.base_uuid):
                    return
        finally:
            self._queued.discard(uuid)

    async def _flattened(self, uuid: str, base_uuid: str) -> bool:
        """The drive reads no base any more; bases nothing needs now go."""
        async with self.sessions.begin() as s:
            drive = await s.get(Drive, uuid)
            if drive is None or drive.base_uuid != base_uuid:
                return drive is None  # cloned again meanwhile: another round
            drive.base_uuid = None
        log.info("drive %s flattened", uuid)
        await self.volumes.collect_bases()
        return True
