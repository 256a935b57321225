"""Server contexts (spec §33) on the hosts: each running server's context document, pushed to
its host's agent (``context.set``), which answers the guest's ttyS1 from it.

The agent never asks back, so a guest's request never waits on the API node: instead every
commit that may change a document (the server, its drives, tags, keys, addresses, the owner's
global context) pushes the documents of that owner's running servers again, and a boot pushes
before the domain starts.  The document itself is the API's rendering of the server
(``orchestrator/api/context.py``), handed in by the app factory as ``build``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from agents.client import AgentCallError, AgentGone
from orchestrator.db.models import Drive, Ip, KeyPair, Server, ServerDrive, Tag, TagLink, User
from orchestrator.domain.lifecycle import ACTIVE
from orchestrator.hosts.pool import Hosts
from orchestrator.work.tasks import Tasks

log = logging.getLogger(__name__)

BuildDocument = Callable[[AsyncSession, str], Awaitable[dict[str, Any] | None]]  # (session, server uuid)
# Rows a document shows, by owner (jobs, hosts and the rest never change one: no push for them).
IN_DOCUMENT = (Server, Drive, Ip, Tag, KeyPair)
SETTLE = 0.05  # seconds: the commits of one request arrive together, one push follows them


class ContextWork:
    def __init__(self, sessions: async_sessionmaker, hosts: Hosts, tasks: Tasks, build: BuildDocument) -> None:
        self.sessions = sessions
        self.hosts = hosts
        self.tasks = tasks
        self.build = build
        self._owners: set[str] = set()     # whose documents may have changed since the last push
        self._servers: set[str] = set()    # servers whose documents may have changed (links without owner)
        self._pushing = False
        self._handing: asyncio.Task[None] | None = None

    async def push(self, *, servers: set[str] | None = None, owners: set[str] | None = None,
                   host: str | None = None) -> None:
        """Push the documents of the running (or booting) context servers that match."""
        wanted = []
        if servers:
            wanted.append(Server.uuid.in_(servers))
        if owners:
            wanted.append(Server.owner_uuid.in_(owners))
        if host is not None:
            wanted.append(Server.host == host)
        if not wanted:
            return
        async with self.sessions() as s:
            rows = (await s.execute(select(Server.uuid, Server.host).where(
                or_(*wanted), Server.context.is_(True), Server.status.in_(ACTIVE), Server.host.is_not(None)))).all()
            documents = [(row_host, uuid, await self.build(s, uuid)) for uuid, row_host in rows]
        for row_host, uuid, document in documents:
            if document is None:
                continue
            try:
                await self.hosts.call(row_host, "context.set", uuid=uuid, document=document)
            except (AgentCallError, AgentGone) as err:  # the host's reconciliation pushes again
                log.warning("context of %s not pushed to %s: %s", uuid, row_host, err)

    async def push_one(self, uuid: str, host: str | None = None) -> None:
        """A boot (or a migration to ``host``): the document must be on the host before the guest
        asks (raises on failure)."""
        async with self.sessions() as s:
            server = await s.get(Server, uuid)
            if server is None or server.host is None or not server.context:
                return
            host, document = host or server.host, await self.build(s, uuid)
        if document is not None:
            await self.hosts.call(host, "context.set", uuid=uuid, document=document)

    # --- after commits ----------------------------------------------------------------------------

    def watch(self, session_class: type[Session]) -> None:
        """Note, per session, whose documents a flush may have changed; push after the commit."""

        @event.listens_for(session_class, "after_flush")
        def _flushed(session: Session, _context: Any) -> None:
            owners: set[str] = session.info.setdefault("context_owners", set())
            servers: set[str] = session.info.setdefault("context_servers", set())
            for obj in [*session.new, *session.dirty, *session.deleted]:
                if isinstance(obj, User):
                    owners.add(obj.uuid)
                elif isinstance(obj, IN_DOCUMENT) and obj.owner_uuid is not None:
                    owners.add(obj.owner_uuid)
                elif isinstance(obj, TagLink):
                    servers.add(obj.res_uuid)
                elif isinstance(obj, ServerDrive):
                    servers.add(obj.server_uuid)

        @event.listens_for(session_class, "after_commit")
        def _committed(session: Session) -> None:
            owners, servers = session.info.pop("context_owners", set()), session.info.pop("context_servers", set())
            if owners or servers:
                self._owners |= owners
                self._servers |= servers
                self._schedule()

        @event.listens_for(session_class, "after_rollback")
        def _rolled_back(session: Session) -> None:
            session.info.pop("context_owners", None)
            session.info.pop("context_servers", None)

    def _schedule(self) -> None:
        if self._pushing:
            return
        self._pushing = True
        # Called inside a commit (not awaitable): hand the push to the supervisor from a task,
        # kept referenced until it has.
        self._handing = asyncio.get_running_loop().create_task(self.tasks.spawn(self._push_noted(), "push contexts"))

    async def _push_noted(self) -> None:
        try:
            while self._owners or self._servers:
                await asyncio.sleep(SETTLE)
                owners, servers = self._owners, self._servers
                self._owners, self._servers = set(), set()
                await self.push(owners=owners, servers=servers)
        finally:
            self._pushing = False
