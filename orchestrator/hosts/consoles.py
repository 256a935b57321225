"""VNC and serial-console tunnels (spec §12.9.5–§12.9.7, §16.3) and browser console tokens.

A tunnel is a TCP listener on the API node, one per (server, kind), whose connections are
bridged to the guest's VNC display or first serial port on its host: directly for the local
host, through the host's SSH connection (direct-tcpip / direct-streamlocal) for remote ones,
so guests' VNC and consoles listen only on their host.  Tunnels close on ``close_*``, when the
server stops, and after an idle period without connections.

Browser consoles get a short-lived token bound to one server, one user and one VNC tunnel;
the WebSocket endpoint (``orchestrator/web/console.py``) redeems it.  Tokens are kept
hashed in the database and never logged: a token made through one API node opens the console
through any other (which opens its own tunnel to the guest).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Server
from orchestrator.domain import tokens
from orchestrator.hosts.pool import CHUNK, Hosts, Streams

log = logging.getLogger(__name__)

PROMPT_TIMEOUT = 30.0


@dataclass
class Tunnel:
    kind: str                  # "vnc" | "console"
    server_uuid: str
    owner: str
    port: int
    password: str              # the console asks for it before bridging (VNC does its own auth)
    upstream: Callable[[], Awaitable[Streams]]
    listener: asyncio.Server | None = None
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)
    bridges: set[asyncio.Task[Any]] = field(default_factory=set)


class Consoles:
    def __init__(self, hosts: Hosts, sessions: async_sessionmaker, *, bind: str, ports: range, idle_timeout: float,
                 token_ttl: float) -> None:
        self.hosts = hosts
        self.sessions = sessions
        self.token_ttl = token_ttl
        self.bind = bind
        self.ports = ports
        self.idle_timeout = idle_timeout
        self.tunnels: dict[tuple[str, str], Tunnel] = {}
        self._next_port = ports.start
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for server_uuid, kind in list(self.tunnels):
            await self.close(server_uuid, kind)

    # --- tunnels --------------------------------------------------------------------------------

    async def open(self, kind: str, server_uuid: str, owner: str, host: str, password: str) -> Tunnel:
        """The server's tunnel of this kind, opened when there is none (spec: same URL while open)."""
        existing = self.tunnels.get((server_uuid, kind))
        if existing is not None:
            return existing
        target = await self._target(kind, server_uuid, host)
        tunnel = Tunnel(kind, server_uuid, owner, 0, password, target)
        tunnel.listener, tunnel.port = await self._listen(tunnel)
        self.tunnels[(server_uuid, kind)] = tunnel
        return tunnel

    async def close(self, server_uuid: str, kind: str | None = None) -> None:
        for key in [k for k in self.tunnels if k[0] == server_uuid and kind in (None, k[1])]:
            tunnel = self.tunnels.pop(key)
            assert tunnel.listener is not None
            tunnel.listener.close()
            for task in list(tunnel.bridges):
                task.cancel()
            await asyncio.gather(*tunnel.bridges, return_exceptions=True)
            if kind in (None, "vnc") and key[1] == "vnc":  # its browser tokens end with it, on every node
                async with self.sessions.begin() as s:
                    await tokens.revoke_hashes(s, [t.token_hash for t in await tokens.live(s, "console", tunnel.owner)
                                                   if t.data.get("server") == server_uuid])

    async def close_owners(self, owners: set[str]) -> None:
        """End these users' tunnels, connections and browser links (they were disabled)."""
        for (server_uuid, kind), tunnel in list(self.tunnels.items()):
            if tunnel.owner in owners:
                await self.close(server_uuid, kind)
        async with self.sessions.begin() as s:  # and their browser links, on every node
            for owner in owners:
                await tokens.revoke(s, "console", owner)

    async def _target(self, kind: str, server_uuid: str, host: str) -> Callable[[], Awaitable[Streams]]:
        """How to reach the guest's VNC display or serial socket on its host."""
        domains = {d["uuid"]: d for d in await self.hosts.call(host, "domain.list")}
        domain = domains.get(server_uuid) or {}
        if kind == "vnc":
            vnc = domain.get("vnc")
            if not vnc:
                raise ConnectionError("the guest has no VNC display")
            return self.hosts.opener(host, tcp=(vnc["host"], vnc["port"]))
        path = domain.get("console_socket")
        if not path:
            raise ConnectionError("the guest has no serial console")
        return self.hosts.opener(host, unix=path)

    async def _listen(self, tunnel: Tunnel) -> tuple[asyncio.Server, int]:
        # Ports rotate through the range, so a new open after a close gets a new URL.
        used = {t.port for t in self.tunnels.values()}
        for _ in range(len(self.ports)):
            port = self._next_port
            self._next_port = port + 1 if port + 1 < self.ports.stop else self.ports.start
            if port in used:
                continue
            try:
                server = await asyncio.start_server(lambda r, w: self._accept(tunnel, r, w), self.bind, port,
                                                    limit=CHUNK)
            except OSError:
                continue
            return server, port
        raise ConnectionError("no free tunnel port")

    async def _accept(self, tunnel: Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tunnel.bridges.add(task)
        tunnel.active += 1
        try:
            if tunnel.kind == "console" and not await self._ask_password(tunnel, reader, writer):
                return
            up_reader, up_writer = await tunnel.upstream()
            await bridge(reader, writer, up_reader, up_writer, lambda: setattr(tunnel, "last_used", time.monotonic()))
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as err:
            log.info("%s tunnel of %s: %s", tunnel.kind, tunnel.server_uuid, err)
        finally:
            tunnel.active -= 1
            tunnel.last_used = time.monotonic()
            tunnel.bridges.discard(task)
            writer.close()

    async def _ask_password(self, tunnel: Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """The serial console asks for the server's VNC password first (spec §12.9.7)."""
        writer.write(b"Password: ")
        await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), PROMPT_TIMEOUT)
        except TimeoutError:
            return False
        if not hmac.compare_digest(line.strip().decode(errors="replace"), tunnel.password):
            writer.write(b"\r\nWrong password\r\n")
            await writer.drain()
            return False
        writer.write(b"\r\n")
        await writer.drain()
        return True

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(self.idle_timeout, 5.0))
            now = time.monotonic()
            for (uuid, kind), tunnel in list(self.tunnels.items()):
                if tunnel.active == 0 and now - tunnel.last_used > self.idle_timeout:
                    await self.close(uuid, kind)

    # --- browser console tokens ---------------------------------------------------------------

    TOKENS_PER_USER = 20  # live browser console links per user; a new one retires the oldest

    async def grant(self, tunnel: Tunnel) -> str:
        async with self.sessions.begin() as s:
            mine = await tokens.live(s, "console", tunnel.owner)  # oldest first
            await tokens.revoke_hashes(s, [t.token_hash for t in mine[: max(0, len(mine) - self.TOKENS_PER_USER + 1)]])
            return await tokens.issue(s, "console", tunnel.owner, self.token_ttl, {"server": tunnel.server_uuid})

    async def redeem(self, token: str) -> Tunnel | None:
        """The VNC tunnel a valid, unexpired token opens (tokens are single-use); on a node other
        than the one that made it, a tunnel of this node's own."""
        async with self.sessions.begin() as s:
            grant = await tokens.redeem(s, "console", token)
            server = await s.get(Server, grant.data.get("server", "")) if grant is not None else None
        if grant is None or server is None or server.owner_uuid != grant.subject or server.host is None:
            return None
        tunnel = self.tunnels.get((server.uuid, "vnc"))
        if tunnel is not None and tunnel.owner == grant.subject:
            return tunnel
        try:
            return await self.open("vnc", server.uuid, server.owner_uuid, server.host, server.vnc_password)
        except (OSError, ConnectionError, AgentCallError, AgentGone) as err:
            log.info("console token for %s: no tunnel: %s", server.uuid, err)
            return None


async def bridge(reader: Any, writer: Any, up_reader: Any, up_writer: Any, touched: Callable[[], None]) -> None:
    """Copy bytes both ways until either side closes."""

    async def pump(src: Any, dst: Any) -> None:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
            touched()

    tasks = [asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        up_writer.close()
