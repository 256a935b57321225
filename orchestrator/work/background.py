"""The background workers of one API node, built together by the app factory."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from orchestrator.domain.jobs import Reasons
from orchestrator.domain.placement import Scheduler
from orchestrator.hosts.pool import Hosts
from orchestrator.work.clones import CloneWork
from orchestrator.work.contexts import BuildDocument, ContextWork
from orchestrator.work.migrations import MigrationWork
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

    @classmethod
    def build(cls, sessions: async_sessionmaker, hosts: Hosts, scheduler: Scheduler, *, context_document: BuildDocument,
              data_dir: Path, shutdown_window: float, heartbeat: float) -> Work:
        tasks = Tasks()
        reasons = Reasons.under([data_dir])  # failed jobs may show paths in the data directory, no others
        scratch = data_dir / "transit"  # where images in transit between hosts wait
        volumes = VolumeWork(sessions, hosts, reasons)
        contexts = ContextWork(sessions, hosts, tasks, context_document)
        servers = ServerWork(sessions, hosts, tasks, scheduler, reasons, contexts, shutdown_window=shutdown_window)
        clones = CloneWork(sessions, hosts, tasks, volumes, servers, scratch)
        migrations = MigrationWork(sessions, hosts, tasks, scheduler, reasons, contexts, servers)
        watch = HostWatch(sessions, hosts, tasks, servers, volumes, clones, contexts, migrations, heartbeat=heartbeat)
        return cls(tasks, volumes, servers, clones, contexts, migrations, watch)

    async def later(self, step: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        """Run ``step`` in the background (after the request's commit), supervised."""
        await self.tasks.spawn(step, name)

    async def now(self, step: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        """Run ``step`` supervised and wait until it ended: a caller that goes away (a client that
        hangs up) leaves it running."""
        await self.tasks.run(step, name)

    async def start(self) -> None:
        await self.watch.start()

    async def stop(self) -> None:
        await self.tasks.close()
