"""Scheduler benchmark: 1,000 (and 10,000) hosts, 10,000 placements with random avoid lists (issues 4, 14).

    .venv/bin/python bench/scheduler.py [--hosts 1000,10000] [--placements 10000] [--seed 4]
                                        [--backends sqlite,postgresql] [--db-seconds 60] [--pure-seconds 20]

Targets (issue 14), with 1,000 hosts: >= 1,000 placements/s through ``Scheduler.place_server`` on
SQLite and >= 500/s on PostgreSQL (a throw-away cluster from Debian's binaries, as the store
tests start), zero violations; 10,000 hosts reported (how the cost grows with hosts).

One workload (host sizes, server sizes, avoid lists of 0-4 earlier servers) is generated up front
and run through two phases, each on a fresh state:

A. pure ``choose()`` (orchestrator/domain/placement.py) on in-memory ``HostLoad`` rows, with ``fits``
   computed as ``place_server`` does: the baseline;
C. ``Scheduler.place_server`` against a real database per backend (``make_engine`` + ``migrate``):
   host rows with facts, server rows, each placement in its own transaction under
   ``scheduler.placing`` (the claim is ``servers.host`` plus the host row's ``cpu_used``/``mem_used``
   counters; the candidate is the first fitting entry of the headroom index);
D. the same, ``--concurrency`` placements arriving together through ``Scheduler.batched`` as
   ``ServerWork.start`` places: one commit per batch, decisions still in index order.

Phases are capped by wall-clock time (``--db-seconds`` / ``--pure-seconds``); a capped phase
reports its rate over the placements it reached and is checked over exactly those.

Invariants, checked after each DB phase from the database: the sum of cpu/mem of the servers on
each host is within cores*mhz*cpu_overcommit and memory*mem_overcommit; nothing is placed on a
host that is not ``up``; and, replaying the placements in order (an independent brute force, not
``choose``): each chosen host fitted at decision time, each placement whose full avoid set was
feasible at decision time avoided every avoided server's host, each best-effort placement
avoided the longest feasible prefix, and each 503 happened only when no host fitted.
Finally a profile of one placement's parts on the filled database (``loads``, ``hosts_of``,
``choose``, commit) and its SQL statement count.  Then the counters are checked against the
servers' sums (``claim counters``), again after a tenth of the placed servers stop
(``record_stopped``, as the work layer does) and after a reconnection's ``recount``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, func, select, update  # noqa: E402

from orchestrator.db.engine import make_engine, make_sessionmaker, migrate, sqlite_url  # noqa: E402
from orchestrator.db.models import Host, Server, User  # noqa: E402
from orchestrator.domain.errors import DomainError, Kind  # noqa: E402
from orchestrator.domain.placement import HostLoad, Scheduler, choose, hosts_of, recount  # noqa: E402
from orchestrator.domain.transitions import record_stopped  # noqa: E402

GiB, MiB = 2**30, 2**20
TARGETS = {"sqlite": 1000.0, "postgresql": 500.0}  # placements/s with 1,000 hosts


# --- workload --------------------------------------------------------------------------------------


@dataclass
class HostSpec:
    name: str
    cores: int
    mhz: int
    memory: int
    state: str


@dataclass
class Workload:
    hosts: list[HostSpec]
    servers: list[tuple[int, int]]          # (cpu MHz, mem bytes), in placement order
    avoid: list[list[int]]                  # indices of earlier servers to avoid, priority order
    cpu_overcommit: float = 4.0
    mem_overcommit: float = 1.0

    def cpu_cap(self, h: HostSpec) -> float:
        return h.cores * h.mhz * self.cpu_overcommit

    def mem_cap(self, h: HostSpec) -> float:
        return h.memory * self.mem_overcommit


def make_workload(n_hosts: int, n_servers: int, seed: int) -> Workload:
    rng = random.Random(seed)
    servers = [(rng.choice([250, 500, 1000, 2000, 4000, 8000, 16000, 32000]),
                rng.choice([256 * MiB, 512 * MiB, 1 * GiB, 2 * GiB, 4 * GiB, 8 * GiB, 16 * GiB, 32 * GiB]))
               for _ in range(n_servers)]
    avoid = [rng.sample(range(i), min(i, rng.randint(0, 4))) for i in range(n_servers)]
    raw = [(rng.choice([4, 8, 16, 24, 32, 48, 64]), rng.randrange(2000, 3700, 100),
            rng.choice([8, 16, 32, 64, 96, 128, 192, 256, 384, 512]) * GiB) for _ in range(n_hosts)]
    states = ["up" if rng.random() < 0.97 else rng.choice(["draining", "down"]) for _ in range(n_hosts)]
    # Scale the hosts so the whole workload fills ~98% of the up hosts' memory and ~80% of their
    # cpu: placements get tight towards the end, so some avoid sets become infeasible.
    w = Workload([], servers, avoid)
    up_cpu = sum(c * m * w.cpu_overcommit for (c, m, _), st in zip(raw, states, strict=True) if st == "up")
    up_mem = sum(mem * w.mem_overcommit for (_, _, mem), st in zip(raw, states, strict=True) if st == "up")
    cpu_scale = sum(s[0] for s in servers) / 0.80 / up_cpu
    mem_scale = sum(s[1] for s in servers) / 0.98 / up_mem
    for i, ((cores, mhz, mem), st) in enumerate(zip(raw, states, strict=True)):
        w.hosts.append(HostSpec(f"host{i:04d}", cores, max(100, int(mhz * cpu_scale)),
                                max(1 * GiB, int(mem * mem_scale) // MiB * MiB), st))
    # A few big-memory hosts (the last 3 names) and ~0.3% huge servers only they can hold, 2-3 per
    # host, whose avoid lists name earlier huge servers: there a full avoid set is often
    # infeasible, which exercises the best-effort (longest feasible prefix) rule.
    biggest = max(h.memory for h in w.hosts)
    for k in range(min(3, n_hosts // 100)):
        w.hosts[-1 - k] = HostSpec(w.hosts[-1 - k].name, 128, 3000, 4 * biggest, "up")
    huge: list[int] = []
    for i in range(0, n_servers, 300):
        i += rng.randrange(min(300, n_servers - i))
        w.servers[i] = (8000, int(biggest * rng.uniform(1.3, 1.9)) // MiB * MiB)
        w.avoid[i] = rng.sample(huge, min(len(huge), rng.randint(0, 4)))
        huge.append(i)
    return w


def facts(h: HostSpec) -> dict[str, Any]:
    return {"cores": h.cores, "mhz": h.mhz, "memory": h.memory, "virt_type": "kvm", "cpu_model": "host",
            "pools": [{"name": "default", "path": f"/var/lib/strato/pools/{h.name}", "available": 4 << 40}]}


# --- pure phases ----------------------------------------------------------------------------------


def pure_loads(w: Workload) -> list[HostLoad]:
    return [HostLoad(h.name, w.cpu_cap(h), w.mem_cap(h), pools={"default": facts(h)["pools"][0]})
            for h in w.hosts if h.state == "up"]


def run_pure(w: Workload, chooser: Any, seconds: float) -> tuple[list[str | None], float]:
    loads = pure_loads(w)
    placed: list[str | None] = []
    elapsed = 0.0
    for i, (cpu, mem) in enumerate(w.servers):
        t0 = time.perf_counter()
        fits = [h.name for h in loads if h.fits(cpu, mem)]
        chosen = chooser(loads, fits, [placed[j] for j in w.avoid[i]])
        if chosen is not None:
            chosen.cpu_used += cpu
            chosen.mem_used += mem
        elapsed += time.perf_counter() - t0
        placed.append(None if chosen is None else chosen.name)
        if elapsed > seconds:
            break
    return placed, elapsed


# --- database phases --------------------------------------------------------------------------------


@dataclass
class DbRun:
    label: str
    attempts: int = 0
    elapsed: float = 0.0
    returned: list[str | None] = field(default_factory=list)   # host place_server returned, None on 503
    statements: int = 0
    cpu: float = 0.0                                            # this process's CPU seconds
    errors: list[str] = field(default_factory=list)


async def setup_db(url: str, w: Workload) -> tuple[Any, Any, list[str], str]:
    engine = make_engine(url)
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    uuids: list[str] = []
    async with sessions.begin() as s:
        user = User(email="bench@example.com", password_hash="x")
        s.add(user)
        await s.flush()
        s.add_all(Host(name=h.name, address="local", agent_command=["true"], state=h.state, facts=facts(h))
                  for h in w.hosts)
        rows = [Server(owner_uuid=user.uuid, name=f"s{i}", cpu=cpu, mem=mem, smp=1, smp_auto=True,
                       vnc_password="x", cpu_type="amd", hypervisor="kvm", cpu_model=None,
                       cpus_instead_of_cores=False, enable_numa=False, hv_relaxed=False, hv_tsc=False,
                       context=False, auto_start=False, is_grey=False, allocation_pool=None, meta={},
                       requirements=[], nics=[], gpus=[], epcs=[], pubkeys=[])
                for i, (cpu, mem) in enumerate(w.servers)]
        s.add_all(rows)
        await s.flush()
        uuids = [r.uuid for r in rows]
        owner = user.uuid
    return engine, sessions, uuids, owner


async def run_db(label: str, w: Workload, scheduler: Scheduler, seconds: float, url: str,
                 concurrency: int = 1) -> tuple[DbRun, Any]:
    """The placements in order: one transaction each under ``scheduler.placing`` (concurrency 1),
    or ``concurrency`` at a time through ``scheduler.batched``, as ``ServerWork.start`` places
    (they are queued in index order, so the decisions are still taken in that order)."""
    engine, sessions, uuids, _owner = await setup_db(url, w)
    run = DbRun(label)
    counter = [0]

    def count(*_a: Any) -> None:
        counter[0] += 1

    async def step(s: Any, i: int) -> str | None:
        server = await s.get(Server, uuids[i])
        assert server is not None
        try:
            chosen = await scheduler.place_server(s, server, [], [uuids[j] for j in w.avoid[i]])
        except DomainError as err:
            if err.kind is not Kind.NO_CAPACITY:
                raise
            return None  # nothing written: the claim found no host
        server.status = "starting"
        return chosen.name

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    for first in range(0, len(w.servers), concurrency):
        window = range(first, min(first + concurrency, len(w.servers)))
        if concurrency == 1:
            # As ServerWork.start used to: one transaction per placement, under the scheduler lock.
            async with scheduler.placing(sessions) as s:
                run.returned.append(await step(s, first))
        else:
            run.returned += await asyncio.gather(*(scheduler.batched(sessions, lambda s, i=i: step(s, i))
                                                   for i in window))
        run.attempts += len(window)
        if time.perf_counter() - t_start > seconds:
            break
    run.elapsed, run.cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    run.statements = counter[0]
    event.remove(engine.sync_engine, "before_cursor_execute", count)
    return run, (engine, sessions, uuids)


# --- invariant checks -------------------------------------------------------------------------------


@dataclass
class Check:
    over_capacity_hosts: int = 0        # from the database's sums
    not_up_placements: int = 0
    unfit_at_decision: int = 0
    feasible_avoid_violations: int = 0
    prefix_violations: int = 0          # best effort: the longest feasible prefix not avoided
    spurious_503: int = 0
    claim_mismatch: int = 0             # place_server's answer vs the committed servers.host
    counter_mismatch: int = 0           # hosts whose cpu_used/mem_used differ from their servers' sums
    with_avoid: int = 0
    full_avoid_feasible: int = 0
    full_avoid_infeasible: int = 0
    rejected: int = 0
    mem_fill: float = 0.0
    cpu_fill: float = 0.0

    def violations(self) -> int:
        return (self.over_capacity_hosts + self.not_up_placements + self.unfit_at_decision
                + self.feasible_avoid_violations + self.prefix_violations + self.spurious_503 + self.claim_mismatch
                + self.counter_mismatch)


def replay(w: Workload, outcome: list[str | None], check: Check) -> dict[str, list[float]]:
    """Brute force, independent of ``choose``: the state before each decision, rebuilt in order."""
    up = [h for h in w.hosts if h.state == "up"]
    used = {h.name: [0, 0] for h in w.hosts}
    state = {h.name: h.state for h in w.hosts}
    caps = {h.name: (w.cpu_cap(h), w.mem_cap(h)) for h in w.hosts}
    for i, got in enumerate(outcome):
        cpu, mem = w.servers[i]
        fitting = [h.name for h in up if used[h.name][0] + cpu <= caps[h.name][0]
                   and used[h.name][1] + mem <= caps[h.name][1]]
        avoid_hosts = [outcome[j] for j in w.avoid[i]]
        if w.avoid[i]:
            check.with_avoid += 1
        if got is None:
            check.rejected += 1
            if fitting:
                check.spurious_503 += 1
            continue
        if state[got] != "up":
            check.not_up_placements += 1
        if got not in fitting:
            check.unfit_at_decision += 1
        banned_full = {h for h in avoid_hosts if h is not None}
        if w.avoid[i]:
            if any(h not in banned_full for h in fitting):
                check.full_avoid_feasible += 1
                if got in banned_full:
                    check.feasible_avoid_violations += 1
            else:
                check.full_avoid_infeasible += 1
                for keep in range(len(avoid_hosts), -1, -1):
                    banned = {h for h in avoid_hosts[:keep] if h is not None}
                    if any(h not in banned for h in fitting):
                        if got in banned:
                            check.prefix_violations += 1
                        break
        used[got][0] += cpu
        used[got][1] += mem
    check.mem_fill = sum(used[h.name][1] for h in up) / sum(w.mem_cap(h) for h in up)
    check.cpu_fill = sum(used[h.name][0] for h in up) / sum(w.cpu_cap(h) for h in up)
    return used


async def check_db(w: Workload, run: DbRun, db: Any) -> Check:
    _engine, sessions, uuids = db
    check = Check()
    n = run.attempts
    async with sessions() as s:
        hosts = {h.name: h for h in (await s.scalars(select(Host))).all()}
        committed = dict((await s.execute(select(Server.uuid, Server.host))).all())
        sums = (await s.execute(select(Server.host, func.sum(Server.cpu), func.sum(Server.mem))
                                .where(Server.host.is_not(None)).group_by(Server.host))).all()
    for host, cpu, mem in sums:
        f = hosts[host].facts
        if cpu > f["cores"] * f["mhz"] * w.cpu_overcommit or mem > f["memory"] * w.mem_overcommit:
            check.over_capacity_hosts += 1
    outcome = [committed[uuids[i]] for i in range(n)]
    check.claim_mismatch = sum(a != b for a, b in zip(outcome, run.returned, strict=True))
    if any(committed[u] is not None for u in uuids[n:]):
        check.claim_mismatch += 1
    used = replay(w, outcome, check)
    db_used = {h: (int(c), int(m)) for h, c, m in sums}
    if {h: tuple(v) for h, v in used.items() if v != [0, 0]} != db_used:
        check.claim_mismatch += 1
    check.counter_mismatch = await counter_mismatches(sessions)
    # Stops release claims; a reconnection recounts them: the counters must still be the sums.
    stopped = uuids[: n : 10]
    for uuid in stopped:
        async with sessions.begin() as s:
            server = await s.get(Server, uuid)
            if server is not None and server.host is not None:
                await record_stopped(s, server)
    check.counter_mismatch += await counter_mismatches(sessions)
    async with sessions.begin() as s:
        await recount(s)
    check.counter_mismatch += await counter_mismatches(sessions)
    return check


async def counter_mismatches(sessions: Any) -> int:
    async with sessions() as s:
        sums = {h: (int(c), int(m)) for h, c, m in (await s.execute(
            select(Server.host, func.sum(Server.cpu), func.sum(Server.mem))
            .where(Server.host.is_not(None)).group_by(Server.host))).all()}
        counters = (await s.execute(select(Host.name, Host.cpu_used, Host.mem_used))).all()
    return sum((cpu, mem) != sums.get(name, (0, 0)) for name, cpu, mem in counters)


def print_check(c: Check) -> None:
    print(f"    placements with an avoid list: {c.with_avoid}  (full set feasible {c.full_avoid_feasible}, "
          f"infeasible -> best effort {c.full_avoid_infeasible});  503s: {c.rejected};  "
          f"fill: mem {c.mem_fill:.1%}, cpu {c.cpu_fill:.1%}")
    print(f"    violations: over-capacity hosts {c.over_capacity_hosts}, unfit at decision {c.unfit_at_decision}, "
          f"on non-up host {c.not_up_placements}, feasible-avoid {c.feasible_avoid_violations}, "
          f"best-effort prefix {c.prefix_violations}, spurious 503 {c.spurious_503}, "
          f"claim mismatch {c.claim_mismatch}, claim counters {c.counter_mismatch}  => total {c.violations()}")


# --- profile ----------------------------------------------------------------------------------------


async def profile(db: Any, w: Workload, reps: int) -> None:
    engine, sessions, uuids = db
    sched = Scheduler()
    rng = random.Random(1)
    counter = [0]

    def count(*_a: Any) -> None:
        counter[0] += 1

    parts: dict[str, list[float]] = {k: [] for k in ("hosts_of(4)", "candidates (fitting, best 5)", "choose()",
                                                     "claim UPDATE", "commit")}
    async with sessions() as s:
        placed = [u for u, h in (await s.execute(select(Server.uuid, Server.host))).all() if h]
        owner = (await s.scalar(select(User.uuid)))
    for _ in range(reps):
        s = sessions()
        await s.begin()
        t = time.perf_counter()
        avoid_hosts = await hosts_of(s, rng.sample(placed, min(4, len(placed))), owner)
        parts["hosts_of(4)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        rows = (await s.execute(select(Host.name, Host.state, Host.cpu_capacity, Host.mem_capacity, Host.cpu_used,
                                       Host.mem_used).where(sched._fitting(250, 256 * MiB))
                                .order_by(sched._headroom().desc(), Host.name).limit(5))).all()
        loads = [sched._load(row) for row in rows]
        parts["candidates (fitting, best 5)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        chosen = choose(loads, [h.name for h in loads], avoid_hosts)
        parts["choose()"].append(time.perf_counter() - t)
        t = time.perf_counter()
        if chosen is not None:
            await s.execute(update(Host).where(Host.name == chosen.name, sched._fitting(250, 256 * MiB))
                            .values(cpu_used=Host.cpu_used + 250, mem_used=Host.mem_used + 256 * MiB))
        parts["claim UPDATE"].append(time.perf_counter() - t)
        t = time.perf_counter()
        await s.rollback()  # leave the counters as the servers say
        await s.close()
        parts["commit"].append(time.perf_counter() - t)
    print(f"  profile on the filled database ({reps} reps, median ms):")
    for k, v in parts.items():
        print(f"    {k:30s} {statistics.median(v) * 1000:8.2f}")
    # Statement count of one shipping placement.
    event.listen(engine.sync_engine, "before_cursor_execute", count)
    async with sessions() as s:
        server = await s.get(Server, uuids[-1])
        server.host = None
        counter[0] = 0
        with contextlib.suppress(DomainError):
            await sched.place_server(s, server, [], [])
        n_ship = counter[0]
        await s.rollback()
    event.remove(engine.sync_engine, "before_cursor_execute", count)
    print(f"    SQL statements per place_server: {n_ship}")


# --- main -------------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", default="1000,10000", help="comma-separated host counts")
    parser.add_argument("--placements", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--db-seconds", type=float, default=60.0, help="cap per database phase")
    parser.add_argument("--pure-seconds", type=float, default=20.0, help="cap per pure phase")
    parser.add_argument("--profile-reps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32, help="placements arriving together (phase D)")
    args = parser.parse_args()
    backends = args.backends.split(",")
    results: list[tuple[int, str, float, int]] = []  # hosts, phase, placements/s, violations
    # The machine may be shared: per CPU-second of this process is the figure load does not move
    # (for PostgreSQL the server's own CPU is not in it).

    with contextlib.ExitStack() as stack:
        pg = None
        if "postgresql" in backends:
            from tests.store.conftest import new_database, throwaway_postgres
            pg = stack.enter_context(throwaway_postgres())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="strato-bench-sched-", dir="/var/tmp")))
        for n_hosts in (int(h) for h in args.hosts.split(",")):
            w = make_workload(n_hosts, args.placements, args.seed)
            n_up = sum(h.state == "up" for h in w.hosts)
            print(f"workload: {len(w.hosts)} hosts ({n_up} up), {len(w.servers)} placements, "
                  f"avoid lists of 0-4 earlier servers (seed {args.seed})")
            print("A. pure choose() (shipping), in memory")
            cpu_start = time.process_time()
            a_placed, a_time = run_pure(w, choose, args.pure_seconds)
            rate = len(a_placed) / a_time
            print(f"  ({len(a_placed) / (time.process_time() - cpu_start):,.0f} per CPU-second)")
            print(f"  {len(a_placed)}/{len(w.servers)} placements in {a_time:.2f} s: {rate:,.0f} placements/s"
                  + ("  (capped)" if len(a_placed) < len(w.servers) else ""))
            c = Check()
            replay(w, a_placed, c)
            print_check(c)
            results.append((n_hosts, "pure choose()", rate, c.violations()))
            for backend in backends:
                if backend == "sqlite":
                    url = sqlite_url(tmp / f"{n_hosts}.sqlite3")
                else:
                    assert pg is not None
                    url = new_database(pg, f"bench{n_hosts}")
                for concurrency in (1, args.concurrency) if hasattr(Scheduler, "batched") else (1,):
                    if concurrency == 1:
                        phase = f"place_server {backend}"
                        print(f"C. Scheduler.place_server, {backend}, one transaction per placement")
                    else:
                        phase = f"batched c={concurrency} {backend}"
                        print(f"D. Scheduler.batched, {backend}, {concurrency} placements arriving together "
                              f"(one commit per batch)")
                    db_url = url if concurrency == 1 else (sqlite_url(tmp / f"{n_hosts}-batched.sqlite3")
                                                           if backend == "sqlite"
                                                           else new_database(pg, f"bench{n_hosts}b"))
                    run, db = await run_db(backend, w, Scheduler(), args.db_seconds, db_url, concurrency)
                    rate = run.attempts / run.elapsed
                    print(f"  {run.attempts}/{len(w.servers)} placements in {run.elapsed:.2f} s: "
                          f"{rate:,.1f} placements/s ({run.attempts / run.cpu:,.0f} per CPU-second of this "
                          f"process), {run.statements / max(1, run.attempts):.1f} SQL "
                          f"statements per placement" + ("  (capped)" if run.attempts < len(w.servers) else ""))
                    if concurrency == 1:
                        await profile(db, w, args.profile_reps)
                    check = await check_db(w, run, db)
                    print_check(check)
                    await db[0].dispose()
                    results.append((n_hosts, phase, rate, check.violations()))

    print("summary (placements/s, this run; the pure choose() of the same workload is the baseline):")
    for n_hosts, phase, rate, violations in results:
        backend = phase.rpartition(" ")[2]
        target = TARGETS.get(backend) if n_hosts == 1000 else None
        verdict = "" if target is None else (f"  target >= {target:,.0f}: "
                                             + ("MET" if rate >= target and not violations else "MISSED"))
        print(f"  {n_hosts:>6} hosts  {phase:<26} {rate:10,.1f}   violations {violations}{verdict}")


if __name__ == "__main__":
    asyncio.run(main())
