"""The background workers of one API node, built together by the app factory."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from orchestrator.db.wake import Wakeups
from orchestrator.domain.jobs import Reasons
from orchestrator.domain.placement import Scheduler
from orchestrator.hosts.pool import Hosts
from orchestrator.work.clones import CloneMode, CloneWork
from orchestrator.work.contexts import BuildDocument, ContextWork
from orchestrator.work.flatten import FlattenWork
from orchestrator.work.leases import Cluster
from orchestrator.work.migrations import MigrationWork
from orchestrator.work.purge import JobPurge
from orchestrator.work.servers import ServerWork
from orchestrator.work.tasks import Tasks
from orchestrator.work.volumes import VolumeWork
from orchestrator.work.watch import HostWatch


@dataclass
class Work:
    tasks: Tasks
    volumes: VolumeWork
    servers: ServerWork
    clones: CloneWork
    contexts: ContextWork
    migrations: MigrationWork
    watch: HostWatch
    cluster: Cluster
    purge: JobPurge

    @classmethod
    def build(cls, sessions: async_sessionmaker, hosts: Hosts, scheduler: Scheduler, cluster: Cluster, *,
              context_document: BuildDocument, data_dir: Path, shutdown_window: float, heartbeat: float,
              clone_mode: CloneMode = "cow", flatten_rate: int | None = None,
              job_max_age: float = 7 * 24 * 3600.0, wakeups: Wakeups | None = None) -> Work:
        tasks = Tasks()
        reasons = Reasons.under([data_dir])  # failed jobs may show paths in the data directory, no others
        scratch = data_dir / "transit"  # where images in transit between hosts wait
        volumes = VolumeWork(sessions, hosts, reasons)
        contexts = ContextWork(sessions, hosts, tasks, context_document)
        flattens = FlattenWork(sessions, hosts, tasks, volumes, flatten_rate)
        servers = ServerWork(sessions, hosts, tasks, scheduler, reasons, contexts, shutdown_window=shutdown_window,
                             flattens=flattens)
        clones = CloneWork(sessions, hosts, tasks, volumes, servers, scratch, cluster, flattens, clone_mode)
        migrations = MigrationWork(sessions, hosts, tasks, scheduler, reasons, contexts, servers, cluster, wakeups)
        watch = HostWatch(sessions, hosts, tasks, servers, volumes, clones, contexts, migrations, cluster,
                          heartbeat=heartbeat)
        return cls(tasks, volumes, servers, clones, contexts, migrations, watch, cluster,
                   JobPurge(sessions, job_max_age))

    async def later(self, step: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        """Run ``step`` in the background (after the request's commit), supervised."""
        await self.tasks.spawn(step, name)

    async def now(self, step: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        """Run ``step`` supervised and wait until it ended: a caller that goes away (a client that
        hangs up) leaves it running."""
        await self.tasks.run(step, name)

    async def start(self) -> None:
        await self.cluster.join()  # leases first: a lone node holds its hosts before they connect
        await self.watch.start()
        await self.tasks.spawn(self.cluster.run(), "leases")
        await self.tasks.spawn(self.purge.run(), "job purge")

    async def stop(self) -> None:
        await self.tasks.close()
        await self.migrations.stop()
        await self.cluster.leave()
