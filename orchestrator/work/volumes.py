"""Drive volumes on their storage hosts: create, import an upload, resize, delete, and the
status a drive settles in when its storage work ends (``mounted`` / ``unmounted``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncssh
from sqlalchemy.ext.asyncio import async_sessionmaker

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive
from orchestrator.domain.drives import Volume, refresh_mount_status, round_size
from orchestrator.hosts.pool import Hosts

log = logging.getLogger(__name__)
HOST_FAILURES = (AgentCallError, AgentGone, OSError, asyncssh.Error)


class VolumeWork:
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts) -> None:
        self.sessions = sessions
        self.hosts = hosts
        # libvirt refuses a volume build while another runs in the same pool ("pool has
        # asynchronous jobs running"): one volume build at a time per host.
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, host: str) -> asyncio.Lock:
        return self._locks.setdefault(host, asyncio.Lock())

    async def create(self, drive_uuid: str) -> None:
        async with self.sessions() as s:
            drive = await s.get(Drive, drive_uuid)
        if drive is None or drive.host is None:
            return
        try:
            async with self.lock(drive.host):
                volume = await self.hosts.call(drive.host, "volume.create", pool=drive.pool, name=drive.volume,
                                               size=drive.size)
        except (AgentCallError, AgentGone) as err:
            log.error("drive %s: volume not created: %s", drive_uuid, err)
            return  # stays "creating"; the host's next reconciliation retries
        async with self.sessions.begin() as s:
            row = await s.get(Drive, drive_uuid)
            if row is not None:
                row.pool = volume["pool"]
        await self.settle(drive_uuid)

    async def import_upload(self, drive_uuid: str, source: Path) -> None:
        """Import an uploaded image (a file on the API node) into the drive's volume."""
        async with self.sessions() as s:
            drive = await s.get(Drive, drive_uuid)
        try:
            if drive is None or drive.host is None:
                return
            volume = await self.import_file(drive, source)
        except HOST_FAILURES as err:
            log.error("drive %s: upload not imported: %s", drive_uuid, err)
            return  # stays "uploading": the client may delete it and try again
        finally:
            source.unlink(missing_ok=True)
        async with self.sessions.begin() as s:
            row = await s.get(Drive, drive_uuid)
            if row is not None:
                row.pool, row.size = volume["pool"], max(row.size, round_size(volume["capacity"]))
        await self.settle(drive_uuid)

    async def import_file(self, drive: Drive, source: Path) -> dict[str, Any]:
        """``volume.import`` of a file on the API node into the drive's pool on its host."""
        assert drive.host is not None
        async with self.hosts.placed(drive.host, source) as path, self.lock(drive.host):
            return await self.hosts.call(drive.host, "volume.import", pool=drive.pool, name=drive.volume,
                                         source_path=path)

    async def resize(self, drive_uuid: str) -> None:
        async with self.sessions() as s:
            drive = await s.get(Drive, drive_uuid)
        if drive is not None and drive.host is not None:
            try:
                await self.hosts.call(drive.host, "volume.resize", pool=drive.pool, name=drive.volume,
                                      size=drive.size)
            except (AgentCallError, AgentGone) as err:
                log.error("drive %s: resize failed: %s", drive_uuid, err)
        await self.settle(drive_uuid)

    async def settle(self, drive_uuid: str) -> None:
        """A drive whose storage work ended returns to ``mounted`` / ``unmounted``."""
        async with self.sessions.begin() as s:
            drive = await s.get(Drive, drive_uuid)
            if drive is None:
                return
            drive.status = "unmounted"
            await s.flush()
            await refresh_mount_status(s, {drive_uuid})

    async def delete(self, volumes: list[Volume]) -> None:
        for host, pool, name in volumes:
            if host is None or name is None:
                continue
            try:
                await self.hosts.call(host, "volume.delete", pool=pool, name=name)
            except (AgentCallError, AgentGone) as err:
                log.error("volume %s/%s on %s not deleted: %s", pool, name, host, err)

    async def path_of(self, drive: Drive) -> dict[str, Any]:
        """The volume's listing entry on its host (path, format, capacity)."""
        assert drive.host is not None
        listing = await self.hosts.call(drive.host, "volume.list", pool=drive.pool)
        return next(v for v in listing if v["name"] == drive.volume)
