"""``strato users disable|enable|delete``: an operator shuts an account, opens it again, removes it.

Disabling is one flag in the store: every request reads it (``Authenticator.enabled``), and the
running API node ends the user's open sessions, feed sockets and console tunnels within a second.
Deleting refuses while the user owns anything; ``--purge`` first disables the user (nothing new
appears meanwhile), then stops their servers and deletes servers and drives with the domain code
the API's DELETEs use, and the volumes on the hosts through each host's agent, as the API node's
background work does (reached over connections of this command's own).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agents.client import AgentCallError
from orchestrator.api import drives as drives_api
from orchestrator.api import servers as servers_api
from orchestrator.api.context import context_document
from orchestrator.api.resource import owned_rows
from orchestrator.config import Config
from orchestrator.db.engine import make_engine, make_sessionmaker, migrate
from orchestrator.db.models import Drive, Ip, Job, KeyPair, Server, Tag, User, Vlan
from orchestrator.domain.drives import Volume, delete_drives
from orchestrator.domain.errors import DomainError
from orchestrator.domain.lifecycle import Status
from orchestrator.domain.placement import Scheduler
from orchestrator.domain.servers import delete_servers
from orchestrator.domain.transitions import record_stopped
from orchestrator.domain.uploads import Uploads
from orchestrator.hosts.pool import Hosts
from orchestrator.work.background import Work
from orchestrator.work.leases import Cluster, new_node_id

# What a user can own, by the word the refusal uses.
OWNED: dict[str, Any] = {"servers": Server, "drives": Drive, "ips": Ip, "vlans": Vlan, "tags": Tag,
                         "keypairs": KeyPair}
PURGE_WAIT = 300.0  # seconds a purge waits for drives busy with a copy, resize or creation


async def _user(s: AsyncSession, email: str) -> User:
    user = await s.scalar(select(User).where(User.email == email))
    if user is None:
        raise ValueError(f"no user {email}")
    return user


async def set_disabled(s: AsyncSession, email: str, disabled: bool) -> dict[str, Any]:
    user = await _user(s, email)
    user.disabled = disabled
    return {"email": user.email, "uuid": user.uuid, "disabled": disabled}


async def holdings(s: AsyncSession, user: str) -> dict[str, int]:
    counts = {name: await s.scalar(select(func.count()).select_from(model).where(model.owner_uuid == user)) or 0
              for name, model in OWNED.items()}
    return {name: n for name, n in counts.items() if n}


async def delete_user(config: Config, email: str, purge: bool) -> dict[str, Any]:
    engine = make_engine(config.db_url)
    try:
        await migrate(engine)
        sessions = make_sessionmaker(engine)
        async with sessions.begin() as s:
            user = await _user(s, email)
            uuid, owned = user.uuid, await holdings(s, user.uuid)
            if owned and not purge:
                listed = ", ".join(f"{n} {name}" for name, n in owned.items())
                raise ValueError(f"{email} owns {listed}: delete them first, or delete the user with --purge")
            user.disabled = True  # from here on nothing of theirs changes but what this command does
        if owned:
            await _purge(config, sessions, uuid)
        async with sessions.begin() as s:
            await s.execute(delete(Job).where(Job.owner_uuid == uuid))
            await s.execute(delete(User).where(User.uuid == uuid))  # tokens and quota cascade
        return {"email": email, "uuid": uuid, "deleted": True, "purged": owned}
    finally:
        await engine.dispose()


async def _purge(config: Config, sessions: async_sessionmaker, user: str) -> None:
    hosts = Hosts(sessions, heartbeat=config.heartbeat)
    # A Work of its own, never started: only its stop and delete steps run (no leases are taken).
    cluster = Cluster(sessions, new_node_id(), lease=config.node_lease)
    work = Work.build(sessions, hosts, Scheduler(config.cpu_overcommit, config.mem_overcommit, config.storage_pools),
                      cluster, context_document=context_document, data_dir=config.data_dir,
                      shutdown_window=config.shutdown_window, heartbeat=config.heartbeat)
    await hosts.sync()
    try:
        async with sessions() as s:  # every volume's host answers, or nothing is deleted (no orphans)
            storage = set((await s.scalars(select(Drive.host).where(Drive.owner_uuid == user,
                                                                     Drive.host.is_not(None)))).all())
        for host in sorted(storage):
            await _wait_up(hosts, host)
        await _stop_servers(sessions, hosts, work, user)
        volumes, drives = await _delete_rows(sessions, user)
        await work.volumes.delete(volumes)
        uploads = Uploads(config.upload_dir or config.data_dir / "uploads", sessions, cluster.node)
        for drive in drives:  # an upload in progress on the API node: its chunk file goes too
            await uploads.forget(drive)
    finally:
        await work.stop()
        await hosts.stop()


async def _wait_up(hosts: Hosts, host: str, timeout: float = 60.0) -> None:
    connection = hosts.connections.get(host)
    if connection is None:
        raise ValueError(f"host {host} is not registered")
    try:
        await asyncio.wait_for(connection.up.wait(), timeout)
    except TimeoutError:
        raise ValueError(f"host {host} did not answer within {timeout:.0f} s; nothing of it was purged") from None


async def _stop_servers(sessions: async_sessionmaker, hosts: Hosts, work: Work, user: str) -> None:
    """Every server not stopped is stopped the way a ``do=stop`` ends: domain off, addresses
    released, claim on the host given back, definition removed."""
    async with sessions() as s:
        live = (await s.execute(select(Server.uuid, Server.host).where(
            Server.owner_uuid == user, Server.status != Status.STOPPED))).all()
    for uuid, host in live:
        if host is not None:
            await _wait_up(hosts, host)
            with contextlib.suppress(AgentCallError):  # not defined there: nothing runs
                await hosts.call(host, "domain.stop", uuid=uuid)
            await work.servers.finish_stop(uuid, host)
        async with sessions.begin() as s:  # a server that never reached a host (starting, unavailable)
            server = await s.get(Server, uuid)
            if server is not None and server.status != Status.STOPPED:
                await record_stopped(s, server)


async def _delete_rows(sessions: async_sessionmaker, user: str) -> tuple[list[Volume], list[str]]:
    """Servers with all their drives, the other drives, then the rest; the volumes to delete
    and the drives' uuids."""
    volumes: list[Volume] = []
    drive_uuids: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PURGE_WAIT
    while True:
        try:
            async with sessions.begin() as s:
                drive_uuids = list((await s.scalars(select(Drive.uuid).where(Drive.owner_uuid == user))).all())
                # Loaded as the API's DELETEs load them (the same relations).
                servers = (await s.scalars(owned_rows(Server, servers_api.RELATED, user))).all()
                batch = await delete_servers(s, list(servers), ("disk", "cdrom")) if servers else []
                drives = (await s.scalars(owned_rows(Drive, drives_api.RELATED, user))).all()
                batch += await delete_drives(s, list(drives)) if drives else []
            volumes += batch
            break
        except DomainError as err:  # a drive busy with the API node's work (a copy, a resize): wait for it
            if loop.time() > deadline:
                raise ValueError(f"cannot purge yet: {err}") from None
            await asyncio.sleep(1)
    async with sessions.begin() as s:
        for model in (Tag, KeyPair, Ip):
            await s.execute(delete(model).where(model.owner_uuid == user))
        # VLANs are the operator's: they return unassigned.
        await s.execute(update(Vlan).where(Vlan.owner_uuid == user).values(owner_uuid=None, subscription=None))
    return volumes, drive_uuids
