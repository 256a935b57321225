"""Placement: which host runs a server, which storage host holds a drive (DESIGN.md "Hosts and placement").

:func:`choose` is the pure decision (tested and benchmarked on its own); :func:`place_server`
takes it and records the claim in the caller's transaction, so concurrent starts can neither
overcommit a host nor break a feasible avoid.  A claim is a server row's ``host``: the
capacity used on a host is the sum of the cpu and mem of the servers placed there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from orchestrator.db.models import Drive, Host, Server
from orchestrator.domain.errors import no_capacity


@dataclass
class HostLoad:
    name: str
    cpu_capacity: float           # MHz, after overcommit
    mem_capacity: float           # bytes, after overcommit
    cpu_used: int = 0
    mem_used: int = 0
    cpu_type: str | None = None   # None: any family
    state: str = "up"
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)  # pool name → its facts (path, available)

    def sees(self, pool: str, path: str) -> bool:
        """Whether this host has the pool: a shared directory has one name and path on every host."""
        return self.pools.get(pool, {}).get("path") == path

    def fits(self, cpu: int, mem: int) -> bool:
        return self.cpu_used + cpu <= self.cpu_capacity and self.mem_used + mem <= self.mem_capacity

    def headroom(self) -> float:
        return min(1 - self.cpu_used / self.cpu_capacity, 1 - self.mem_used / self.mem_capacity)


def choose(hosts: Sequence[HostLoad], fits: Iterable[str], avoid_hosts: Sequence[str | None],
           key: Any = HostLoad.headroom) -> HostLoad | None:
    """The best feasible host, avoiding as long a left prefix of ``avoid_hosts`` as possible.

    ``avoid_hosts`` holds, in the client's priority order, the host of each avoided object
    (None when it has none).  Best effort (spec §30): first the hosts free of every avoided
    object, then of all but the last, and so on.
    """
    fitting = set(fits)
    feasible = [h for h in hosts if h.name in fitting]
    for keep in range(len(avoid_hosts), -1, -1):
        banned = {h for h in avoid_hosts[:keep] if h is not None}
        options = [h for h in feasible if h.name not in banned]
        if options:
            return max(options, key=key)
    return None


@dataclass
class Scheduler:
    cpu_overcommit: float = 4.0
    mem_overcommit: float = 1.0
    # storage_type → pool name (spec §21); a type not listed uses each host's first pool.
    storage_pools: dict[str, str] = field(default_factory=dict)
    # SQLite serialises writers anyway; this lock keeps one API node's placements from
    # interleaving between read and write.  PostgreSQL adds row locks on the host rows.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _facts: dict[str, tuple[float, float, dict[str, dict[str, Any]]]] = field(default_factory=dict, repr=False)

    @asynccontextmanager
    async def placing(self, sessions: async_sessionmaker) -> AsyncIterator[AsyncSession]:
        """One transaction that places (reads loads, records claims) with no other placement of
        this API node interleaved: every caller that places takes this, and only this."""
        async with self.lock, sessions.begin() as s:
            yield s

    async def loads(self, s: AsyncSession, states: tuple[str, ...] = ("up",)) -> list[HostLoad]:
        """Capacity and claims of the hosts in ``states``; host rows locked on PostgreSQL."""
        # facts as raw JSON text: parsed once per distinct content, not once per placement.
        rows = (await s.execute(select(Host.name, Host.state, type_coerce(Host.facts, String))
                                .where(Host.state.in_(states)).order_by(Host.name).with_for_update())).all()
        used = {row.host: row for row in (await s.execute(
            select(Server.host, func.sum(Server.cpu).label("cpu"), func.sum(Server.mem).label("mem"))
            .where(Server.host.is_not(None)).group_by(Server.host))).all()}
        loads = []
        for name, state, raw in rows:
            cpu, mem, pools = self._capacity(raw)
            load = HostLoad(name, cpu * self.cpu_overcommit, mem * self.mem_overcommit, pools=pools, state=state)
            if name in used:
                load.cpu_used, load.mem_used = int(used[name].cpu), int(used[name].mem)
            loads.append(load)
        return loads

    def _capacity(self, raw: str | dict[str, Any]) -> tuple[float, float, dict[str, dict[str, Any]]]:
        """(MHz, bytes, pools) from a host's facts; cached by the facts' text."""
        key = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True)
        cached = self._facts.get(key)
        if cached is None:
            facts = json.loads(key)
            cached = (facts.get("cores", 1) * facts.get("mhz", 1000), float(facts.get("memory", 0)),
                      {p["name"]: p for p in facts.get("pools", [])})
            if len(self._facts) > 100_000:
                self._facts.clear()
            self._facts[key] = cached
        return cached

    async def place_server(self, s: AsyncSession, server: Server, volumes: list[tuple[str, str]],
                           avoid: Sequence[str]) -> HostLoad:
        """Claim a host for ``server`` in the caller's transaction; 503 when none fits.

        ``volumes`` are the (storage host, pool) of its drives: a host qualifies when it sees
        every one of them, i.e. holds it or mounts the same (shared) pool directory."""
        every = {load.name: load for load in await self.loads(s, ("up", "down", "draining"))}
        paths = {(host, pool): _pool_path(every.get(host), pool) for host, pool in volumes}
        loads = [load for load in every.values() if load.state == "up"]
        fits = [h.name for h in loads if h.fits(server.cpu, server.mem)
                and all(path is not None and h.sees(pool, path) for (_, pool), path in paths.items())]
        chosen = choose(loads, fits, await hosts_of(s, avoid, server.owner_uuid))
        if chosen is None:
            raise no_capacity("No host can fit this server now (capacity, or a host that sees all its drives)")
        server.host = chosen.name
        return chosen

    async def place_drive(self, s: AsyncSession, drive: Drive, avoid: Sequence[str]) -> str:
        """Pick the storage host and pool of a new drive (pool by storage type, room, avoid)."""
        wanted = self.storage_pools.get(drive.storage_type)
        loads = await self.loads(s)

        def pool(load: HostLoad) -> dict[str, Any] | None:
            return load.pools.get(wanted) if wanted else next(iter(load.pools.values()), None)

        fits = [h.name for h in loads if (p := pool(h)) is not None and p.get("available", 0) >= drive.size]
        # Free space in whole GiB: pools on one filesystem tie, and ties go to the first host by
        # name, so a user's drives stay together unless told otherwise (avoid, storage type).
        chosen = choose(loads, fits, await hosts_of(s, avoid, drive.owner_uuid),
                        key=lambda h: pool(h)["available"] // 2**30)  # type: ignore[index]
        if chosen is None:
            raise no_capacity(f"We currently cannot provide enough resources to create a {drive.storage_type} drive")
        drive.host, drive.pool = chosen.name, pool(chosen)["name"]  # type: ignore[index]
        return chosen.name


def _pool_path(load: HostLoad | None, pool: str) -> str | None:
    facts = None if load is None else load.pools.get(pool)
    return None if facts is None else facts["path"]


async def hosts_of(s: AsyncSession, uuids: Sequence[str], owner: str) -> list[str | None]:
    """The host of each avoided object: a running server's host, a drive's storage host.

    Unknown or other users' uuids count as having no host (spec §30.2: ignored)."""
    servers = dict((await s.execute(select(Server.uuid, Server.host).where(
        Server.uuid.in_(uuids), Server.owner_uuid == owner))).all())
    drives = dict((await s.execute(select(Drive.uuid, Drive.host).where(
        Drive.uuid.in_(uuids), Drive.owner_uuid == owner))).all())
    return [servers.get(u) or drives.get(u) for u in uuids]
