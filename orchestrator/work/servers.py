"""Server lifecycles on their hosts, after the request that asked has committed.

The handler has checked the §13 table and recorded the first transitional status (and, for a
start, the claim on a host and a ``server_start`` job); what follows here talks to the host's
agent and records the outcome: ``running`` once booted, ``stopped`` (claim and addresses
released) once off; a boot that fails ends its job ``failed`` with the host's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive, Server, ServerDrive, utcnow
from orchestrator.domain.errors import notexist
from orchestrator.domain.jobs import Reasons, finish_started, record_fault
from orchestrator.domain.lifecycle import BOOTED, Status
from orchestrator.domain.networks import network_plan, reservations_of
from orchestrator.domain.placement import Scheduler
from orchestrator.domain.transitions import COPY_SOURCE, begin_start, record_running, record_stopped
from orchestrator.hosts.pool import Hosts
from orchestrator.hosts.spec import server_spec
from orchestrator.work.contexts import ContextWork
from orchestrator.work.flatten import FlattenWork
from orchestrator.work.tasks import Tasks
from orchestrator.work.volumes import HOST_FAILURES

log = logging.getLogger(__name__)
UP = (Status.RUNNING, Status.PAUSED, Status.UNAVAILABLE)  # a server whose stop nobody asked for is a fault


class ServerWork:
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts, tasks: Tasks, scheduler: Scheduler,
                 reasons: Reasons, contexts: ContextWork, *, shutdown_window: float = 60.0,
                 flattens: FlattenWork | None = None) -> None:
        self.sessions = sessions
        self.flattens = flattens  # a boot pauses the flattens of its drives (the guest opens them)
        self.reasons = reasons
        self.hosts = hosts
        self.tasks = tasks
        self.scheduler = scheduler
        self.contexts = contexts
        self.shutdown_window = shutdown_window
        # Called with a server's uuid once it has stopped (the consoles close its tunnels).
        self.stop_listeners: list[Callable[[str], Awaitable[None]]] = []
        # Boots this process runs now; a reconciliation leaves these alone.
        self.booting: set[str] = set()

    async def start(self, uuid: str, avoid: Sequence[str] = ()) -> None:
        """Place and mark ``starting`` in one transaction (refusals raise), then boot in the background."""
        async def place(s: AsyncSession) -> None:
            server = await s.get(Server, uuid)
            if server is None:
                raise notexist("Server")
            await begin_start(s, server, self.scheduler, avoid)

        # Starts that arrive together share one commit (Scheduler.batched).
        await self.scheduler.batched(self.sessions, place)
        await self.boot(uuid)

    async def boot(self, uuid: str) -> None:
        """Boot a server already placed (status ``starting``, host claimed), in the background."""
        self.booting.add(uuid)
        await self.tasks.spawn(self._boot(uuid), f"boot {uuid}")

    async def _boot(self, uuid: str) -> None:
        try:
            await self._start_domain(uuid)
        except Exception:  # a bug, not the host: the job still ends, the traceback goes to the log
            async with self.sessions() as s:
                server = await s.get(Server, uuid)
                host = server.host if server is not None else None
            await self._failed(uuid, host, "Internal error while starting the server (see the operator's log)")
            raise
        finally:
            self.booting.discard(uuid)

    async def _failed(self, uuid: str, host: str | None, reason: str) -> None:
        """A boot that failed: its job says why; the server is ``stopped``, its claim released."""
        async with self.sessions.begin() as s:
            await finish_started(s, "server_start", uuid, reason)
        if host is not None:
            await self.finish_stop(uuid, host)

    async def _copies_done(self, uuid: str, every: float = 0.5) -> bool:
        """Wait while a drive of the booting server is still being copied into a clone; False when
        the server stopped (or went) meanwhile."""
        while True:
            async with self.sessions() as s:
                server = await s.get(Server, uuid)
                if server is None or server.status != Status.STARTING:
                    return False
                copying = await s.scalar(select(Drive.uuid).join(ServerDrive, ServerDrive.drive_uuid == Drive.uuid)
                                         .where(ServerDrive.server_uuid == uuid, Drive.status == COPY_SOURCE).limit(1))
            if copying is None:
                return True
            await asyncio.sleep(every)

    async def _start_domain(self, uuid: str) -> None:
        if not await self._copies_done(uuid):
            return
        async with self.sessions() as s:
            server = await s.scalar(select(Server).where(Server.uuid == uuid)
                                    .options(selectinload(Server.drive_links)))
            if server is None or server.host is None:
                return
            drives = {d.uuid: d for d in (await s.scalars(select(Drive).where(
                Drive.uuid.in_([a.drive_uuid for a in server.drive_links])))).all()}
            plan, host = await network_plan(s, server), server.host
        try:
            networks = await self.connect_nics(host, [n["mac"] for n in server.nics], plan)
            await self.contexts.push_one(uuid)  # there before the guest asks
            async with self._flattens_paused(list(drives)):
                domain = await self.hosts.call(host, "domain.start", server=server_spec(server, drives, networks))
        except (*HOST_FAILURES, ValueError) as err:  # ValueError: a definition the wire refuses
            log.error("server %s did not start on %s: %s", uuid, host, err)
            await self._failed(uuid, host, self.reasons.of(err))
            return
        async with self.sessions.begin() as s:
            server = await s.get(Server, uuid)
            # The lifecycle event may have marked it running already.
            booted = server is not None and server.host == host and server.status in BOOTED
            if booted:
                await record_running(s, server)
                server.active_since = datetime.fromisoformat(domain["active_since"]) if domain.get(
                    "active_since") else utcnow()
        if not booted:  # stopped (or deleted) while booting: the guest must not outlive its claim
            with contextlib.suppress(AgentCallError, AgentGone):
                await self.hosts.call(host, "domain.undefine", uuid=uuid)

    def _flattens_paused(self, drive_uuids: list[str]) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext() if self.flattens is None else self.flattens.paused(drive_uuids)

    async def connect_nics(self, host: str, macs: list[str],
                            plan: list[tuple[dict[str, Any] | None, str | None]]) -> list[str | None]:
        """Each NIC's network made ready on the host (defined, VXLAN peers) and its address
        reserved for its MAC; returns the libvirt network names for the server spec."""
        names: dict[str, str] = {}
        out: list[str | None] = []
        for mac, (network, address) in zip(macs, plan, strict=True):
            if network is None:
                out.append(None)
                continue
            if network["name"] not in names:
                names[network["name"]] = (await self.hosts.call(host, "network.ensure", network=network))["name"]
            if address is not None:
                await self.hosts.call(host, "network.reserve", network=network["name"], mac=mac, ip=address)
            out.append(names[network["name"]])
        return out

    async def stop(self, uuid: str, host: str) -> None:
        await self.tasks.spawn(self._stop(uuid, host), f"stop {uuid}")

    async def _stop(self, uuid: str, host: str) -> None:
        with contextlib.suppress(AgentCallError):  # notfound: already gone
            await self.hosts.call(host, "domain.stop", uuid=uuid)
        await self.finish_stop(uuid, host)

    async def restart(self, uuid: str, host: str) -> None:
        await self.hosts.call(host, "domain.reset", uuid=uuid)

    async def shutdown(self, uuid: str, host: str) -> None:
        await self.tasks.spawn(self._shutdown(uuid, host), f"shutdown {uuid}")

    async def _shutdown(self, uuid: str, host: str) -> None:
        """ACPI power button every second for the window; a guest that ignores it stays running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_window
        while loop.time() < deadline:
            try:
                await self.hosts.call(host, "domain.shutdown", uuid=uuid)
            except AgentCallError:
                break  # the domain is gone: it shut down
            await asyncio.sleep(1)
            async with self.sessions() as s:
                server = await s.get(Server, uuid)
            if server is None or server.status != Status.STOPPING:
                return
        domains = {d["uuid"]: d for d in await self.hosts.call(host, "domain.list")}
        if domains.get(uuid, {}).get("state") == "running":
            async with self.sessions.begin() as s:
                server = await s.get(Server, uuid)
                if server is not None and server.status == Status.STOPPING:
                    server.status = Status.RUNNING
        else:
            await self.finish_stop(uuid, host)

    async def finish_stop(self, uuid: str, host: str, fault: str | None = None) -> None:
        """The domain is off: status ``stopped``, claim released, definition removed.  ``fault``: it
        went off unasked (why, for a ``server_fault`` job when the server was up)."""
        async with self.sessions() as s:
            server = await s.get(Server, uuid)
            if server is None or server.host != host:
                return
            reservations = await reservations_of(s, server)
        # Reservations go first, so a client that sees "stopped" sees them gone (idempotent when
        # the lifecycle event and the stop request both get here).
        for network, mac in reservations:
            with contextlib.suppress(AgentCallError, AgentGone):
                await self.hosts.call(host, "network.release", network=network, mac=mac)
        async with self.sessions.begin() as s:
            server = await s.get(Server, uuid)
            if server is None or server.host != host:
                return
            if fault is not None and server.status in UP:
                log.warning("server %s stopped unexpectedly on %s: %s", uuid, host, fault)
                record_fault(s, server.owner_uuid, uuid, fault)
            await record_stopped(s, server)
        for listener in self.stop_listeners:
            await listener(uuid)
        with contextlib.suppress(AgentCallError, AgentGone):
            await self.hosts.call(host, "domain.undefine", uuid=uuid)
