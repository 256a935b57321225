"""Server transitions recorded in the store: the start a handler records (placed, addresses
leased, ``starting``) and the stop the work layer records once a domain is off."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import Drive, Server, ServerDrive
from orchestrator.domain.drives import IDLE
from orchestrator.domain.errors import forbidden
from orchestrator.domain.lifecycle import Status, check
from orchestrator.domain.networks import lease_addresses, release_addresses
from orchestrator.domain.placement import Scheduler, release


async def begin_start(s: AsyncSession, server: Server, scheduler: Scheduler, avoid: Sequence[str]) -> None:
    """Check, place (claim a host) and lease addresses, then mark ``starting``; in the caller's
    transaction, under the scheduler's lock.  The boot itself is the work layer's."""
    check(server, "start")  # a refusal, or the status rolls back with the transaction below
    drives = (await s.scalars(select(Drive).join(ServerDrive, ServerDrive.drive_uuid == Drive.uuid)
                              .where(ServerDrive.server_uuid == server.uuid))).all()
    for drive in drives:
        library = drive.owner_uuid is None and drive.status in IDLE  # a library cdrom (§23)
        if (drive.status != "mounted" and not library) or drive.host is None:
            raise forbidden(f'Drive {drive.uuid} is not ready to boot (status "{drive.status}")')
    await scheduler.place_server(s, server, [(d.host, d.pool) for d in drives], avoid)
    await lease_addresses(s, server)  # 503 when a DHCP pool is exhausted


async def record_stopped(s: AsyncSession, server: Server) -> None:
    """The domain is off: ``stopped``, its claim on the host and its leased addresses released."""
    await release(s, server)
    server.status, server.host, server.active_since = Status.STOPPED, None, None
    await release_addresses(s, server)
