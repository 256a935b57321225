"""Placement: which host runs a server, which storage host holds a drive (DESIGN.md "Hosts and placement").

:func:`choose` is the pure decision (tested and benchmarked on its own); :func:`place_server`
takes it and records the claim in the caller's transaction, so concurrent starts can neither
overcommit a host nor break a feasible avoid.  A claim is a server row's ``host`` plus its
cpu and mem added to the host row's ``cpu_used``/``mem_used`` counters in the same transaction
(taken back by :func:`release` on stop, recounted from the servers by :func:`recount` when a
host reconnects), so a placement reads one row per candidate host, never every server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    String,
    and_,
    bindparam,
    case,
    cast,
    column,
    func,
    literal_column,
    select,
    text,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from orchestrator.db.models import Drive, Host, Server
from orchestrator.domain.errors import no_capacity

# Claims are Core statements on the table, built once with parameters: the ORM's bulk-update
# bookkeeping and building the expressions cost more than the SQL.
HOSTS = Host.__table__
H = HOSTS.c
LOAD_COLUMNS = (H.name, H.state, H.cpu_capacity, H.mem_capacity, H.cpu_used, H.mem_used)
CPU, MEM = bindparam("claim_cpu", type_=BigInteger), bindparam("claim_mem", type_=BigInteger)
AVOID, OWNER = bindparam("avoid", expanding=True), bindparam("owner")
BATCH = 64  # placements per shared commit at most
T = TypeVar("T")


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


PLACEMENT_LOCK = 0x5354524154  # the advisory lock all API nodes' placements take ("STRAT")


@dataclass
class Scheduler:
    cpu_overcommit: float = 4.0
    mem_overcommit: float = 1.0
    # storage_type → pool name (spec §21); a type not listed uses each host's first pool.
    storage_pools: dict[str, str] = field(default_factory=dict)
    # Keeps one API node's placements from interleaving (and a lost claim race from retrying
    # against itself); across API nodes on PostgreSQL an advisory lock does (avoid reads the hosts
    # of servers another node may be placing), and the guarded UPDATE of the claim keeps capacity.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _facts: dict[str, tuple[float, float, dict[str, dict[str, Any]]]] = field(default_factory=dict, repr=False)
    _indexed: bool = field(default=False, repr=False)
    _queue: list[tuple[async_sessionmaker, Any, asyncio.Future[Any]]] = field(default_factory=list, repr=False)
    _draining: bool = field(default=False, repr=False)

    async def batched(self, sessions: async_sessionmaker, step: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """``await step(s)`` in a placing transaction shared with the steps that arrive together:
        one commit for all of them (group commit), each step seeing the ones before it, so the
        placements stay as sequential as under :meth:`placing`.  Should any step fail, that shared
        transaction is rolled back and each step runs again in one of its own: a failure (a 503,
        a server already started) costs the others a retry, never their result.  ``step`` must
        therefore only touch the database through ``s``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((sessions, step, future))
        if not self._draining:
            self._draining = True
            try:
                await asyncio.sleep(0)  # the steps that arrive at the same moment join the first batch
                while self._queue:
                    batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                    await self._run_batch(batch)
            finally:
                self._draining = False
                for *_, waiting in self._queue:  # left by a cancelled leader
                    _settle(waiting, error=RuntimeError("placement batch cancelled"))
                self._queue = []
        return await future  # type: ignore[no-any-return]

    async def _run_batch(self, batch: list[tuple[async_sessionmaker, Any, asyncio.Future[Any]]]) -> None:
        sessions = batch[0][0]
        try:
            results = []
            try:
                async with self.placing(sessions) as s:
                    for other, step, _ in batch:
                        assert other is sessions, "one scheduler places through one database"
                        results.append(await step(s))
            except Exception as error:
                if len(batch) == 1:
                    _settle(batch[0][2], error=error)
                    return
                for _, step, future in batch:  # each alone
                    try:
                        async with self.placing(sessions) as s:
                            result = await step(s)
                    except Exception as e:
                        _settle(future, error=e)
                    else:
                        _settle(future, result)
                return
            for (*_, future), result in zip(batch, results, strict=True):
                _settle(future, result)
        finally:  # cancelled half-way: nobody waits for ever
            for *_, future in batch:
                _settle(future, error=RuntimeError("placement batch cancelled"))

    @asynccontextmanager
    async def placing(self, sessions: async_sessionmaker) -> AsyncIterator[AsyncSession]:
        """One transaction that places (reads loads, records claims) with no other placement of
        this API node interleaved: every caller that places takes this, and only this."""
        async with self.lock, sessions.begin() as s:
            if s.bind.dialect.name == "postgresql":  # and none of another API node's either
                await s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLACEMENT_LOCK})
            await self._ensure_index(s)
            yield s

    async def loads(self, s: AsyncSession, states: tuple[str, ...] = ("up",),
                    names: Iterable[str] | None = None) -> list[HostLoad]:
        """Capacity, claims and pools of the hosts in ``states`` (and ``names``), by name."""
        # facts as raw JSON text: parsed once per distinct content, not once per placement.
        stmt = (select(Host.name, Host.state, Host.cpu_capacity, Host.mem_capacity, Host.cpu_used, Host.mem_used,
                       type_coerce(Host.facts, String)).where(Host.state.in_(states)).order_by(Host.name))
        if names is not None:
            stmt = stmt.where(Host.name.in_(list(names)))
        rows = (await s.execute(stmt)).all()
        return [self._load(row) for row in rows]

    def _load(self, row: Any) -> HostLoad:
        name, state, cpu, mem, cpu_used, mem_used, *raw = row
        return HostLoad(name, cpu * self.cpu_overcommit, mem * self.mem_overcommit, cpu_used, mem_used,
                        state=state, pools=self._pools(raw[0]) if raw else {})

    def _pools(self, raw: str | dict[str, Any]) -> dict[str, dict[str, Any]]:
        """A host's pools from its facts; cached by the facts' text."""
        key = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True)
        cached = self._facts.get(key)
        if cached is None:
            cached = {p["name"]: p for p in json.loads(key).get("pools", [])}
            if len(self._facts) > 100_000:
                self._facts.clear()
            self._facts[key] = cached
        return cached

    def _fitting(self, cpu: Any = CPU, mem: Any = MEM) -> ColumnElement[bool]:
        """SQL: an up host with room for ``cpu`` MHz and ``mem`` bytes (HostLoad.fits, as floats)."""
        return and_(H.state == "up",
                    H.cpu_used + cpu <= cast(H.cpu_capacity, Float) * self.cpu_overcommit,
                    H.mem_used + mem <= cast(H.mem_capacity, Float) * self.mem_overcommit)

    def _headroom(self, c: Any = H) -> ColumnElement[float]:
        """SQL: HostLoad.headroom (the smaller free share of cpu and mem), the key of the index
        :meth:`_ensure_index` makes: the ratios are literals, so the planner sees the same expression."""
        def share(used: Any, capacity: Any, ratio: float) -> Any:
            one, zero, times = (literal_column(repr(v), Float) for v in (1.0, 0.0, float(ratio)))
            return one - cast(used, Float) / func.nullif(cast(capacity, Float) * times, zero)

        cpu = share(c.cpu_used, c.cpu_capacity, self.cpu_overcommit)
        mem = share(c.mem_used, c.mem_capacity, self.mem_overcommit)
        return case((cpu < mem, cpu), else_=mem)

    async def _ensure_index(self, s: AsyncSession) -> None:
        """The up hosts by headroom, best first, as an expression index (once per process): the
        best fitting host is then the first index entry that fits, not the top of a sort of every
        host.  The overcommit ratios are part of the expression, so the index is named by them
        (another configuration builds its own; ``strato`` drops none: they cost only writes)."""
        if self._indexed:
            return
        dialect = s.bind.dialect
        plain = type("Columns", (), {k: column(k) for k in ("cpu_used", "cpu_capacity", "mem_used", "mem_capacity")})
        key = self._headroom(plain).compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        name = f"ix_hosts_headroom_{self.cpu_overcommit:g}_{self.mem_overcommit:g}".replace(".", "_")
        await s.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON hosts (state, ({key}) DESC, name)"))
        if dialect.name == "postgresql":  # without statistics on hosts the planner sorts instead
            await s.execute(text("ANALYZE hosts"))
        self._indexed = True

    @cached_property
    def _claim_best(self) -> Any:
        """The usual placement in one statement, built once (parameters: claim_cpu, claim_mem,
        avoid, owner): the best fitting host free of every avoided object (choose's first try,
        done by the database), its counters raised where it is picked."""
        best = (select(H.name).where(self._fitting(), H.name.not_in(_avoided_hosts(AVOID, OWNER)))
                .order_by(self._headroom().desc(), H.name).limit(1).scalar_subquery())
        return (update(HOSTS).where(H.name == best, self._fitting())
                .values(cpu_used=H.cpu_used + CPU, mem_used=H.mem_used + MEM).returning(*LOAD_COLUMNS))

    @cached_property
    def _claim(self) -> Any:
        """Raise one host's counters if it still fits (parameters: name, claim_cpu, claim_mem)."""
        return (update(HOSTS).where(H.name == bindparam("claim_host"), self._fitting())
                .values(cpu_used=H.cpu_used + CPU, mem_used=H.mem_used + MEM))

    async def place_server(self, s: AsyncSession, server: Server, volumes: list[tuple[str, str]],
                           avoid: Sequence[str]) -> HostLoad:
        """Claim a host for ``server`` in the caller's transaction; 503 when none fits.

        ``volumes`` are the (storage host, pool) of its drives: a host qualifies when it sees
        every one of them, i.e. holds it or mounts the same (shared) pool directory.

        The candidates are the fitting up hosts, best headroom first (ties by name, as
        :func:`choose` breaks them); without drives to see, only as many as could be avoided
        plus one are read.  The claim is an UPDATE of the chosen host's counters guarded by the
        same fit, so a placement elsewhere (another API node) that filled it first makes this
        one choose again, never overcommit."""
        paths: dict[tuple[str, str], str | None] = {}
        if volumes:
            storage = {load.name: load for load in await self.loads(s, ("up", "down", "draining"),
                                                                     {host for host, _ in volumes})}
            paths = {(host, pool): _pool_path(storage.get(host), pool) for host, pool in volumes}
            if any(path is None for path in paths.values()):
                raise no_capacity(NO_HOST)
        claim = {"claim_cpu": server.cpu, "claim_mem": server.mem}
        for _attempt in range(8):
            if not volumes:
                row = (await s.execute(self._claim_best, {**claim, "avoid": list(avoid),
                                                          "owner": server.owner_uuid})).first()
                if row is not None:
                    server.host = row.name
                    return self._load(row)
                if not avoid:
                    raise no_capacity(NO_HOST)
            # Drives to see, or no host free of every avoided object: the candidates, then choose.
            avoid_hosts = await hosts_of(s, avoid, server.owner_uuid)
            stmt = (select(*LOAD_COLUMNS, *([type_coerce(H.facts, String)] if volumes else []))
                    .where(self._fitting(server.cpu, server.mem)).order_by(self._headroom().desc(), H.name))
            if not volumes:  # one of these is free of any prefix's hosts, if any host is
                stmt = stmt.limit(len({h for h in avoid_hosts if h is not None}) + 1)
            loads = [self._load(row) for row in (await s.execute(stmt)).all()]
            fits = [h.name for h in loads if all(h.sees(pool, path) for (_, pool), path in paths.items())]  # type: ignore[arg-type]
            chosen = choose(loads, fits, avoid_hosts)
            if chosen is None:
                raise no_capacity(NO_HOST)
            claimed = await s.execute(self._claim, {**claim, "claim_host": chosen.name})
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                server.host = chosen.name
                chosen.cpu_used += server.cpu
                chosen.mem_used += server.mem
                return chosen
        raise no_capacity(NO_HOST)

    async def place_migration(self, s: AsyncSession, server: Server, volumes: list[tuple[str, str]],
                              to: str | None = None) -> tuple[HostLoad, set[tuple[str, str]]]:
        """Claim a host to move the running ``server`` to from its host, in the caller's transaction;
        503 when none fits.  Returns the host and the (storage host, pool) of the drives it does not
        see, to be copied into its pool of the same name.

        A candidate is an up host other than the server's that takes live migrations, fits it and
        has a pool of each drive's pool name; shared pools (the same directory) are preferred, then
        the server's avoid list, best effort as at its start, then headroom."""
        paths: dict[tuple[str, str], str | None] = {}
        if volumes:
            storage = {load.name: load for load in await self.loads(s, ("up", "down", "draining"),
                                                                     {host for host, _ in volumes})}
            paths = {(host, pool): _pool_path(storage.get(host), pool) for host, pool in volumes}
        stmt = (select(*LOAD_COLUMNS, type_coerce(H.facts, String))
                .where(self._fitting(server.cpu, server.mem), H.name != server.host)
                .order_by(self._headroom().desc(), H.name))
        if to is not None:
            stmt = stmt.where(H.name == to)
        rows = (await s.execute(stmt)).all()
        loads = [self._load(row) for row in rows if json.loads(row[-1]).get("migration")]
        fits = [h.name for h in loads if all(pool in h.pools for _, pool in volumes)]
        avoid_hosts = await hosts_of(s, server.avoid, server.owner_uuid)
        by_name = {load.name: load for load in loads}
        shared = [h for h in fits if all(by_name[h].sees(pool, path) for (_, pool), path in paths.items() if path)]
        chosen = choose(loads, shared, avoid_hosts) or choose(loads, fits, avoid_hosts)
        if chosen is None:
            raise no_capacity(f"No host can take server {server.uuid} now (capacity, live migration, its pools)"
                              if to is None else f"Host {to} cannot take server {server.uuid} now (up, capacity, "
                              "live migration, its pools)")
        claimed = await s.execute(self._claim, {"claim_cpu": server.cpu, "claim_mem": server.mem,
                                                "claim_host": chosen.name})
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise no_capacity(f"Host {chosen.name} filled up meanwhile")
        copied = {(host, pool) for (host, pool), path in paths.items() if path is None or not chosen.sees(pool, path)}
        return chosen, copied

    async def place_drive(self, s: AsyncSession, drive: Drive, avoid: Sequence[str]) -> str:
        """Pick the storage host and pool of a new drive (pool by storage type, room, avoid)."""
        return (await self.drive_placer(s, avoid, drive.owner_uuid)).place(drive)

    async def drive_placer(self, s: AsyncSession, avoid: Sequence[str], owner: str) -> DrivePlacer:
        """Where new drives of ``owner`` avoiding ``avoid`` go, for as many drives as one request
        makes: the hosts and the avoided objects' hosts are read once, not once per drive."""
        return DrivePlacer(self.storage_pools, await self.loads(s), await hosts_of(s, avoid, owner))


