"""Drive volumes on their storage hosts: create, import an upload, resize, delete, and the
status a drive settles in when its storage work ends (``mounted`` / ``unmounted``).

Create, import and resize end their job (``drive_create``, ``drive_upload``, ``drive_resize``,
made by the request that asked): ``success``, or ``failed`` with the host's reason; a drive whose
volume was never made is removed, a drive whose resize failed keeps the size its volume has."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
from sqlalchemy.ext.asyncio import async_sessionmaker

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive
from orchestrator.domain.cow import forget_base, unused_bases
from orchestrator.domain.drives import Volume, discard_failed, refresh_mount_status, round_size
from orchestrator.domain.jobs import Reasons, finish_started
from orchestrator.hosts.pool import Hosts

log = logging.getLogger(__name__)
HOST_FAILURES = (AgentCallError, AgentGone, OSError, asyncssh.Error)


class VolumeWork:
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts, reasons: Reasons) -> None:
        self.sessions = sessions
        self.hosts = hosts
        self.reasons = reasons
        # libvirt refuses a volume build while another runs in the same pool ("pool has
        # asynchronous jobs running"): one volume build at a time per host.
        self._locks: dict[str, asyncio.Lock] = {}
        # Volumes whose delete failed (the host was unreachable, libvirtd still building the volume):
        # host → {(pool, name)}, deleted again once the host answers (`retry_deletes`).
        self.undeleted: dict[str, set[tuple[str | None, str]]] = {}

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
        except AgentGone as err:
            log.error("drive %s: volume not created: %s", drive_uuid, err)
            return  # stays "creating" (its job "started"); the host's next reconciliation retries
        except AgentCallError as err:  # the host refused: retrying would not help
            log.error("drive %s: volume not created: %s", drive_uuid, err)
            await self._failed(drive_uuid, "drive_create", self.reasons.of(err))
            return
        async with self.sessions.begin() as s:
            row = await s.get(Drive, drive_uuid)
            if row is not None:
                row.pool = volume["pool"]
            await finish_started(s, "drive_create", drive_uuid)
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
            await self._failed(drive_uuid, "drive_upload", self.reasons.of(err))
            return
        finally:
            source.unlink(missing_ok=True)
        async with self.sessions.begin() as s:
            row = await s.get(Drive, drive_uuid)
            if row is not None:
                row.pool, row.size = volume["pool"], max(row.size, round_size(volume["capacity"]))
            await finish_started(s, "drive_upload", drive_uuid)
        await self.settle(drive_uuid)

    async def import_again(self, drive_uuid: str, source: Path) -> None:
        """An import a dead API node had begun: what it may have made of the volume goes first."""
        async with self.sessions() as s:
            drive = await s.get(Drive, drive_uuid)
        if drive is not None and drive.host is not None and drive.volume is not None:
            with contextlib.suppress(*HOST_FAILURES):
                await self.hosts.call(drive.host, "volume.delete", pool=drive.pool, name=drive.volume)
        await self.import_upload(drive_uuid, source)

    async def _failed(self, drive_uuid: str, operation: str, reason: str) -> None:
        """The volume was never made: the job says why, the drive goes."""
        async with self.sessions.begin() as s:
            await finish_started(s, operation, drive_uuid, reason)
            row = await s.get(Drive, drive_uuid)
            if row is not None:
                await discard_failed(s, row)

    async def import_file(self, drive: Drive, source: Path) -> dict[str, Any]:
        """``volume.import`` of a file on the API node into the drive's pool on its host."""
        assert drive.host is not None
        async with self.hosts.placed(drive.host, source) as path, self.lock(drive.host):
            return await self.hosts.call(drive.host, "volume.import", pool=drive.pool, name=drive.volume,
                                         source_path=path)

    async def resize(self, drive_uuid: str) -> None:
        async with self.sessions() as s:
            drive = await s.get(Drive, drive_uuid)
        if drive is None or drive.host is None:
            return
        error, capacity = None, None
        try:
            capacity = (await self.hosts.call(drive.host, "volume.resize", pool=drive.pool, name=drive.volume,
                                              size=drive.size))["capacity"]
        except AgentGone as err:
            log.error("drive %s: resize not done: %s", drive_uuid, err)
            return  # stays "resizing"; the host's next reconciliation retries
        except AgentCallError as err:
            log.error("drive %s: resize failed: %s", drive_uuid, err)
            error = self.reasons.of(err)
            with contextlib.suppress(*HOST_FAILURES, StopIteration):
                capacity = (await self.path_of(drive))["capacity"]
        async with self.sessions.begin() as s:
            row = await s.get(Drive, drive_uuid)
            if row is not None and capacity is not None and error is not None:
                row.size = round_size(capacity)  # what the volume has, not what was asked
            await finish_started(s, "drive_resize", drive_uuid, error)
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
        """Delete volumes on their hosts; one that cannot go now is deleted again later, so that a
        volume whose drive is gone never stays behind (a copy cut off by a dying agent included)."""
        for host, pool, name in volumes:
            if host is None or name is None:
                continue
            if not await self._delete(host, pool, name):
                self.undeleted.setdefault(host, set()).add((pool, name))
        await self.collect_bases()  # a deleted overlay may have been the last user of its base

    async def collect_bases(self) -> None:
        """Delete the copy-on-write bases no drive or base reads through any more: the volume
        first, then its row (a host that is down keeps both until its next reconciliation)."""
        while True:
            async with self.sessions() as s:
                unused = await unused_bases(s)
            deleted = []
            for base in unused:
                try:
                    async with self.lock(base.host):  # a clone reusing a library base holds it too
                        async with self.sessions() as s:
                            if base.uuid not in {b.uuid for b in await unused_bases(s)}:
                                continue
                        await self.hosts.call(base.host, "volume.delete", pool=base.pool, name=base.volume)
                except AgentCallError as err:
                    if err.kind != "notfound":
                        log.error("base %s on %s not deleted: %s", base.volume, base.host, err)
                        continue
                except AgentGone:
                    continue
                deleted.append(base.uuid)
            if not deleted:
                return
            async with self.sessions.begin() as s:
                for uuid in deleted:
                    await forget_base(s, uuid)

    @contextlib.asynccontextmanager
    async def readable(self, drive: Drive, scratch: Path) -> AsyncIterator[tuple[Path, str, bool]]:
        """A local path of the drive's image, its format and whether it is an overlay, with its
        copy-on-write bases beside it (they are named relative to it): the pool's own files on
        the local host, else the chain fetched into a directory of ``scratch`` under the same
        names (removed afterwards)."""
        assert drive.host is not None
        listing = {v["name"]: v for v in await self.hosts.call(drive.host, "volume.list", pool=drive.pool)}
        chain = [listing.get(drive.volume or "")]
        while chain[-1] is not None and chain[-1].get("backing"):
            chain.append(listing.get(os.path.basename(chain[-1]["backing"])))
        if None in chain:
            raise AgentCallError("notfound", f"a volume of drive {drive.uuid} is missing on its host", None)
        directory = scratch / f"chain-{uuid.uuid4().hex}"
        try:
            async with contextlib.AsyncExitStack() as stack:
                paths = [await stack.enter_async_context(self.hosts.fetched(drive.host, v["path"], directory,
                                                                            v["name"])) for v in chain if v]
                top = chain[0]
                assert top is not None
                yield paths[0], top["format"], len(chain) > 1
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def retry_deletes(self, host: str) -> None:
        for pool, name in sorted(self.undeleted.get(host, ()), key=str):
            if await self._delete(host, pool, name):
                self.undeleted[host].discard((pool, name))
                log.info("volume %s/%s on %s deleted on a later attempt", pool, name, host)

    async def _delete(self, host: str, pool: str | None, name: str) -> bool:
        """Whether the volume is gone now (deleted, or not there)."""
        try:
            await self.hosts.call(host, "volume.delete", pool=pool, name=name)
        except AgentCallError as err:
            if err.kind == "notfound":
                return True
            log.error("volume %s/%s on %s not deleted yet: %s", pool, name, host, err)
            return False
        except (AgentGone, TimeoutError) as err:
            log.error("volume %s/%s on %s not deleted yet: %s", pool, name, host, err)
            return False
        return True

    async def path_of(self, drive: Drive) -> dict[str, Any]:
        """The volume's listing entry on its host (path, format, capacity)."""
        assert drive.host is not None
        listing = await self.hosts.call(drive.host, "volume.list", pool=drive.pool)
        return next(v for v in listing if v["name"] == drive.volume)
