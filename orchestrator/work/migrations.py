"""Live migration of running servers between hosts, as operators queue it (``strato servers migrate``,
``strato hosts drain``).

The command line queues a ``server_migrate`` job in the store (``params.queued``) and wakes the API
nodes (orchestrator/db/wake.py); one of them, which holds the host connections, picks it up (the
job leased to it, orchestrator/work/leases.py: while that node lives no other touches the job,
its server's lifecycle events or its record) and runs it: the scheduler claims
a target (capacity, live migration, the server's pools, its avoid list), the target prepares (its
NICs' networks, the context document, the volumes copy-storage fills), the source migrates peer to
peer, and the store moves the server, its claim and its copied drives to the target.  The server
stays ``running`` throughout; a failure leaves it running on the source with the job ``failed``
saying why.  Tunnels to its display and console close once it moved: the next one opens on the
new host.  A migration whose node died (its lease expired) or restarted ends failed, and the
store follows its guest to the host libvirt left it on (libvirt finishes a peer-to-peer migration
without the node that asked for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import selectinload

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive, Host, Job, JobLease, Server, ServerDrive
from orchestrator.db.wake import Wakeups
from orchestrator.domain.drives import refresh_mount_status
from orchestrator.domain.errors import DomainError
from orchestrator.domain.jobs import Reasons, finish
from orchestrator.domain.lifecycle import Status
from orchestrator.domain.networks import network_plan, reservations_of
from orchestrator.domain.placement import Scheduler, drop_claim, move_claim, recount
from orchestrator.domain.transitions import record_stopped
from orchestrator.hosts.pool import Hosts
from orchestrator.hosts.spec import server_spec
from orchestrator.work.contexts import ContextWork
from orchestrator.work.leases import Cluster
from orchestrator.work.servers import ServerWork
from orchestrator.work.tasks import Tasks
from orchestrator.work.volumes import HOST_FAILURES

log = logging.getLogger(__name__)

OPERATION = "server_migrate"
EVACUATE = "server_evacuate"  # a cold restart elsewhere of a server whose host is dead
QUEUE_POLL = 1.0  # seconds between looks for queued migrations that no wake-up announced (started jobs: indexed)
ORPHANED = "The API node running the migration stopped before it ended; the server runs where its host says"
GONE = "The server stopped unexpectedly: its guest ran on neither host when its migration's API node died"
LOCATE_WAIT = 120.0  # seconds a dead node's migration waits for its two hosts to connect, to locate its guest
MIGRATE_TIMEOUT = 3600.0  # seconds one migration may stream (copy-storage of a large drive)


class MigrationWork:
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts, tasks: Tasks, scheduler: Scheduler,
                 reasons: Reasons, contexts: ContextWork, servers: ServerWork, cluster: Cluster,
                 wakeups: Wakeups | None = None) -> None:
        self.sessions = sessions
        self.cluster = cluster
        self.wakeups = wakeups
        self.hosts = hosts
        self.tasks = tasks
        self.scheduler = scheduler
        self.reasons = reasons
        self.contexts = contexts
        self.servers = servers
        self.moving: set[str] = set()  # servers this API node migrates now

    async def start(self) -> None:
        """After the cluster joined (``cluster.alive`` known)."""
        if self.wakeups is not None:
            await self.wakeups.start()
        await self.orphaned()
        self.cluster.vanished.append(lambda _nodes: self.orphaned())
        await self.tasks.spawn(self._watch_queue(), "migration queue")

    async def stop(self) -> None:
        if self.wakeups is not None:
            await self.wakeups.stop()

    async def _watch_queue(self) -> None:
        while True:
            try:
                await self.pick_up()
            except Exception:
                log.exception("looking for queued migrations failed; trying again")
            if self.wakeups is not None:
                await self.wakeups.wait(QUEUE_POLL)
            else:
                await asyncio.sleep(QUEUE_POLL)

    async def orphaned(self) -> None:
        """Picked-up migrations whose node is not alive (this process before a restart, a node that
        died) end failed, and the store follows their guests to where libvirt runs them; those that
        live nodes run are theirs to finish."""
        lost: list[tuple[str, dict[str, Any]]] = []
        async with self.sessions.begin() as s:
            rows = (await s.execute(select(Job, JobLease.node).outerjoin(JobLease, JobLease.job_uuid == Job.uuid)
                                    .where(Job.operation.in_((OPERATION, EVACUATE)), Job.state == "started")
                                    .with_for_update(of=Job, skip_locked=True))).all()
            for job, node in rows:
                if not (job.params or {}).get("queued") and node not in self.cluster.alive:
                    log.warning("%s %s: its node %s is gone; failed", job.operation, job.uuid, node)
                    finish(job, ORPHANED)
                    if job.operation == OPERATION and job.source_uuid and (job.params or {}).get("target"):
                        lost.append((job.source_uuid, job.params or {}))
        for uuid, params in lost:
            # Reconciliation leaves a moving server alone: until located, it might count the guest
            # gone from the source (it is on the target) and then remove it from the target as a stray.
            self.moving.add(uuid)
            await self.tasks.spawn(self._locate(uuid, params), f"locate {uuid}")

    async def _locate(self, uuid: str, params: dict[str, Any]) -> None:
        """The guest of a migration whose node died ends on its source or its target (libvirt goes
        on with the migration, or ends it, without that node): once both hosts are connected and
        only one of them has the domain, the store says which."""
        source, target = params["source"], params["target"]
        try:
            deadline = time.monotonic() + LOCATE_WAIT
            while True:
                states: dict[str, str] = {}
                answered = 0
                for host in (source, target):
                    with contextlib.suppress(*HOST_FAILURES):
                        domains = await self.hosts.call(host, "domain.list")
                        answered += 1
                        for domain in domains:
                            if domain["uuid"] == uuid:
                                states[host] = domain["state"]
                if (answered == 2 and len(states) < 2) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)  # a host not connected yet, or the migration still under way
            running = [host for host, state in states.items() if state == "running"]
            if not running and answered == 2:
                await self.servers.finish_stop(uuid, source, GONE)
                return
            async with self.sessions.begin() as s:
                server = await s.get(Server, uuid)
                if server is None or server.host != source or running != [target]:
                    return  # where the store has it already
                server.host = target
                for drive in (await s.scalars(select(Drive).where(Drive.uuid.in_(params.get("copy") or [])))).all():
                    drive.host = target
                await recount(s, source)
                await recount(s, target)
            log.warning("server %s: its migration's API node died after the guest moved to %s; recorded there",
                        uuid, target)
        finally:
            self.moving.discard(uuid)

    async def moving_elsewhere(self, s: Any, uuid: str, but: str | None = None) -> bool:
        """A live node other than this one migrates the server (a picked-up job leased to it; not ``but``)."""
        others = self.cluster.alive - {self.cluster.node}
        if not others:
            return False
        jobs = (await s.scalars(select(Job).join(JobLease, JobLease.job_uuid == Job.uuid).where(
            Job.operation == OPERATION, Job.state == "started", Job.source_uuid == uuid,
            JobLease.node.in_(others)))).all()
        return any(not (job.params or {}).get("queued") and job.uuid != but for job in jobs)

    async def pick_up(self) -> None:
        """Start the migrations queued since the last look (each by one API node: on PostgreSQL
        the rows another node is picking up are skipped, SQLite has one node)."""
        async with self.sessions.begin() as s:
            jobs = (await s.scalars(select(Job).where(Job.operation.in_((OPERATION, EVACUATE)),
                                                      Job.state == "started")
                                    .with_for_update(skip_locked=True))).all()
            picked = [job.uuid for job in jobs if (job.params or {}).get("queued")]
            for job in jobs:
                if job.uuid in picked:  # this node's now: no other node fails it while this one lives
                    job.params = {**(job.params or {}), "queued": False}
                    lease = await s.get(JobLease, job.uuid)
                    if lease is None:
                        s.add(JobLease(job_uuid=job.uuid, node=self.cluster.node))
                    else:
                        lease.node = self.cluster.node
        kinds = {job.uuid: job.operation for job in jobs}
        for uuid in picked:
            work = self._run(uuid) if kinds[uuid] == OPERATION else self._evacuate(uuid)
            await self.tasks.spawn(work, f"{kinds[uuid]} ({uuid})")

    async def _evacuate(self, job_uuid: str) -> None:
        """The server's host is dead: record it stopped there and start it elsewhere, when every
        drive is on a pool another host sees (shared storage); otherwise the job says which is not."""
        async with self.sessions.begin() as s:
            job = await s.get(Job, job_uuid)
            server = await s.get(Server, job.source_uuid) if job is not None else None
            if job is None or server is None or server.host is None:
                if job is not None:
                    finish(job, "The server runs on no host")
                return
            dead = server.host
            if self.hosts.is_up(dead):
                finish(job, f"Host {dead} is connected: migrate its servers (strato hosts drain) instead")
                return
            drives = (await s.scalars(select(Drive).join(ServerDrive, ServerDrive.drive_uuid == Drive.uuid)
                                      .where(ServerDrive.server_uuid == server.uuid))).all()
            loads = await self.scheduler.loads(s, ("up",))
            dead_pools = {load.name: load for load in await self.scheduler.loads(s, ("down", "draining", "up"),
                                                                                  [dead])}.get(dead)
            keepers: dict[str, str] = {}  # drive → a live host that sees its (shared) pool
            for d in drives:
                if d.host != dead:
                    continue
                path = dead_pools.pools.get(d.pool or "", {}).get("path") if dead_pools else None
                keeper = next((load.name for load in loads if path and load.sees(d.pool or "", path)), None)
                if keeper is not None:
                    keepers[d.uuid] = keeper
            stuck = [d.uuid for d in drives if d.host == dead and d.uuid not in keepers]
            if stuck:
                finish(job, f"Drives {', '.join(stuck)} are on {dead}'s own storage: the server cannot start elsewhere")
                return
            for d in drives:  # a shared pool's volume is served by any host that mounts it
                if d.uuid in keepers:
                    d.host, d.status = keepers[d.uuid], "unmounted"
            await s.flush()
            await refresh_mount_status(s, set(keepers))
            await record_stopped(s, server)
            avoid = list(server.avoid)
        try:
            await self.servers.start(server.uuid, avoid)
        except DomainError as err:
            async with self.sessions.begin() as s:
                job = await s.get(Job, job_uuid)
                if job is not None:
                    finish(job, f"Stopped on {dead}, not started elsewhere: {err.message}")
            return
        async with self.sessions.begin() as s:
            job = await s.get(Job, job_uuid)
            row = await s.get(Server, server.uuid)
            if job is not None:
                job.params = {**(job.params or {}), "source": dead, "target": row.host if row else None}
                finish(job)

    async def _run(self, job_uuid: str) -> None:
        try:
            await self._migrate(job_uuid)
        except Exception:
            async with self.sessions.begin() as s:
                job = await s.get(Job, job_uuid)
                if job is not None and job.state == "started":
                    finish(job, "Internal error while migrating the server (see the operator's log)")
            raise

    async def _migrate(self, job_uuid: str) -> None:
        async with self.scheduler.placing(self.sessions) as s:
            job = await s.get(Job, job_uuid)
            if job is None:
                return
            server = await s.scalar(select(Server).where(Server.uuid == job.source_uuid)
                                    .options(selectinload(Server.drive_links)))
            if (server is None or server.status != Status.RUNNING or server.host is None or server.uuid in self.moving
                    or await self.moving_elsewhere(s, server.uuid, but=job_uuid)):
                finish(job, "The server is not running" if server is None or server.status != Status.RUNNING
                       else "The server is moving already")
                return
            drives = {d.uuid: d for d in (await s.scalars(select(Drive).where(
                Drive.uuid.in_([a.drive_uuid for a in server.drive_links])))).all()}
            try:
                target, copied = await self.scheduler.place_migration(
                    s, server, [(d.host, d.pool) for d in drives.values() if d.host and d.pool],
                    (job.params or {}).get("to"))
            except DomainError as err:
                finish(job, err.message)
                return
            source = server.host
            endpoint = ((await s.get(Host, target.name)).facts or {}).get("migration")  # type: ignore[union-attr]
            job.params = {**(job.params or {}), "source": source, "target": target.name,
                          "copy": sorted(d.uuid for d in drives.values() if (d.host, d.pool) in copied)}
            plan = await network_plan(s, server)
            self.moving.add(server.uuid)
        try:
            await self._move(job_uuid, server, drives, source, target.name, endpoint, copied, plan)
        finally:
            self.moving.discard(server.uuid)

    async def _move(self, job_uuid: str, server: Server, drives: dict[str, Drive], source: str, target: str,
                    endpoint: dict[str, str], copied: set[tuple[str, str]], plan: list[Any]) -> None:
        began = time.monotonic()
        copies = [d for d in drives.values() if (d.host, d.pool) in copied]
        create: list[dict[str, Any]] = []
        spec = server_spec(server, drives)
        try:
            sizes = {(d.pool, v["name"]): v["capacity"] for d in copies
                     for v in await self.hosts.call(source, "volume.list", pool=d.pool) if v["name"] == d.volume}
            create = [{"pool": d.pool, "name": d.volume, "size": sizes[(d.pool, d.volume)]} for d in copies]
            networks = await self.servers.connect_nics(target, [n["mac"] for n in server.nics], plan)
            spec = server_spec(server, drives, networks)
            await self.contexts.push_one(server.uuid, host=target)  # there before the guest asks again
            prepared = await self.hosts.call(target, "migrate.prepare", timeout=600, server=spec, create=create)
            streaming = time.monotonic()
            await self.hosts.call(source, "migrate.out", timeout=MIGRATE_TIMEOUT, uuid=server.uuid,
                                  target_uri=endpoint["uri"], target_address=endpoint["address"],
                                  target_xml=prepared["xml"], copy_drives=[d.uuid for d in copies])
            streamed = time.monotonic()
            await self.hosts.call(target, "migrate.done", uuid=server.uuid, context=server.context)
        except (*HOST_FAILURES, KeyError, ValueError) as err:
            log.error("server %s did not move from %s to %s: %s", server.uuid, source, target, err)
            with contextlib.suppress(*HOST_FAILURES):
                await self.hosts.call(target, "migrate.abort", server=spec, create=create)
            async with self.sessions.begin() as s:
                row = await s.get(Server, server.uuid)
                if row is not None:
                    await drop_claim(s, row, target)
                job = await s.get(Job, job_uuid)
                if job is not None:
                    finish(job, f"Not moved to {target}: {self.reasons.of(err)}")
            return
        async with self.sessions() as s:
            reservations = await reservations_of(s, server)
        for network, mac in reservations:  # the source's DHCP keeps no lease of a guest gone
            with contextlib.suppress(AgentCallError, AgentGone):
                await self.hosts.call(source, "network.release", network=network, mac=mac)
        async with self.sessions.begin() as s:
            row = await s.get(Server, server.uuid)
            if row is not None:
                await move_claim(s, row, source, target)
            for drive in copies:
                moved = await s.get(Drive, drive.uuid)
                if moved is not None:
                    moved.host = target
            job = await s.get(Job, job_uuid)
            if job is not None:
                finish(job)
        for drive in copies:  # copy-storage leaves the source's volume behind
            with contextlib.suppress(*HOST_FAILURES):
                await self.hosts.call(source, "volume.delete", pool=drive.pool, name=drive.volume)
        for listener in self.servers.stop_listeners:  # its tunnels lead to the source: they close
            await listener(server.uuid)
        log.info("server %s moved from %s to %s: prepared in %.2f s, migrated in %.2f s, recorded in %.2f s",
                 server.uuid, source, target, streaming - began, streamed - streaming, time.monotonic() - streamed)
