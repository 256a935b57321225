"""The API node's side of the hosts: agent connections, drive volumes and server lifecycles.

Handlers decide and record (validation, claims, the first transitional status) in the
database and answer at once; the slow part runs here as a background task that talks to the
host's agent and writes the outcome back.  Agent lifecycle events and reconciliation after a
(re)connection keep the database's statuses in line with what libvirt says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncssh
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import selectinload

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive, Host, Job, JobLink, Server, ServerDrive, utcnow
from orchestrator.drives import IDLE, refresh_mount_status, round_size
from orchestrator.errors import forbidden, notexist
from orchestrator.hosts.connection import AgentConnection, HostAddress, Listener
from orchestrator.networks import lease_addresses, network_plan, release_addresses, reservations_of
from orchestrator.scheduler import Scheduler

log = logging.getLogger(__name__)

ACTIVE = ("starting", "running", "stopping", "paused", "unavailable")


def server_spec(server: Server, drives: dict[str, Drive], networks: list[str | None] | None = None) -> dict[str, Any]:
    """The agent's ``server`` object (agents/protocol.py) for one server row; ``networks`` names
    each NIC's libvirt network (as network.ensure answered; None: a user-mode NIC)."""
    return {
        "uuid": server.uuid, "name": server.name, "cpu": server.cpu, "mem": server.mem, "smp": server.smp,
        "cpus_instead_of_cores": server.cpus_instead_of_cores, "enable_numa": server.enable_numa,
        "hv_relaxed": server.hv_relaxed, "hv_tsc": server.hv_tsc, "cpu_model": server.cpu_model,
        "vnc_password": server.vnc_password, "context": server.context,
        "drives": [{"uuid": a.drive_uuid, "pool": drives[a.drive_uuid].pool, "volume": drives[a.drive_uuid].volume,
                    "media": drives[a.drive_uuid].media, "device": a.device, "dev_channel": a.dev_channel,
                    "boot_order": a.boot_order} for a in server.drive_links],
        "nics": [{"mac": n["mac"], "model": n["model"], "network": networks[i] if networks else None,
                  "boot_order": n["boot_order"]} for i, n in enumerate(server.nics)],
    }