@dataclass
class DrivePlacer:
    """Drive placement on loads read once.  Placing a drive changes neither input (a pool's room
    is what its host last reported; what one transaction adds is checked at its commit, by
    pool_room), and a new drive cannot be among the avoided objects, so the drives of one request
    are placed as each would be alone."""

    storage_pools: dict[str, str]
    loads: list[HostLoad]
    avoid_hosts: list[str | None]

    def place(self, drive: Drive) -> str:
        wanted = self.storage_pools.get(drive.storage_type)

        def pool(load: HostLoad) -> dict[str, Any] | None:
            return load.pools.get(wanted) if wanted else next(iter(load.pools.values()), None)

        fits = [h.name for h in self.loads if (p := pool(h)) is not None and p.get("available", 0) >= drive.size]
        # Free space in whole GiB: pools on one filesystem tie, and ties go to the first host by
        # name, so a user's drives stay together unless told otherwise (avoid, storage type).
        chosen = choose(self.loads, fits, self.avoid_hosts,
                        key=lambda h: pool(h)["available"] // 2**30)  # type: ignore[index]
        if chosen is None:
            raise no_capacity(f"We currently cannot provide enough resources to create a {drive.storage_type} drive")
        drive.host, drive.pool = chosen.name, pool(chosen)["name"]  # type: ignore[index]
        return chosen.name


def _settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Give a waiting step its answer, unless its caller stopped waiting (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def release(s: AsyncSession, server: Server) -> None:
    """Give back ``server``'s claim on its host (it stopped); the caller clears ``server.host``.

    Once only: the lifecycle event and the stop request may both get here, each having read the
    server with its host; the one that clears ``servers.host`` (still that host) gives back."""
    if server.host is None:
        return
    servers = Server.__table__.c
    cleared = await s.execute(update(Server.__table__).where(servers.uuid == server.uuid,
                                                             servers.host == server.host).values(host=None))
    if cleared.rowcount == 1:  # type: ignore[attr-defined]
        await s.execute(update(HOSTS).where(H.name == server.host)
                        .values(cpu_used=H.cpu_used - server.cpu, mem_used=H.mem_used - server.mem))


async def move_claim(s: AsyncSession, server: Server, source: str, target: str) -> None:
    """A migration finished: the server's claim (taken on ``target`` by place_migration) is the
    only one; ``source`` gets its share back."""
    await s.execute(update(HOSTS).where(H.name == source)
                    .values(cpu_used=H.cpu_used - server.cpu, mem_used=H.mem_used - server.mem))
    server.host = target


async def drop_claim(s: AsyncSession, server: Server, host: str) -> None:
    """A migration that failed gives back what place_migration claimed on ``host``."""
    await s.execute(update(HOSTS).where(H.name == host)
                    .values(cpu_used=H.cpu_used - server.cpu, mem_used=H.mem_used - server.mem))


async def recount(s: AsyncSession, host: str | None = None) -> None:
    """Set the claim counters of ``host`` (every host when None) from the servers placed there:
    after a reconnection, whatever happened while this node was not looking."""
    servers = Server.__table__.c

    def used(column: Any) -> Any:
        return (select(func.coalesce(func.sum(column), 0)).where(servers.host == H.name)
                .correlate(HOSTS).scalar_subquery())

    stmt = update(HOSTS).values(cpu_used=used(servers.cpu), mem_used=used(servers.mem))
    if host is not None:
        stmt = stmt.where(H.name == host)
    await s.execute(stmt)


NO_HOST = "No host can fit this server now (capacity, or a host that sees all its drives)"


async def shares_pool(s: AsyncSession, source: Drive, target: Drive) -> bool:
    """Whether ``target``'s volume goes into the very pool holding ``source``'s, so the source's host
    makes it in place: the same host and pool, or one Ceph pool two hosts both reach (same name and
    path).  A directory two hosts share is still copied as a file: a copy-on-write overlay there
    would name its backing file by one host's mount."""
    if source.pool != target.pool or source.host is None or target.host is None:
        return False
    if source.host == target.host:
        return True
    hosts = {h.name: h for h in (await s.scalars(select(Host).where(Host.name.in_([source.host, target.host]))))}
    pools = [next((p for p in hosts[h].facts.get("pools", []) if p["name"] == source.pool), None) if h in hosts
             else None for h in (source.host, target.host)]
    return (pools[0] is not None and pools[1] is not None and pools[0].get("kind") == "rbd"
            and pools[0]["path"] == pools[1]["path"])


def _pool_path(load: HostLoad | None, pool: str) -> str | None:
    facts = None if load is None else load.pools.get(pool)
    return None if facts is None else facts["path"]


def _owned_by(column: Any, owner: str) -> ColumnElement[bool]:
    """``column = owner`` that no index answers: beside ``uuid IN (…)`` SQLite would otherwise
    walk the owner index (every one of the owner's rows) instead of looking the uuids up."""
    return column.concat("") == owner


def _avoided_hosts(uuids: Any, owner: Any) -> Any:
    """SQL: the hosts of the avoided objects (as :func:`hosts_of`, without the order or NULLs)."""
    servers, drives = Server.__table__.c, Drive.__table__.c
    return union_all(*(select(t.host).where(t.uuid.in_(uuids), _owned_by(t.owner_uuid, owner), t.host.is_not(None))
                       for t in (servers, drives)))


async def hosts_of(s: AsyncSession, uuids: Sequence[str], owner: str) -> list[str | None]:
    """The host of each avoided object: a running server's host, a drive's storage host.

    Unknown or other users' uuids count as having no host (spec §30.2: ignored)."""
    if not uuids:
        return []
    rows = (await s.execute(
        select(Server.uuid, Server.host).where(Server.uuid.in_(uuids), _owned_by(Server.owner_uuid, owner))
        .union_all(select(Drive.uuid, Drive.host).where(Drive.uuid.in_(uuids),
                                                        _owned_by(Drive.owner_uuid, owner))))).all()
    found: dict[str, str | None] = {}
    for uuid, host in rows:
        found[uuid] = found.get(uuid) or host
    return [found.get(u) for u in uuids]
