"""Keeping the store in line with the hosts: what a connection reports (up, down, lifecycle
events), reconciliation after every (re)connection, and the periodic host sync and statistics
poll whose counters GETs read without an RPC.

With several API nodes, each host's lease holder (``orchestrator/work/leases.py``) alone does all of
this for that host; the others read the statistics it stores on the lease row."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive, Host, HostLease, Server, utcnow
from orchestrator.domain.drives import IDLE
from orchestrator.domain.lifecycle import ACTIVE, REVIVED_BY_RUNNING, Status
from orchestrator.domain.placement import recount
from orchestrator.domain.transitions import record_running
from orchestrator.hosts.connection import Event, Listener
from orchestrator.hosts.pool import Hosts
from orchestrator.work.clones import CloneWork
from orchestrator.work.contexts import ContextWork
from orchestrator.work.leases import Cluster
from orchestrator.work.migrations import MigrationWork
from orchestrator.work.servers import ServerWork
from orchestrator.work.tasks import Tasks
from orchestrator.work.volumes import VolumeWork

log = logging.getLogger(__name__)
UNASKED_STOPS = ("crashed", "failed")  # libvirt's stop details that no request and no guest shutdown cause
LOST = ("The server stopped unexpectedly: its guest was no longer running when its host reconnected")


class HostWatch(Listener):
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts, tasks: Tasks, servers: ServerWork,
                 volumes: VolumeWork, clones: CloneWork, contexts: ContextWork, migrations: MigrationWork,
                 cluster: Cluster, *,
                 heartbeat: float = 5.0) -> None:
        self.sessions = sessions
        self.cluster = cluster
        self.hosts = hosts
        self.tasks = tasks
        self.servers = servers
        self.volumes = volumes
        self.clones = clones
        self.contexts = contexts
        self.migrations = migrations
        self.heartbeat = heartbeat
        # Latest domain.stats per running server, polled per host by its lease holder.
        self.stats: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        self.hosts.listener = self
        self.cluster.acquired.append(self._acquired)
        self.cluster.vanished.append(self._vanished)
        await self.migrations.start()
        await self.hosts.sync()
        await self.tasks.spawn(self._watch(), "host watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.hosts.sync()
                await self.poll_stats()
                for host in self.hosts.up_hosts():
                    await self.volumes.retry_deletes(host)
            except Exception:
                log.exception("host watch failed; trying again")

    async def poll_stats(self) -> None:
        """Runtime counters of the running servers, and each host's facts (pool space left), of the
        hosts this node holds; then every host's counters as their holders stored them."""
        for name in self.hosts.up_hosts():
            if not self.cluster.holds(name):
                continue
            with contextlib.suppress(AgentCallError, AgentGone, TimeoutError):
                stats = await self.hosts.call(name, "domain.stats", timeout=10)
                facts = await self.hosts.call(name, "host.facts", timeout=10)
                async with self.sessions.begin() as s:
                    host = await s.get(Host, name)
                    if host is not None and host.facts != facts:
                        host.facts = facts
                    lease = await s.get(HostLease, name)
                    if lease is not None and lease.node == self.cluster.node:
                        lease.stats = stats
        async with self.sessions() as s:
            fresh: dict[str, dict[str, Any]] = {}
            for stats in (await s.scalars(select(HostLease.stats).where(HostLease.expires > utcnow()))).all():
                fresh.update(stats or {})
        self.stats = fresh

    # --- leases -------------------------------------------------------------------------------------

    async def _acquired(self, host: str) -> None:
        if self.hosts.is_up(host):
            await self.tasks.spawn(self._reconcile_logged(host), f"reconcile {host}")

    async def _vanished(self, _nodes: set[str]) -> None:
        """A node died: what it ran on the hosts this node holds is finished or rolled back."""
        for host in sorted(self.cluster.held):
            if self.hosts.is_up(host):
                await self.tasks.spawn(self._reconcile_logged(host), f"reconcile {host}")

    async def _reconcile_logged(self, host: str) -> None:
        try:
            await self.reconcile(host)
        except (AgentCallError, AgentGone, TimeoutError) as err:
            log.warning("host %s: reconciliation failed: %s", host, err)

    # --- what connections report ------------------------------------------------------------------

    async def host_up(self, host: str, facts: dict[str, Any]) -> None:
        if not self.cluster.holds(host):
            return
        async with self.sessions.begin() as s:
            row = await s.get(Host, host)
            if row is None:
                return
            row.facts, row.last_heartbeat = facts, utcnow()
            if row.state == "down":
                row.state = "up"
        await self.reconcile(host)

    async def host_down(self, host: str) -> None:
        if not self.cluster.holds(host):
            return
        async with self.sessions.begin() as s:
            row = await s.get(Host, host)
            if row is not None and row.state == "up":
                row.state = "down"
            for server in (await s.scalars(select(Server).where(Server.host == host,
                                                                 Server.status.in_(ACTIVE)))).all():
                server.status = Status.UNAVAILABLE
            for drive in (await s.scalars(select(Drive).where(Drive.host == host, Drive.status.in_(IDLE)))).all():
                drive.status = "unavailable"

    async def agent_event(self, host: str, event: Event) -> None:
        params = event.get("params", {})
        state, uuid = params.get("state"), params.get("uuid")
        if event.get("event") != "domain.lifecycle" or state is None or not self.cluster.holds(host):
            return
        if uuid in self.migrations.moving:  # paused at its end, started on the target: it stays running
            return
        if state == "paused":
            async with self.sessions() as s:
                if await self.migrations.moving_elsewhere(s, uuid):  # as above, on the node that moves it
                    return
        if state == "stopped":
            reason = params.get("reason")
            if reason == "migrated":  # it runs on the target now (work/migrations.py)
                return
            fault = (f"The server stopped unexpectedly: its QEMU process on the host ended ({reason})"
                     if reason in UNASKED_STOPS else None)
            await self.servers.finish_stop(uuid, host, fault)
            return
        async with self.sessions.begin() as s:
            server = await s.get(Server, uuid)
            if server is None or server.host != host:
                log.warning("host %s: event for a domain Strato does not know: %s", host, params)
                return
            if state == "running" and server.status in REVIVED_BY_RUNNING:
                await record_running(s, server)
            elif state == "paused":
                server.status = Status.PAUSED

    async def reconcile(self, host: str) -> None:
        """Compare the database with what the host's libvirt says (after any (re)connection)."""
        domains = {d["uuid"]: d for d in await self.hosts.call(host, "domain.list")}
        volumes = {v["name"] for v in await self.hosts.call(host, "volume.list")}
        async with self.sessions.begin() as s:
            elsewhere = await self.cluster.busy_elsewhere(s)  # what live nodes run now: theirs to finish
            await recount(s, host)  # the claim counters, from the servers the database places there
            servers = (await s.scalars(select(Server).where(Server.host == host))).all()
            known = {server.uuid for server in servers}
            gone, lost = [], set()
            for server in servers:
                domain = domains.get(server.uuid)
                if domain is not None and domain["state"] == "running":
                    if server.status != Status.RUNNING:
                        await record_running(s, server)
                    if domain.get("active_since"):
                        server.active_since = datetime.fromisoformat(domain["active_since"])
                elif server.status == Status.STARTING and (server.uuid in self.servers.booting
                                                           or ("server_start", server.uuid) in elsewhere):
                    continue  # a boot under way, here or on another live node
                elif server.uuid in self.migrations.moving or ("server_migrate", server.uuid) in elsewhere:
                    continue  # gone to the target just now: the node that moves it records where it is
                else:
                    gone.append(server.uuid)
                    if domain is None or domain["state"] == "stopped":  # its guest ended while nobody listened
                        lost.add(server.uuid)
            # A guest of a server the database says is stopped (its boot finished after the API node
            # that asked for it died, and the claim was released): it must not outlive its claim.
            stray = set((await s.scalars(select(Server.uuid).where(
                Server.uuid.in_(set(domains) - known), Server.status == Status.STOPPED))).all())
            for uuid in set(domains) - known - stray:
                # Never destroyed silently: an operator decides what an unknown guest is.
                log.warning("host %s runs domain %s that Strato does not know; left alone", host, uuid)
            unsettled = (await s.scalars(select(Drive).where(Drive.host == host, Drive.status.in_(
                ("creating", "unavailable", "resizing"))))).all()
        for uuid in gone:
            await self.servers.finish_stop(uuid, host, LOST if uuid in lost else None)
        for uuid in stray:
            log.warning("host %s runs domain %s of a stopped server; removing it", host, uuid)
            with contextlib.suppress(AgentCallError, AgentGone):
                await self.hosts.call(host, "domain.undefine", uuid=uuid)
        for drive in unsettled:
            if {("drive_create", drive.uuid), ("drive_resize", drive.uuid)} & elsewhere:
                continue  # a live node creates or resizes it now
            if drive.status == "creating" and drive.volume not in volumes:
                await self.tasks.spawn(self.volumes.create(drive.uuid))
            elif drive.status == "resizing":
                await self.tasks.spawn(self.volumes.resize(drive.uuid))  # growing to the recorded size is idempotent
            else:
                await self.volumes.settle(drive.uuid)
        await self.volumes.retry_deletes(host)
        await self.clones.resume(host)
        await self.clones.flattens.resume(host)  # overlays left unflattened (an API node restarted)
        await self.volumes.collect_bases()  # bases whose deletion waited for this host
        await self.contexts.push(host=host)  # a restarted agent knows no documents
