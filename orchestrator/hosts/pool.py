"""The API node's agent connections, one per registered host, and the ways to reach into a host.

Everything above this layer talks to a host through :class:`Hosts`: an RPC (:meth:`Hosts.call`),
a file put on or fetched from it (:meth:`Hosts.placed`, :meth:`Hosts.fetched`: the file itself on
the local host, an SFTP copy over the host's SSH connection otherwise), or a stream to a guest's
display or serial socket (:meth:`Hosts.opener`).  What a connection reports (up, down, lifecycle
events) goes to the one :class:`Listener` the work layer installs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from agents.client import AgentGone
from orchestrator.db.models import Host
from orchestrator.hosts.connection import AgentConnection, HostAddress, Listener

Streams = tuple[Any, Any]  # (reader, writer) of asyncio or asyncssh, bytes both ways
CHUNK = 1 << 20  # stream buffer limit: a raw VNC frame is ~1 MB


class Hosts:
    def __init__(self, sessions: async_sessionmaker, *, heartbeat: float = 5.0) -> None:
        self.sessions = sessions
        self.heartbeat = heartbeat
        self.listener = Listener()  # replaced by the work layer's before the first sync
        self.connections: dict[str, AgentConnection] = {}

    async def sync(self) -> None:
        """Connect hosts registered since (``strato hosts add``), drop removed ones."""
        async with self.sessions() as s:
            hosts = {host.name: host for host in (await s.scalars(select(Host))).all()}
        for name in set(self.connections) - set(hosts):
            await self.disconnect(name)
        for name in set(hosts) - set(self.connections):
            self._connect(hosts[name])

    def _connect(self, host: Host) -> None:
        address = HostAddress(host.name, host.address, tuple(host.agent_command), host.key_file, host.known_hosts)
        connection = AgentConnection(address, self.listener, heartbeat=self.heartbeat)
        self.connections[host.name] = connection
        connection.start()

    async def disconnect(self, name: str) -> None:
        connection = self.connections.pop(name, None)
        if connection is not None:
            await connection.stop()

    async def stop(self) -> None:
        for name in list(self.connections):
            await self.disconnect(name)

    def is_up(self, name: str) -> bool:
        connection = self.connections.get(name)
        return connection is not None and connection.up.is_set()

    def up_hosts(self) -> list[str]:
        return [name for name in self.connections if self.is_up(name)]

    async def call(self, host: str, method: str, *, timeout: float = 120.0, **params: Any) -> Any:
        return await self._connection(host).call(method, timeout=timeout, **params)

    def _connection(self, host: str) -> AgentConnection:
        connection = self.connections.get(host)
        if connection is None:
            raise AgentGone(f"host {host} is not registered")
        return connection

    # --- files and streams ----------------------------------------------------------------------

    @asynccontextmanager
    async def placed(self, host: str, source: Path) -> AsyncIterator[str]:
        """The path on ``host`` of a copy of the API node's file ``source`` (removed afterwards)."""
        connection = self._connection(host)
        if connection.address.is_local:
            yield str(source)
            return
        await connection.up.wait()
        assert connection.ssh is not None
        remote = f"/tmp/strato-import-{uuid.uuid4().hex}.img"
        async with connection.ssh.start_sftp_client() as sftp:
            await sftp.put(str(source), remote)
        try:
            yield remote
        finally:
            if connection.ssh is not None:
                async with connection.ssh.start_sftp_client() as sftp:
                    await sftp.remove(remote)

    @asynccontextmanager
    async def fetched(self, host: str, path: str, scratch: Path, name: str | None = None) -> AsyncIterator[Path]:
        """A local path to read the file ``path`` of ``host``: itself on the local host, else a
        copy fetched into the ``scratch`` directory (as ``name``, or a name of its own; removed afterwards)."""
        connection = self._connection(host)
        if connection.address.is_local:
            yield Path(path)
            return
        assert connection.ssh is not None
        scratch.mkdir(parents=True, exist_ok=True)
        local = scratch / (name or f"fetched-{uuid.uuid4().hex}")
        try:
            async with connection.ssh.start_sftp_client() as sftp:
                await sftp.get(path, str(local))
            yield local
        finally:
            local.unlink(missing_ok=True)

    @asynccontextmanager
    async def exported(self, host: str, pool: str | None, volume: str, scratch: Path) -> AsyncIterator[Path]:
        """A local raw image of a volume the host writes out itself (``volume.export``: an RBD image,
        which is no file to fetch): into ``scratch`` on the local host, else into the host's /tmp and
        fetched from there.  Removed afterwards."""
        connection = self._connection(host)
        scratch.mkdir(parents=True, exist_ok=True)
        name = f"export-{uuid.uuid4().hex}.raw"
        if connection.address.is_local:
            local = scratch / name
            try:
                await self.call(host, "volume.export", timeout=3600, pool=pool, name=volume, path=str(local))
                yield local
            finally:
                local.unlink(missing_ok=True)
            return
        remote = f"/tmp/strato-{name}"
        try:
            await self.call(host, "volume.export", timeout=3600, pool=pool, name=volume, path=remote)
            async with self.fetched(host, remote, scratch) as local:
                yield local
        finally:
            if connection.ssh is not None:
                async with connection.ssh.start_sftp_client() as sftp:
                    await sftp.remove(remote)

    def opener(self, host: str, *, tcp: tuple[str, int] | None = None,
               unix: str | None = None) -> Callable[[], Awaitable[Streams]]:
        """How to open a stream to a TCP address or UNIX socket on ``host`` (a guest's VNC display or
        serial console): directly on the local host, through its SSH connection otherwise."""
        connection = self._connection(host)
        if tcp is not None:
            if connection.address.is_local:
                return lambda: asyncio.open_connection(*tcp, limit=CHUNK)
            return lambda: connection.ssh.open_connection(*tcp)  # type: ignore[union-attr]
        assert unix is not None
        if connection.address.is_local:
            return lambda: asyncio.open_unix_connection(unix, limit=CHUNK)
        return lambda: connection.ssh.open_unix_connection(unix)  # type: ignore[union-attr]
