"""Drive clones after the request that planned them (``orchestrator/domain/cloning.py``) committed:
copy the source volume into the destination, then settle both drives and the jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import async_sessionmaker

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive, Job, ServerDrive
from orchestrator.db.models import Server as ServerRow
from orchestrator.domain.jobs import finish, finish_parent, running_clones, still_cloning
from orchestrator.domain.placement import shares_pool
from orchestrator.hosts.pool import Hosts
from orchestrator.work.leases import Cluster
from orchestrator.work.servers import ServerWork
from orchestrator.work.tasks import Tasks
from orchestrator.work.volumes import HOST_FAILURES, VolumeWork

log = logging.getLogger(__name__)


class CloneWork:
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts, tasks: Tasks, volumes: VolumeWork,
                 servers: ServerWork, scratch: Path, cluster: Cluster) -> None:
        self.sessions = sessions
        self.cluster = cluster
        self.hosts = hosts
        self.tasks = tasks
        self.volumes = volumes
        self.servers = servers
        self.scratch = scratch  # where images in transit between hosts wait
        # Clone jobs this process runs now; a reconciliation resumes only the others (what an
        # API node that died left behind).
        self.busy: set[str] = set()

    async def run(self, job_uuid: str) -> None:
        self.busy.add(job_uuid)
        await self.tasks.spawn(self._run(job_uuid), f"clone {job_uuid}")

    async def _run(self, job_uuid: str) -> None:
        try:
            await self._copy(job_uuid)
        finally:
            self.busy.discard(job_uuid)

    async def _copy(self, job_uuid: str) -> None:
        """Copy a ``drive_clone`` job's source volume into its target, then settle both."""
        async with self.sessions() as s:
            job = await s.get(Job, job_uuid)
            if job is None or job.source_uuid is None or job.target_uuid is None:
                return
            source_uuid, target_uuid = job.source_uuid, job.target_uuid
            source, target = await s.get(Drive, source_uuid), await s.get(Drive, target_uuid)
            shared = source is not None and target is not None and await shares_pool(s, source, target)
        planned = target  # as planned, for a copy whose drive is deleted meanwhile
        volume: dict[str, Any] = {}
        try:
            if source is None or target is None or source.host is None or target.host is None:
                raise AgentGone("source or destination is gone")
            if shared:  # one pool the source's host can copy into (an RBD clone is copy-on-write)
                async with self.volumes.lock(source.host):
                    volume = await self.hosts.call(source.host, "volume.clone", pool=source.pool,
                                                   source=source.volume, name=target.volume, size=target.size)
            else:  # another storage host or pool (avoid, storage type): the image travels as a file
                volume = await self._transfer(source, target)
            ok, error = True, None
        except HOST_FAILURES as err:
            log.error("job %s: clone failed: %s", job_uuid, err)
            ok, error = False, self.volumes.reasons.of(err)
        auto_start = None
        async with self.sessions.begin() as s:
            job = await s.get(Job, job_uuid)
            target = await s.get(Drive, target_uuid)
            if ok and target is not None:
                target.pool = volume["pool"]
            elif target is not None:  # nothing half-done is left: the failed copy goes away
                await s.execute(delete(ServerDrive).where(ServerDrive.drive_uuid == target_uuid))
                await s.delete(target)
                await self.tasks.spawn(self.volumes.delete([(target.host, target.pool, target.volume)]))
            elif planned is not None:  # deleted while copying (libcloud destroys a fresh clone): so is the copy
                made = (planned.host, volume.get("pool", planned.pool), planned.volume)
                await self.tasks.spawn(self.volumes.delete([made]))
                ok, error = False, error or "The clone was deleted before its copy finished"
            if job is not None:
                finish(job, error)
                await s.flush()
                parent = await finish_parent(s, job)
                if parent is not None and parent.state == "success" and parent.target_uuid is not None:
                    server = await s.get(ServerRow, parent.target_uuid)
                    auto_start = server.uuid if server is not None and server.auto_start else None
        await self.volumes.settle(target_uuid)
        async with self.sessions() as s:
            cloning = await still_cloning(s, source_uuid)
        if not cloning:
            await self.volumes.settle(source_uuid)
        if auto_start is not None:
            await self.tasks.spawn(self._auto_start(auto_start), f"auto_start {auto_start}")

    async def _auto_start(self, uuid: str) -> None:
        """A clone with ``auto_start`` starts once its drives are copied (spec §15)."""
        await asyncio.sleep(0.5)  # let the clone's drives settle first
        await self.servers.start(uuid)

    async def _transfer(self, source: Drive, target: Drive) -> dict[str, Any]:
        """Copy a volume between storage hosts or pools: fetch the image file (or the raw image an
        RBD volume's host writes out), import it on the target."""
        assert source.host is not None and source.volume is not None
        volume = await self.volumes.path_of(source)
        if volume.get("kind") == "rbd":
            async with self.hosts.exported(source.host, source.pool, source.volume, self.scratch) as local:
                return await self.volumes.import_file(target, local)
        async with self.hosts.fetched(source.host, volume["path"], self.scratch) as local:
            return await self.volumes.import_file(target, local)

    async def resume(self, host: str) -> None:
        """Drive clones a dead API node left ``started``: copy again once both hosts are up (one node
        takes each: the others see it leased to a live node)."""
        async with self.sessions() as s:
            orphans = []
            elsewhere = await self.cluster.busy_elsewhere(s)
            for job in await running_clones(s):
                if job.uuid in self.busy or ("job", job.uuid) in elsewhere:
                    continue
                drives = [await s.get(Drive, u) for u in (job.source_uuid, job.target_uuid) if u is not None]
                hosts = {d.host for d in drives if d is not None and d.host is not None}
                if host in hosts and all(self.hosts.is_up(h) for h in hosts):
                    orphans.append((job.uuid, await s.get(Drive, job.target_uuid) if job.target_uuid else None))
        for job_uuid, target in orphans:
            if not await self.cluster.take_job(job_uuid):
                continue  # another node resumes it
            if target is not None and target.host is not None:  # a partial copy goes first
                with contextlib.suppress(AgentCallError, AgentGone):
                    await self.hosts.call(target.host, "volume.delete", pool=target.pool, name=target.volume)
            log.info("job %s: resuming a drive clone left unfinished", job_uuid)
            await self.run(job_uuid)