class Cloud(Listener):
    def __init__(self, sessions: async_sessionmaker, scheduler: Scheduler, scratch: Path, *,
                 shutdown_window: float = 60.0, heartbeat: float = 5.0) -> None:
        self.sessions = sessions
        self.scheduler = scheduler
        self.scratch = scratch  # where images in transit between hosts wait
        self.shutdown_window = shutdown_window
        self.heartbeat = heartbeat
        self.connections: dict[str, AgentConnection] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        # Latest domain.stats per running server, polled per host: GETs read it without an RPC.
        self.stats: dict[str, dict[str, Any]] = {}
        # Called with a server's uuid once it has stopped (the consoles close its tunnels).
        self.stop_listeners: list[Callable[[str], Awaitable[None]]] = []
        self.stats_listeners: list[Callable[[], None]] = []  # called when the polled stats change
        # libvirt refuses a volume build while another runs in the same pool ("pool has
        # asynchronous jobs running"): one volume.create at a time per host.
        self.volume_locks: dict[str, asyncio.Lock] = {}
        # Work this process is doing right now; a reconciliation finishes only what nobody is
        # doing (what an API node that died left behind).
        self.busy_jobs: set[str] = set()
        self.booting: set[str] = set()

    # --- lifetime -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.sync_hosts()
        self.spawn(self._watch_hosts())

    async def sync_hosts(self) -> None:
        """Connect hosts registered since (``strato hosts add``), drop removed ones."""
        async with self.sessions() as s:
            hosts = {host.name: host for host in (await s.scalars(select(Host))).all()}
        for name in set(self.connections) - set(hosts):
            await self.disconnect(name)
        for name in set(hosts) - set(self.connections):
            self.connect(hosts[name])

    async def _watch_hosts(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.sync_hosts()
                await self.poll_stats()
            except Exception:
                log.exception("host watch failed; trying again")

    async def poll_stats(self) -> None:
        """Runtime counters of the running servers, and each host's facts (pool space left)."""
        fresh: dict[str, dict[str, Any]] = {}
        for name, connection in list(self.connections.items()):
            if connection.up.is_set():
                with contextlib.suppress(AgentCallError, AgentGone, TimeoutError):
                    fresh.update(await connection.call("domain.stats", timeout=10))
                    facts = await connection.call("host.facts", timeout=10)
                    async with self.sessions.begin() as s:
                        host = await s.get(Host, name)
                        if host is not None and host.facts != facts:
                            host.facts = facts
        if fresh != self.stats:
            self.stats = fresh
            for listener in self.stats_listeners:
                listener()

    def connect(self, host: Host) -> None:
        address = HostAddress(host.name, host.address, tuple(host.agent_command), host.key_file, host.known_hosts)
        connection = AgentConnection(address, self, heartbeat=self.heartbeat)
        self.connections[host.name] = connection
        connection.start()

    async def disconnect(self, name: str) -> None:
        connection = self.connections.pop(name, None)
        if connection is not None:
            await connection.stop()

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for name in list(self.connections):
            await self.disconnect(name)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._logged(work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _logged(self, work: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed")

    async def call(self, host: str, method: str, **params: Any) -> Any:
        connection = self.connections.get(host)
        if connection is None:
            raise AgentGone(f"host {host} is not registered")
        return await connection.call(method, **params)

    # --- host events ------------------------------------------------------------------------------

    async def host_up(self, host: str, facts: dict[str, Any]) -> None:
        async with self.sessions.begin() as s:
            row = await s.get(Host, host)
            if row is None:
                return
            row.facts, row.last_heartbeat = facts, utcnow()
            if row.state == "down":
                row.state = "up"
        await self.reconcile(host)

    async def host_down(self, host: str) -> None:
        async with self.sessions.begin() as s:
            row = await s.get(Host, host)
            if row is not None and row.state == "up":
                row.state = "down"
            for server in (await s.scalars(select(Server).where(Server.host == host,
                                                                 Server.status.in_(ACTIVE)))).all():
                server.status = "unavailable"
            for drive in (await s.scalars(select(Drive).where(Drive.host == host, Drive.status.in_(IDLE)))).all():
                drive.status = "unavailable"

    async def agent_event(self, host: str, event: dict[str, Any]) -> None:
        params = event.get("params", {})
        state, uuid = params.get("state"), params.get("uuid")
        if event.get("event") != "domain.lifecycle" or state is None:
            return
        if state == "stopped":
            await self.finish_stop(uuid, host)
            return
        async with self.sessions.begin() as s:
            server = await s.get(Server, uuid)
            if server is None or server.host != host:
                log.warning("host %s: event for a domain Strato does not know: %s", host, params)
                return
            if state == "running" and server.status in ("starting", "unavailable", "paused"):
                server.status = "running"
            elif state == "paused":
                server.status = "paused"

    async def reconcile(self, host: str) -> None:
        """Compare the database with what the host's libvirt says (after any (re)connection)."""
        domains = {d["uuid"]: d for d in await self.call(host, "domain.list")}
        volumes = {v["name"] for v in await self.call(host, "volume.list")}
        async with self.sessions.begin() as s:
            servers = (await s.scalars(select(Server).where(Server.host == host))).all()
            known = {server.uuid for server in servers}
            gone = []
            for server in servers:
                domain = domains.get(server.uuid)
                if domain is not None and domain["state"] == "running":
                    if server.status != "running":
                        server.status = "running"
                    if domain.get("active_since"):
                        server.active_since = datetime.fromisoformat(domain["active_since"])
                elif server.status != "starting" or domain is None or server.uuid not in self.booting:
                    gone.append(server.uuid)
            # A guest of a server the database says is stopped (its boot finished after the API node
            # that asked for it died, and the claim was released): it must not outlive its claim.
            stray = set((await s.scalars(select(Server.uuid).where(
                Server.uuid.in_(set(domains) - known), Server.status == "stopped"))).all())
            for uuid in set(domains) - known - stray:
                # Never destroyed silently: an operator decides what an unknown guest is.
                log.warning("host %s runs domain %s that Strato does not know; left alone", host, uuid)
            unsettled = (await s.scalars(select(Drive).where(Drive.host == host, Drive.status.in_(
                ("creating", "unavailable", "resizing"))))).all()
        for uuid in gone:
            await self.finish_stop(uuid, host)
        for uuid in stray:
            log.warning("host %s runs domain %s of a stopped server; removing it", host, uuid)
            with contextlib.suppress(AgentCallError, AgentGone):
                await self.call(host, "domain.undefine", uuid=uuid)
        for drive in unsettled:
            if drive.status == "creating" and drive.volume not in volumes:
                self.spawn(self.create_volume(drive.uuid))
            elif drive.status == "resizing":
                self.spawn(self.resize_volume(drive.uuid))  # growing to the recorded size is idempotent
            else:
                await self._settle_drive(drive.uuid)
        await self.resume_clones(host)

    async def resume_clones(self, host: str) -> None:
        """Drive clones a dead API node left ``started``: copy again once both hosts are up."""
        async with self.sessions() as s:
            jobs = (await s.scalars(select(Job).where(Job.state == "started", Job.operation == "drive_clone"))).all()
            orphans = []
            for job in jobs:
                if job.uuid in self.busy_jobs:
                    continue
                drives = [await s.get(Drive, u.rstrip("/").rsplit("/", 1)[1]) for u in job.resources]
                hosts = {d.host for d in drives if d is not None and d.host is not None}
                connected = all(h in self.connections and self.connections[h].up.is_set() for h in hosts)
                if host in hosts and connected:
                    orphans.append((job.uuid, drives[1]))
        for job_uuid, target in orphans:
            self.busy_jobs.add(job_uuid)
            if target is not None and target.host is not None:  # a partial copy goes first
                with contextlib.suppress(AgentCallError, AgentGone):
                    await self.call(target.host, "volume.delete", pool=target.pool, name=target.volume)
            log.info("job %s: resuming a drive clone left unfinished", job_uuid)
            self.spawn(self.run_clone(job_uuid))

    # --- drives ---------------------------------------------------------------------------------

    async def create_volume(self, drive_uuid: str) -> None:
        async with self.sessions() as s:
            drive = await s.get(Drive, drive_uuid)
        if drive is None or drive.host is None:
            return
        try:
            async with self.volume_locks.setdefault(drive.host, asyncio.Lock()):
                volume = await self.call(drive.host, "volume.create", pool=drive.pool, name=drive.volume,
                                         size=drive.size)
        except (AgentCallError, AgentGone) as err:
            log.error("drive %s: volume not created: %s", drive_uuid, err)
            return  # stays "creating"; the host's next reconciliation retries
        async with self.sessions.begin() as s:
            row = await s.get(Drive, drive_uuid)
            if row is not None:
                row.pool = volume["pool"]
        await self._settle_drive(drive_uuid)

    async def import_volume(self, drive_uuid: str, source: Path) -> None:
        """Import an uploaded image into the drive's volume; remote hosts receive it over SFTP."""
        async with self.sessions() as s:
            drive = await s.get(Drive, drive_uuid)
        try:
            if drive is None or drive.host is None:
                return
            volume = await self._import_file(drive, source)
        except (AgentCallError, AgentGone, OSError, asyncssh.Error) as err:
            log.error("drive %s: upload not imported: %s", drive_uuid, err)
            return  # stays "uploading": the client may delete it and try again
        finally:
            source.unlink(missing_ok=True)
        async with self.sessions.begin() as s:
            row = await s.get(Drive, drive_uuid)
            if row is not None:
                row.pool, row.size = volume["pool"], max(row.size, round_size(volume["capacity"]))
        await self._settle_drive(drive_uuid)

    async def _import_file(self, drive: Drive, source: Path) -> dict[str, Any]:
        """``volume.import`` of a file on the API node into the drive's host (SFTP when remote)."""
        connection = self.connections[drive.host]  # type: ignore[index]
        remote = source
        if not connection.address.is_local:
            await connection.up.wait()
            assert connection.ssh is not None
            remote = Path("/tmp") / f"strato-import-{drive.uuid}.img"
            async with connection.ssh.start_sftp_client() as sftp:
                await sftp.put(str(source), str(remote))
        try:
            async with self.volume_locks.setdefault(drive.host, asyncio.Lock()):  # type: ignore[arg-type]
                return await self.call(drive.host, "volume.import", pool=drive.pool,  # type: ignore[arg-type]
                                       name=drive.volume, source_path=str(remote))
        finally:
            if remote != source and connection.ssh is not None:
                async with connection.ssh.start_sftp_client() as sftp:
                    await sftp.remove(str(remote))

    async def run_clone(self, job_uuid: str) -> None:
        self.busy_jobs.add(job_uuid)
        try:
            await self._run_clone(job_uuid)
        finally:
            self.busy_jobs.discard(job_uuid)

    async def _run_clone(self, job_uuid: str) -> None:
        """Copy a ``drive_clone`` job's source volume into its destination, then settle both."""
        async with self.sessions() as s:
            job = await s.get(Job, job_uuid)
            if job is None:
                return
            source_uuid, target_uuid = (u.rstrip("/").rsplit("/", 1)[1] for u in job.resources)
            source, target = await s.get(Drive, source_uuid), await s.get(Drive, target_uuid)
        ok = False
        try:
            if source is None or target is None or source.host is None or target.host is None:
                raise AgentGone("source or destination is gone")
            if (target.host, target.pool) == (source.host, source.pool):
                async with self.volume_locks.setdefault(source.host, asyncio.Lock()):
                    volume = await self.call(source.host, "volume.clone", pool=source.pool, source=source.volume,
                                             name=target.volume, size=target.size)
            else:  # another storage host or pool (avoid, storage type): the image travels as a file
                volume = await self._transfer(source, target)
            ok = True
        except (AgentCallError, AgentGone, OSError, asyncssh.Error) as err:
            log.error("job %s: clone failed: %s", job_uuid, err)
        async with self.sessions.begin() as s:
            job = await s.get(Job, job_uuid)
            target = await s.get(Drive, target_uuid)
            if ok and target is not None:
                target.pool = volume["pool"]
            elif target is not None:  # nothing half-done is left: the failed copy goes away
                await s.execute(delete(ServerDrive).where(ServerDrive.drive_uuid == target_uuid))
                await s.delete(target)
                self.spawn(self.delete_volumes([(target.host, target.pool, target.volume)]))
            if job is not None:
                job.state, job.progress = ("success", 100) if ok else ("failed", job.progress)
                await s.flush()
                await self._finish_parent(s, job)
        await self._settle_drive(target_uuid)
        if not await self._still_cloning(source_uuid):
            await self._settle_drive(source_uuid)

    async def _still_cloning(self, drive_uuid: str) -> bool:
        """Whether another running clone job reads this drive."""
        async with self.sessions() as s:
            jobs = (await s.scalars(select(Job).join(JobLink, JobLink.job_uuid == Job.uuid).where(
                JobLink.res_uuid == drive_uuid, Job.state == "started", Job.operation == "drive_clone"))).all()
        return any(job.resources[0].endswith(f"/{drive_uuid}/") for job in jobs)

    async def _finish_parent(self, s: Any, job: Job) -> None:
        if job.parent_uuid is None:
            return
        parent = await s.scalar(select(Job).where(Job.uuid == job.parent_uuid).options(selectinload(Job.children)))
        states = [child.state for child in parent.children]
        parent.progress = 100 * sum(state != "started" for state in states) // len(states)
        if "started" in states:
            return
        parent.state = "failed" if "failed" in states else "success"
        server = await s.get(Server, parent.resources[1].rstrip("/").rsplit("/", 1)[1])
        if parent.state == "success" and server is not None and server.auto_start:
            self.spawn(self.auto_start(server.uuid))

    async def auto_start(self, uuid: str) -> None:
        """A clone with ``auto_start`` starts once its drives are copied (spec §15)."""
        await asyncio.sleep(0.5)  # let the clone's drives settle first
        await self.place_and_start(uuid, [])

    async def _transfer(self, source: Drive, target: Drive) -> dict[str, Any]:
        """Copy a volume between storage hosts: fetch the image file, import it on the target."""
        listing = await self.call(source.host, "volume.list", pool=source.pool)  # type: ignore[arg-type]
        path = next(v["path"] for v in listing if v["name"] == source.volume)
        connection = self.connections[source.host]  # type: ignore[index]
        local = Path(path)
        if not connection.address.is_local:
            local = Path(self.scratch, f"{target.uuid}.img")
            local.parent.mkdir(parents=True, exist_ok=True)
            assert connection.ssh is not None
            async with connection.ssh.start_sftp_client() as sftp:
                await sftp.get(path, str(local))
        try:
            return await self._import_file(target, local)
        finally:
            if local != Path(path):
                local.unlink(missing_ok=True)

    async def resize_volume(self, drive_uuid: str) -> None:
        async with self.sessions() as s:
            drive = await s.get(Drive, drive_uuid)
        if drive is not None and drive.host is not None:
            try:
                await self.call(drive.host, "volume.resize", pool=drive.pool, name=drive.volume, size=drive.size)
            except (AgentCallError, AgentGone) as err:
                log.error("drive %s: resize failed: %s", drive_uuid, err)
        await self._settle_drive(drive_uuid)

    async def _settle_drive(self, drive_uuid: str) -> None:
        """A drive whose storage work ended returns to ``mounted`` / ``unmounted``."""
        async with self.sessions.begin() as s:
            drive = await s.get(Drive, drive_uuid)
            if drive is None:
                return
            drive.status = "unmounted"
            await s.flush()
            await refresh_mount_status(s, {drive_uuid})

    async def delete_volumes(self, volumes: list[tuple[str | None, str | None, str | None]]) -> None:
        for host, pool, name in volumes:
            if host is None or name is None:
                continue
            try:
                await self.call(host, "volume.delete", pool=pool, name=name)
            except (AgentCallError, AgentGone) as err:
                log.error("volume %s/%s on %s not deleted: %s", pool, name, host, err)

    # --- servers --------------------------------------------------------------------------------

    async def place_and_start(self, uuid: str, avoid: Sequence[str]) -> None:
        """Check, place (claim) and mark ``starting`` in one transaction; boot in the background."""
        async with self.scheduler.lock, self.sessions.begin() as s:
            server = await s.get(Server, uuid)
            if server is None:
                raise notexist("Server")
            if server.status != "stopped":
                raise forbidden(f'Cannot start server in state "{server.status}"; it must be "stopped"')
            drives = (await s.scalars(select(Drive).join(ServerDrive, ServerDrive.drive_uuid == Drive.uuid)
                                      .where(ServerDrive.server_uuid == uuid))).all()
            for drive in drives:
                library = drive.owner_uuid is None and drive.status in IDLE  # a library cdrom (§23)
                if (drive.status != "mounted" and not library) or drive.host is None:
                    raise forbidden(f'Drive {drive.uuid} is not ready to boot (status "{drive.status}")')
            await self.scheduler.place_server(s, server, [(d.host, d.pool) for d in drives], avoid)
            await lease_addresses(s, server)  # 503 when a DHCP pool is exhausted
            server.status = "starting"
        self.booting.add(uuid)
        self.spawn(self._boot(uuid))

    async def _boot(self, uuid: str) -> None:
        try:
            await self.start_server(uuid)
        finally:
            self.booting.discard(uuid)

    async def start_server(self, uuid: str) -> None:
        """Boot a server already placed (status ``starting``, ``host`` claimed)."""
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
            domain = await self.call(host, "domain.start", server=server_spec(server, drives, networks))
        except (AgentCallError, AgentGone) as err:
            log.error("server %s did not start on %s: %s", uuid, host, err)
            await self.finish_stop(uuid, host)  # boot failure: back to stopped, claim released
            return
        async with self.sessions.begin() as s:
            server = await s.get(Server, uuid)
            # The lifecycle event may have marked it running already.
            booted = server is not None and server.host == host and server.status in ("starting", "running")
            if booted:
                server.status = "running"
                server.active_since = datetime.fromisoformat(domain["active_since"]) if domain.get(
                    "active_since") else utcnow()
        if not booted:  # stopped (or deleted) while booting: the guest must not outlive its claim
            with contextlib.suppress(AgentCallError, AgentGone):
                await self.call(host, "domain.undefine", uuid=uuid)

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
                names[network["name"]] = (await self.call(host, "network.ensure", network=network))["name"]
            if address is not None:
                await self.call(host, "network.reserve", network=network["name"], mac=mac, ip=address)
            out.append(names[network["name"]])
        return out

    async def stop_server(self, uuid: str, host: str) -> None:
        with contextlib.suppress(AgentCallError):  # notfound: already gone
            await self.call(host, "domain.stop", uuid=uuid)
        await self.finish_stop(uuid, host)

    async def restart_server(self, uuid: str, host: str) -> None:
        await self.call(host, "domain.reset", uuid=uuid)

    async def shutdown_server(self, uuid: str, host: str) -> None:
        """ACPI power button every second for the window; a guest that ignores it stays running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_window
        while loop.time() < deadline:
            try:
                await self.call(host, "domain.shutdown", uuid=uuid)
            except AgentCallError:
                break  # the domain is gone: it shut down
            await asyncio.sleep(1)
            async with self.sessions() as s:
                server = await s.get(Server, uuid)
            if server is None or server.status != "stopping":
                return
        domains = {d["uuid"]: d for d in await self.call(host, "domain.list")}
        if domains.get(uuid, {}).get("state") == "running":
            async with self.sessions.begin() as s:
                server = await s.get(Server, uuid)
                if server is not None and server.status == "stopping":
                    server.status = "running"
        else:
            await self.finish_stop(uuid, host)

    async def finish_stop(self, uuid: str, host: str) -> None:
        """The domain is off: status ``stopped``, claim released, definition removed."""
        async with self.sessions() as s:
            server = await s.get(Server, uuid)
            if server is None or server.host != host:
                return
            reservations = await reservations_of(s, server)
        # Reservations go first, so a client that sees "stopped" sees them gone (idempotent when
        # the lifecycle event and the stop request both get here).
        for network, mac in reservations:
            with contextlib.suppress(AgentCallError, AgentGone):
                await self.call(host, "network.release", network=network, mac=mac)
        async with self.sessions.begin() as s:
            server = await s.get(Server, uuid)
            if server is None or server.host != host:
                return
            server.status, server.host, server.active_since = "stopped", None, None
            await release_addresses(s, server)
        for listener in self.stop_listeners:
            await listener(uuid)
        with contextlib.suppress(AgentCallError, AgentGone):
            await self.call(host, "domain.undefine", uuid=uuid)
