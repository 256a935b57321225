"""Drive clones after the request that planned them (``orchestrator/domain/cloning.py``) committed:
make the destination's volume from the source's, then settle both drives and the jobs.

Per pool type, a clone within one pool can be instant (``INSTANT``): in a directory pool, a
copy-on-write clone (``volume.cow_clone``: both drives become qcow2 overlays on the source's image
as it was, flattened later by ``orchestrator/work/flatten.py``), done before the clone request
answers, so the clone is ``unmounted`` at once and its source free to start. Other clones (another
host, pool or storage type; ``clone_mode = "copy"``; a pool type without an instant clone) copy
the whole volume in the background, the source ``cloning_src`` and the clone ``cloning_dst`` until
it is done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive, Host, Job, ServerDrive
from orchestrator.db.models import Server as ServerRow
from orchestrator.domain.cow import base_volume, library_base, record_clone
from orchestrator.domain.jobs import finish, finish_parent, running_clones, still_cloning
from orchestrator.domain.placement import shares_pool
from orchestrator.hosts.pool import Hosts
from orchestrator.work.flatten import FlattenWork
from orchestrator.work.leases import Cluster
from orchestrator.work.servers import ServerWork
from orchestrator.work.tasks import Tasks
from orchestrator.work.volumes import HOST_FAILURES, VolumeWork

log = logging.getLogger(__name__)
CloneMode = Literal["cow", "copy"]
Instant = Callable[[str, Drive, Drive], Awaitable[bool]]  # (job, source, target) → done


class CloneWork:
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts, tasks: Tasks, volumes: VolumeWork,
                 servers: ServerWork, scratch: Path, cluster: Cluster, flattens: FlattenWork,
                 mode: CloneMode = "cow") -> None:
        self.sessions = sessions
        self.cluster = cluster
        self.hosts = hosts
        self.tasks = tasks
        self.volumes = volumes
        self.servers = servers
        self.scratch = scratch  # where images in transit between hosts wait
        self.flattens = flattens
        self.mode = mode
        # Clone jobs this process runs now; a reconciliation resumes only the others (what an
        # API node that died left behind).
        self.busy: set[str] = set()
        # The instant clone of each pool type (a pool's "kind" in its host's facts; "dir" when
        # the agent does not say): another storage backend adds its own here.
        self.instant: dict[str, Instant] = {"dir": self._dir_cow, "rbd": self._pool_clone}

    async def run(self, job_uuid: str) -> None:
        """An instant clone before this returns, where the pool offers one; else a copy in the background."""
        self.busy.add(job_uuid)
        await self.tasks.run(self._begin(job_uuid), f"clone {job_uuid}")

    async def _begin(self, job_uuid: str) -> None:
        try:
            done = await self._instant(job_uuid)
        except BaseException:
            self.busy.discard(job_uuid)
            raise
        if done:
            self.busy.discard(job_uuid)
        else:
            await self.tasks.spawn(self._run(job_uuid), f"clone {job_uuid}")

    async def _instant(self, job_uuid: str) -> bool:
        async with self.sessions() as s:
            job = await s.get(Job, job_uuid)
            if self.mode != "cow" or job is None or job.source_uuid is None or job.target_uuid is None:
                return False
            source, target = await s.get(Drive, job.source_uuid), await s.get(Drive, job.target_uuid)
            if source is None or target is None or source.host is None or source.volume is None:
                return False
            if (target.host, target.pool) != (source.host, source.pool):
                return False  # another host or pool: only a copy gets there
            host = await s.scalar(select(Host).where(Host.name == source.host))
        pools = (host.facts or {}).get("pools", []) if host is not None else []
        kind = next((p.get("kind", "dir") for p in pools if p.get("name") == source.pool), "dir")
        instant = self.instant.get(kind)
        return instant is not None and await instant(job_uuid, source, target)

    async def _dir_cow(self, job_uuid: str, source: Drive, target: Drive) -> bool:
        """Copy-on-write in a directory pool; False (and the reason logged) when the host cannot."""
        assert source.host is not None
        library = source.owner_uuid is None
        async with self.volumes.lock(source.host):  # also keeps a library base from being collected
            async with self.sessions() as s:
                shared = await library_base(s, source) if library else None
            base = shared.volume if shared is not None else base_volume(job_uuid)
            try:
                made = await self.hosts.call(source.host, "volume.cow_clone", timeout=600, pool=source.pool,
                                             source=source.volume, name=target.volume, base=base,
                                             size=target.size, keep_source=library)
            except AgentCallError as err:
                log.warning("job %s: no copy-on-write clone (%s); copying the whole volume instead", job_uuid, err)
                await self._keep_partial(job_uuid, source, base, shared is None)
                return False
            except AgentGone as err:
                await self._settle(job_uuid, target, {}, self.volumes.reasons.of(err))
                return True
            await self._settle(job_uuid, target, made["clone"], None, cow=base)
        await self.flattens.schedule([target.uuid] + ([] if library else [source.uuid]))
        return True

    async def _pool_clone(self, job_uuid: str, source: Drive, target: Drive) -> bool:
        """A pool whose own clone is copy-on-write (RBD: snapshot + protected clone): done at once."""
        assert source.host is not None
        async with self.volumes.lock(source.host):
            try:
                volume = await self.hosts.call(source.host, "volume.clone", pool=source.pool,
                                               source=source.volume, name=target.volume, size=target.size)
            except AgentCallError as err:
                log.warning("job %s: no instant clone (%s); trying again in the background", job_uuid, err)
                return False
            except AgentGone as err:
                await self._settle(job_uuid, target, {}, self.volumes.reasons.of(err))
                return True
        await self._settle(job_uuid, target, volume, None)
        return True

    async def _keep_partial(self, job_uuid: str, source: Drive, base: str, own: bool) -> None:
        """After a failed copy-on-write clone: a source that reads through the new base already
        keeps it (recorded, flattened later); an unused new base goes."""
        if not own or source.host is None:
            return
        with contextlib.suppress(*HOST_FAILURES):
            listing = {v["name"]: v for v in await self.hosts.call(source.host, "volume.list", pool=source.pool)}
            if base not in listing:
                return
            reads_base = os.path.basename(listing.get(source.volume or "", {}).get("backing") or "") == base
            if reads_base and source.owner_uuid is not None:
                async with self.sessions.begin() as s:
                    row = await s.get(Drive, source.uuid)
                    if row is not None:
                        await record_clone(s, job_uuid, row, row, base)  # the source is its only user
                await self.flattens.schedule([source.uuid])
            else:
                await self.hosts.call(source.host, "volume.delete", pool=source.pool, name=base)

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
            error = None
        except HOST_FAILURES as err:
            log.error("job %s: clone failed: %s", job_uuid, err)
            error = self.volumes.reasons.of(err)
        await self._settle(job_uuid, planned, volume, error)

    async def _settle(self, job_uuid: str, planned: Drive | None, volume: dict[str, Any], error: str | None,
                      cow: str | None = None) -> None:
        """End the job and settle both drives: the clone made (``volume``; a copy-on-write clone's
        base named by ``cow``), or, after ``error``, no clone left; ``planned`` is the target as planned,
        for a clone whose drive was deleted meanwhile."""
        ok = error is None
        auto_start, source_uuid, target_uuid = None, None, planned.uuid if planned is not None else None
        async with self.sessions.begin() as s:
            job = await s.get(Job, job_uuid)
            source_uuid = job.source_uuid if job is not None else None
            target = await s.get(Drive, target_uuid) if target_uuid is not None else None
            if ok and target is not None:
                target.pool = volume["pool"]
                source = await s.get(Drive, source_uuid) if cow is not None and source_uuid else None
                if source is not None and cow is not None:
                    await record_clone(s, job_uuid, source, target, cow)
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
        if target_uuid is not None:
            await self.volumes.settle(target_uuid)
        if source_uuid is not None:
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
        """Copy a volume between storage hosts or pools: fetch the image file with its copy-on-write
        bases (or the raw image an RBD volume's host writes out), import it on the target."""
        assert source.host is not None and source.volume is not None
        if (await self.volumes.path_of(source)).get("kind") == "rbd":
            async with self.hosts.exported(source.host, source.pool, source.volume, self.scratch) as local:
                return await self.volumes.import_file(target, local)
        async with self.volumes.readable(source, self.scratch) as (local, fmt, overlay):
            if not overlay:
                return await self.volumes.import_file(target, local)
            # A copy-on-write clone: its chain, made one standalone image first (imports refuse
            # backing files).
            standalone = self.scratch / f"standalone-{target.uuid}.qcow2"
            try:
                proc = await asyncio.create_subprocess_exec(
                    "qemu-img", "convert", "-q", "-U", "-f", fmt, "-O", "qcow2", str(local), str(standalone),
                    stderr=asyncio.subprocess.PIPE)
                _, err = await proc.communicate()
                if proc.returncode != 0:
                    raise OSError(f"qemu-img convert failed: {err.decode(errors='replace').strip()}")
                return await self.volumes.import_file(target, standalone)
            finally:
                standalone.unlink(missing_ok=True)

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
