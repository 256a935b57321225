"""Server transitions recorded in the store: the start a handler records (placed, addresses
leased, ``starting``, a ``server_start`` job), the boot the work layer records (``running``, the
job a success) and the stop it records once a domain is off (a start still running then failed)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Drive, Server, ServerDrive
from orchestrator.domain.drives import IDLE
from orchestrator.domain.errors import forbidden
from orchestrator.domain.jobs import finish_started, new_job
from orchestrator.domain.lifecycle import Status, check
from orchestrator.domain.networks import lease_addresses, release_addresses
from orchestrator.domain.placement import Scheduler, release

COPY_SOURCE = "cloning_src"  # a drive status: being copied into a clone


async def begin_start(s: AsyncSession, server: Server, scheduler: Scheduler, avoid: Sequence[str]) -> None:
    """Check, place (claim a host) and lease addresses, then mark ``starting``; in the caller's
    transaction, under the scheduler's lock.  The boot itself is the work layer's."""
    check(server, "start")  # a refusal, or the status rolls back with the transaction below
    drives = (await s.scalars(select(Drive).join(ServerDrive, ServerDrive.drive_uuid == Drive.uuid)
                              .where(ServerDrive.server_uuid == server.uuid))).all()
    for drive in drives:
        library = drive.owner_uuid is None and drive.status in IDLE  # a library cdrom (§23)
        # A clone's source: the boot waits until the copy is done (libcloud starts the source of a
        # fresh clone at once), so the copy never sees the guest write.
        ready = drive.status in ("mounted", COPY_SOURCE) or library
        if not ready or drive.host is None:
            raise forbidden(f'Drive {drive.uuid} is not ready to boot (status "{drive.status}")')
    await scheduler.place_server(s, server, [(d.host, d.pool) for d in drives], avoid)
    server.avoid = list(avoid)
    await lease_addresses(s, server)  # 503 when a DHCP pool is exhausted
    new_job(s, server.owner_uuid, "server_start", "servers", server.uuid)


async def record_running(s: AsyncSession, server: Server) -> None:
    """The domain runs: ``running``, and the start that asked for it succeeded."""
    server.status = Status.RUNNING
    await finish_started(s, "server_start", server.uuid)


async def record_stopped(s: AsyncSession, server: Server) -> None:
    """The domain is off: ``stopped``, its claim on the host and its leased addresses released."""
    await release(s, server)
    server.status, server.host, server.active_since = Status.STOPPED, None, None
    await release_addresses(s, server)
    # A boot that failed wrote its reason already; this is a stop (or host loss) during the boot.
    await finish_started(s, "server_start", server.uuid, "The server stopped before it finished starting")
