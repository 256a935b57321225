"""Leases: which API node runs what, when several share one database (issue 13).

Every node has a row in ``api_nodes`` that it renews every third of ``lease`` seconds; a node whose
row has not been renewed for ``lease`` seconds is dead (killed, hung, cut off).  What a node runs
is leased the same way:

* each host has one holder (``host_leases``), the only node that polls its statistics, acts on its
  lifecycle events and reconciles its domains.  A node claims free or expired host leases (rows
  locked ``FOR UPDATE SKIP LOCKED``, so two nodes never claim one at once) up to its share of the
  hosts (handing one over per renewal while it holds more), renews its own, and on every claim
  runs the reconciliation a single node runs at start;
* each job is leased to the node that made it (``job_leases``, tagged at flush).  A job whose
  node is dead is taken over by the holder of its host, in that host's reconciliation: a start
  the guest finished is recorded running, one it did not is rolled back (``stopped``, claim and
  addresses released); a drive create or resize is done again (both idempotent); a clone copy is
  done again from the start (its partial copy deleted first); an upload's import is done again
  from the complete file in the shared upload directory (any node, one winner).

A dead node's work is thus finished or rolled back at most ``lease + lease / 3`` seconds after
its last renewal.  On SQLite (one node) the same code runs with one node holding everything.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from orchestrator.db.models import ApiNode, Host, HostLease, Job, JobLease, utcnow
from orchestrator.domain import tokens

log = logging.getLogger(__name__)

HostHook = Callable[[str], Awaitable[None]]
NodesHook = Callable[[set[str]], Awaitable[None]]


def new_node_id() -> str:
    return f"{socket.gethostname()[:40]}-{secrets.token_hex(4)}"


def tag_jobs(session_class: type[Session], node: str) -> None:
    """Every job this node's sessions create is leased to this node."""

    @event.listens_for(session_class, "before_flush")
    def _lease(session: Session, _context: Any, _instances: Any) -> None:
        session.add_all([JobLease(job_uuid=o.uuid, node=node) for o in session.new if isinstance(o, Job)])


class Cluster:
    def __init__(self, sessions: async_sessionmaker, node: str, *, lease: float = 10.0) -> None:
        self.sessions = sessions
        self.node = node
        self.lease = lease
        self.held: set[str] = set()     # hosts whose lease this node holds
        self.alive: set[str] = {node}   # nodes alive at the last renewal
        self.acquired: list[HostHook] = []   # called with a host this node has just taken
        self.vanished: list[NodesHook] = []  # called with the nodes found dead
        self._ticks = 0

    @property
    def every(self) -> float:
        return self.lease / 3

    def holds(self, host: str) -> bool:
        return host in self.held

    async def join(self) -> None:
        async with self.sessions.begin() as s:
            if s.bind.dialect.name == "sqlite":
                # One node only (a SQLite file is not shared between machines): whatever a node
                # recorded before is this installation's previous process, dead now.
                await s.execute(delete(HostLease))
                await s.execute(delete(ApiNode))
            s.add(ApiNode(id=self.node, expires=utcnow() + timedelta(seconds=self.lease)))
        await self.tick()

    async def leave(self) -> None:
        """A clean stop: others may take this node's hosts at once."""
        async with self.sessions.begin() as s:
            await s.execute(delete(HostLease).where(HostLease.node == self.node))
            await s.execute(delete(ApiNode).where(ApiNode.id == self.node))
        self.held.clear()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.tick()
            except Exception:
                log.exception("lease renewal failed; trying again")

    async def tick(self) -> None:
        """Renew this node's leases, claim its share of the free hosts, notice dead nodes."""
        now = utcnow()
        until = now + timedelta(seconds=self.lease)
        async with self.sessions.begin() as s:
            if (await s.execute(update(ApiNode).where(ApiNode.id == self.node).values(expires=until))).rowcount == 0:
                log.warning("this node's lease was gone (a stall longer than %s s?); joining again", self.lease)
                s.add(ApiNode(id=self.node, expires=until))
            alive = set((await s.scalars(select(ApiNode.id).where(ApiNode.expires > now))).all()) | {self.node}
            await s.execute(update(HostLease).where(HostLease.node == self.node).values(expires=until))
            held, taken = await self._claim(s, now, until, len(alive))
            self._ticks += 1
            if self._ticks % 100 == 1:  # now and then: expired secrets, nodes long dead
                await tokens.sweep(s)
                await s.execute(delete(ApiNode).where(ApiNode.expires < now - timedelta(hours=1)))
        gone = self.alive - alive
        self.alive, self.held = alive, held
        for host in taken:
            log.info("node %s took the lease of host %s", self.node, host)
            for hook in self.acquired:
                await hook(host)
        if gone:
            log.warning("API nodes %s stopped renewing their lease; taking their work over", ", ".join(sorted(gone)))
            for nodes_hook in self.vanished:
                await nodes_hook(gone)

    async def _claim(self, s: AsyncSession, now: Any, until: Any, nodes: int) -> tuple[set[str], list[str]]:
        names = set((await s.scalars(select(Host.name))).all())
        share = math.ceil(len(names) / max(nodes, 1))
        rows = {lease.host: lease for lease in (await s.scalars(
            select(HostLease).where(HostLease.host.in_(names)).with_for_update(skip_locked=True))).all()}
        held = {host for host, lease in rows.items() if lease.node == self.node}
        taken: list[str] = []
        for host in sorted(names - held):
            if len(held) >= share:
                break
            lease = rows.get(host)
            if lease is None:
                try:
                    async with s.begin_nested():
                        s.add(HostLease(host=host, node=self.node, expires=until, stats={}))
                except IntegrityError:
                    continue  # another node made it first
            elif lease.expires <= now:
                lease.node, lease.expires = self.node, until
            else:
                continue
            held.add(host)
            taken.append(host)
        if len(held) > share and not taken:  # a node joined: hand one host over per renewal
            given = sorted(held)[-1]
            await s.execute(delete(HostLease).where(HostLease.host == given, HostLease.node == self.node))
            held.discard(given)
            log.info("node %s hands host %s over (its share is %d hosts)", self.node, given, share)
        await s.execute(delete(HostLease).where(HostLease.host.not_in(names)))
        return held, taken

    async def busy_elsewhere(self, s: AsyncSession) -> set[tuple[str, str | None]]:
        """(operation, object) and (``job``, job uuid) of the started jobs a live node other than
        this one runs."""
        others = self.alive - {self.node}
        if not others:
            return set()
        rows = (await s.execute(select(Job.uuid, Job.operation, Job.source_uuid)
                                .join(JobLease, JobLease.job_uuid == Job.uuid)
                                .where(Job.state == "started", JobLease.node.in_(others)))).all()
        return {(row.operation, row.source_uuid) for row in rows} | {("job", row.uuid) for row in rows}

    async def take_job(self, job_uuid: str) -> bool:
        """Claim a started job whose node is dead (or that has none); False when a live node has it."""
        async with self.sessions.begin() as s:
            lease = await s.get(JobLease, job_uuid, with_for_update=True)
            if lease is None:
                s.add(JobLease(job_uuid=job_uuid, node=self.node))
                return True
            if lease.node in self.alive and lease.node != self.node:
                return False
            lease.node = self.node
            return True
