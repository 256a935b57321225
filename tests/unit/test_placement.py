"""Placement rules (orchestrator/domain/placement.py): the pure choice, and the scheduler on a migrated SQLite store."""

from __future__ import annotations

import asyncio
import shutil
from functools import partial

import pytest
from sqlalchemy import select

from orchestrator.db.engine import make_engine, make_sessionmaker, migrate
from orchestrator.db.models import Drive, Host, Server, User
from orchestrator.domain.errors import DomainError, Kind
from orchestrator.domain.placement import HostLoad, Scheduler, choose, recount, shares_pool

GiB = 2**30

# --- choose() ------------------------------------------------------------------------------------


def load(name: str, cpu_used: int = 0, mem_used: int = 0) -> HostLoad:
    return HostLoad(name, cpu_capacity=10_000, mem_capacity=10 * GiB, cpu_used=cpu_used, mem_used=mem_used)


HOSTS = [load("a", cpu_used=1000), load("b", cpu_used=5000), load("c", mem_used=8 * GiB)]  # headroom .9 .5 .2


def chosen(fits=("a", "b", "c"), avoid=(), **kwargs) -> str | None:
    host = choose(HOSTS, fits, list(avoid), **kwargs)
    return None if host is None else host.name


def test_choose_takes_the_most_headroom():
    assert chosen() == "a"
    assert chosen(fits=["b", "c"]) == "b"


def test_headroom_is_the_scarcer_of_cpu_and_memory():
    assert chosen(fits=["c", "b"]) == "b"  # c's cpu is idle but its memory is 80 % used


def test_choose_avoids_the_hosts_of_avoided_objects():
    assert chosen(avoid=["a"]) == "b"
    assert chosen(avoid=["a", "b"]) == "c"
    assert chosen(avoid=[None, "a"]) == "b"  # an avoided object without a host bans nothing


def test_choose_gives_up_avoids_from_the_right():
    # Every host avoided: drop the last avoid (b) first, keep the first ones.
    assert chosen(avoid=["a", "c", "b"]) == "b"
    assert chosen(avoid=["b", "a", "c"]) == "c"
    assert chosen(fits=["a", "b"], avoid=["b", "a"]) == "a"  # not even the first one can be kept


def test_no_feasible_host():
    assert chosen(fits=[]) is None
    assert chosen(fits=["elsewhere"]) is None
    assert choose([], ["a"], []) is None


def test_choose_by_another_key():
    assert chosen(key=lambda h: h.name) == "c"


def test_fits_counts_the_claims_already_made():
    host = HostLoad("h", cpu_capacity=4000, mem_capacity=4 * GiB, cpu_used=3000, mem_used=3 * GiB)
    assert host.fits(1000, GiB)
    assert not host.fits(1001, GiB)
    assert not host.fits(1000, GiB + 1)


# --- the scheduler on a store ----------------------------------------------------------------------

ALICE, BOB = "00000000-0000-0000-0000-00000000a11c", "00000000-0000-0000-0000-000000000b0b"


@pytest.fixture(scope="module")
async def migrated(tmp_path_factory):
    """One migrated database file; each test works on its own copy."""
    path = tmp_path_factory.mktemp("placement") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    await migrate(engine)
    async with make_sessionmaker(engine).begin() as s:
        s.add_all([User(uuid=ALICE, email="alice@example.com", password_hash="-"),
                   User(uuid=BOB, email="bob@example.com", password_hash="-")])
    await engine.dispose()
    return path


@pytest.fixture
async def sessions(migrated, tmp_path):
    shutil.copy(migrated, tmp_path / "x.db")
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    yield make_sessionmaker(engine)
    await engine.dispose()


def host(name: str, cores: int = 2, mhz: int = 1000, memory: int = 4 * GiB, state: str = "up",
         pools: tuple[dict, ...] = ({"name": "local", "path": "/var/lib/strato", "available": 100 * GiB},)) -> Host:
    return Host(name=name, address="local", agent_command=[], state=state,
                facts={"cores": cores, "mhz": mhz, "memory": memory, "pools": list(pools)})


def pool(name: str, path: str, available: int = 100 * GiB) -> dict:
    return {"name": name, "path": path, "available": available}


def server(cpu: int = 1000, mem: int = 2**20, owner: str = ALICE, host: str | None = None) -> Server:
    return Server(owner_uuid=owner, name="s", cpu=cpu, mem=mem, smp=1, smp_auto=True, vnc_password="x",
                  cpu_type="amd", hypervisor="kvm", cpus_instead_of_cores=False, enable_numa=False,
                  hv_relaxed=False, hv_tsc=False, context=True, auto_start=False, is_grey=False, meta={},
                  requirements=[], nics=[], gpus=[], epcs=[], pubkeys=[], host=host,
                  status="stopped" if host is None else "running")


def drive(size: int = GiB, owner: str = ALICE, host: str | None = None, pool: str | None = None,
          storage_type: str = "dssd") -> Drive:
    return Drive(owner_uuid=owner, name="d", size=size, media="disk", storage_type=storage_type, affinities=[],
                 allow_multimount=False, meta={}, host=host, pool=pool, status="unmounted")


async def add(sessions, *rows) -> None:
    """Rows as they would be: servers given a host hold their claim there (the counters recounted)."""
    async with sessions.begin() as s:
        s.add_all(rows)
        await s.flush()
        await recount(s)


async def place(scheduler: Scheduler, sessions, new: Server, volumes=(), avoid=()) -> str:
    """Place ``new`` in one placing transaction and keep its claim, as a start does."""
    async with scheduler.placing(sessions) as s:
        s.add(new)
        return (await scheduler.place_server(s, new, list(volumes), list(avoid))).name


async def test_capacity_is_never_exceeded_under_overcommit(sessions):
    # 2 cores × 1000 MHz × cpu overcommit 3 = 6000 MHz; 8 GiB × mem overcommit 1.5 = 12 GiB.
    await add(sessions, host("a", cores=2, mhz=1000, memory=8 * GiB))
    scheduler = Scheduler(cpu_overcommit=3.0, mem_overcommit=1.5)
    for _ in range(3):
        assert await place(scheduler, sessions, server(cpu=2000, mem=GiB)) == "a"
    with pytest.raises(DomainError) as full:
        await place(scheduler, sessions, server(cpu=1, mem=1))
    assert full.value.kind is Kind.NO_CAPACITY
    async with sessions() as s:
        [a] = await scheduler.loads(s)
    assert (a.cpu_used, a.mem_used) == (6000, 3 * GiB)


async def test_memory_is_never_exceeded_under_overcommit(sessions):
    await add(sessions, host("a", cores=2, mhz=1000, memory=8 * GiB))
    scheduler = Scheduler(cpu_overcommit=100.0, mem_overcommit=1.5)  # 12 GiB
    for _ in range(4):
        assert await place(scheduler, sessions, server(cpu=1, mem=3 * GiB)) == "a"
    with pytest.raises(DomainError) as full:
        await place(scheduler, sessions, server(cpu=1, mem=1))
    assert full.value.kind is Kind.NO_CAPACITY


async def test_servers_go_where_there_is_most_headroom(sessions):
    await add(sessions, host("a", cores=4), host("b", cores=2))
    scheduler = Scheduler(cpu_overcommit=1.0, mem_overcommit=1.0)  # a: 4000 MHz, b: 2000 MHz, 4 GiB each
    placed = [await place(scheduler, sessions, server(cpu=1000)) for _ in range(6)]
    # headroom (a, b) before each: (1, 1) tie → first by name, (.75, 1), (.75, .5), (.5, .5), (.25, .5), (.25, 0)
    assert placed == ["a", "b", "a", "a", "b", "a"]
    with pytest.raises(DomainError) as full:
        await place(scheduler, sessions, server(cpu=1000, mem=GiB // 4))
    assert full.value.kind is Kind.NO_CAPACITY
    assert str(full.value) == "No host can fit this server now (capacity, or a host that sees all its drives)"


async def test_only_hosts_that_are_up_run_servers(sessions):
    await add(sessions, host("a", cores=1), host("big-down", cores=64, state="down"),
              host("big-draining", cores=64, state="draining"))
    assert await place(Scheduler(), sessions, server()) == "a"
    with pytest.raises(DomainError) as full:
        await place(Scheduler(), sessions, server(cpu=5000))
    assert full.value.kind is Kind.NO_CAPACITY


async def test_an_rbd_drive_is_seen_by_every_host_that_reaches_its_ceph_pool(sessions):
    ceph = {"name": "ceph", "path": "rbd://10.0.0.1:6789/strato", "available": 100 * GiB, "kind": "rbd"}
    other = {**ceph, "path": "rbd://10.9.9.9:6789/strato"}  # another cluster under the same pool name
    await add(sessions,
              host("a", cores=16, pools=(pool("local", "/srv/a"),)),  # cannot reach Ceph: no "ceph" pool
              host("b", cores=1, pools=(pool("local", "/srv/b"), ceph)),
              host("c", cores=2, pools=(pool("local", "/srv/c"), ceph)),
              host("d", cores=32, pools=(pool("local", "/srv/d"), other)),
              server(host="b"))
    scheduler = Scheduler()
    # The drive was made through b; c reaches the same pool and has more room; a and d never qualify.
    assert await place(scheduler, sessions, server(), [("b", "ceph")]) == "c"
    assert await place(scheduler, sessions, server(), []) == "a"  # a qualifies for a server without drives
    source, target = drive(host="b", pool="ceph"), drive(host="c", pool="ceph")
    elsewhere, local = drive(host="d", pool="ceph"), drive(host="c", pool="local")
    async with sessions() as s:
        assert await shares_pool(s, source, target)  # c clones b's image in place
        assert not await shares_pool(s, source, elsewhere) and not await shares_pool(s, source, local)


async def test_a_server_runs_where_its_drives_are_seen(sessions):
    await add(sessions,
              host("a", cores=1, pools=(pool("local", "/srv/a"), pool("shared", "/mnt/nfs"))),
              host("b", cores=8, pools=(pool("local", "/srv/b"), pool("shared", "/mnt/nfs"))),
              host("c", cores=16, pools=(pool("local", "/srv/a"),)),
              host("store", state="down", pools=(pool("shared", "/mnt/nfs"),)),
              server(host="a"))  # a: 1000 of 4000 MHz used, the others idle
    scheduler = Scheduler()
    # A local pool's directory exists on another host by the same path: c sees a's "local" pool.
    assert await place(scheduler, sessions, server(), [("a", "local")]) == "c"
    # b has a "local" pool too, but another directory: only a and c see b's.
    assert await place(scheduler, sessions, server(), [("b", "local")]) == "b"
    assert await place(scheduler, sessions, server(), [("a", "shared"), ("a", "local")]) == "a"
    # A shared pool is seen wherever it is mounted, even when its storage host is down.
    assert await place(scheduler, sessions, server(), [("store", "shared")]) == "b"  # a is half used now
    for volumes in ([("b", "local"), ("a", "local")], [("nowhere", "local")], [("a", "missing")]):
        with pytest.raises(DomainError) as unseen:
            await place(scheduler, sessions, server(), volumes)
        assert unseen.value.kind is Kind.NO_CAPACITY


async def test_avoid_by_uuid_counts_only_the_callers_objects(sessions):
    mine_on_a, bobs_on_a = server(cpu=10, host="a"), server(cpu=10, owner=BOB, host="a")
    mine_on_b = server(cpu=20000, host="b")
    my_drive_on_a = drive(host="a", pool="local")
    await add(sessions, host("a", cores=8), host("b", cores=8), mine_on_a, bobs_on_a, mine_on_b, my_drive_on_a)
    scheduler = Scheduler()
    assert await place(scheduler, sessions, server(cpu=10)) == "a"  # b carries more load
    assert await place(scheduler, sessions, server(cpu=10), avoid=[mine_on_a.uuid]) == "b"
    assert await place(scheduler, sessions, server(cpu=10), avoid=[my_drive_on_a.uuid]) == "b"
    assert await place(scheduler, sessions, server(cpu=10), avoid=[bobs_on_a.uuid]) == "a"
    assert await place(scheduler, sessions, server(cpu=10), avoid=["00000000-0000-0000-0000-000000000000"]) == "a"
    # Best effort: when the avoided host is the only one that fits, the server still starts there.
    assert await place(scheduler, sessions, server(cpu=15000), avoid=[mine_on_a.uuid]) == "a"


async def place_drive(scheduler: Scheduler, sessions, new: Drive, avoid=()) -> tuple[str, str | None]:
    async with scheduler.placing(sessions) as s:
        name = await scheduler.place_drive(s, new, list(avoid))
    assert name == new.host
    return new.host, new.pool


async def test_a_drive_goes_to_a_pool_with_room(sessions):
    await add(sessions, host("a", pools=(pool("local", "/srv/a", available=10 * GiB),)),
              host("b", pools=(pool("local", "/srv/b", available=50 * GiB),)),
              host("c", state="down", pools=(pool("local", "/srv/c", available=1000 * GiB),)))
    scheduler = Scheduler()
    assert await place_drive(scheduler, sessions, drive(size=5 * GiB)) == ("b", "local")
    assert await place_drive(scheduler, sessions, drive(size=50 * GiB)) == ("b", "local")
    with pytest.raises(DomainError) as full:
        await place_drive(scheduler, sessions, drive(size=50 * GiB + 1))
    assert full.value.kind is Kind.NO_CAPACITY
    assert str(full.value) == "We currently cannot provide enough resources to create a dssd drive"


async def test_free_space_ties_go_to_the_first_host_by_name(sessions):
    # Same whole GiB free (one filesystem seen twice): the first host by name, whatever the bytes.
    await add(sessions, host("b", pools=(pool("local", "/srv", available=20 * GiB + 999),)),
              host("a", pools=(pool("local", "/srv", available=20 * GiB),)))
    assert await place_drive(Scheduler(), sessions, drive()) == ("a", "local")


async def test_storage_type_picks_the_pool(sessions):
    await add(sessions,
              host("a", pools=(pool("local", "/srv/a", available=900 * GiB), pool("fast", "/ssd/a", available=GiB))),
              host("b", pools=(pool("local", "/srv/b", available=100 * GiB),)))
    scheduler = Scheduler(storage_pools={"dssd": "fast"})
    assert await place_drive(scheduler, sessions, drive(size=GiB)) == ("a", "fast")
    with pytest.raises(DomainError) as full:
        await place_drive(scheduler, sessions, drive(size=2 * GiB))
    assert full.value.kind is Kind.NO_CAPACITY
    # A type without a pool of its own uses each host's first pool.
    assert await place_drive(scheduler, sessions, drive(storage_type="zadara")) == ("a", "local")


async def test_drive_avoid_counts_only_the_callers_objects(sessions):
    mine, bobs = drive(host="a", pool="local"), drive(owner=BOB, host="a", pool="local")
    await add(sessions, host("a", pools=(pool("local", "/srv/a", available=90 * GiB),)),
              host("b", pools=(pool("local", "/srv/b", available=80 * GiB),)), mine, bobs)
    scheduler = Scheduler()
    assert await place_drive(scheduler, sessions, drive()) == ("a", "local")
    assert await place_drive(scheduler, sessions, drive(), avoid=[mine.uuid]) == ("b", "local")
    assert await place_drive(scheduler, sessions, drive(owner=BOB), avoid=[mine.uuid]) == ("a", "local")
    assert await place_drive(scheduler, sessions, drive(), avoid=[bobs.uuid]) == ("a", "local")


async def test_claims_are_counters_on_the_host_released_on_stop_and_recounted(sessions):
    from sqlalchemy import update as sql_update

    from orchestrator.db.models import Host as HostRow
    from orchestrator.domain.transitions import record_stopped

    await add(sessions, host("a", cores=2, mhz=1000, memory=8 * GiB))
    scheduler = Scheduler(cpu_overcommit=1.0, mem_overcommit=1.0)
    first, second = server(cpu=500, mem=GiB), server(cpu=700, mem=2 * GiB)
    await place(scheduler, sessions, first)
    await place(scheduler, sessions, second)
    async with sessions() as s:
        row = await s.get(HostRow, "a")
        assert (row.cpu_capacity, row.mem_capacity, row.cpu_used, row.mem_used) == (2000, 8 * GiB, 1200, 3 * GiB)
    async with sessions.begin() as s:
        await record_stopped(s, await s.get(Server, first.uuid))
    async with sessions() as s:
        assert ((await s.get(HostRow, "a")).cpu_used, (await s.get(HostRow, "a")).mem_used) == (700, 2 * GiB)
    # Counters gone wrong (a crash, another node): a reconnection's recount restores the servers' sum.
    async with sessions.begin() as s:
        await s.execute(sql_update(HostRow).values(cpu_used=1999, mem_used=0))
        await recount(s, "a")
    async with sessions() as s:
        row = await s.get(HostRow, "a")
        assert (row.cpu_used, row.mem_used) == (700, 2 * GiB)


async def test_a_claim_never_overfills_a_host_that_another_node_filled_first(sessions):
    from sqlalchemy import update as sql_update

    from orchestrator.db.models import Host as HostRow

    await add(sessions, host("a", cores=1, mhz=1000, memory=4 * GiB), host("b", cores=1, mhz=1000, memory=4 * GiB))
    scheduler = Scheduler(cpu_overcommit=1.0, mem_overcommit=1.0)
    async with sessions.begin() as s:  # another API node filled a: only its counters say so
        await s.execute(sql_update(HostRow).where(HostRow.name == "a").values(cpu_used=1000))
    assert await place(scheduler, sessions, server(cpu=600)) == "b"
    with pytest.raises(DomainError):
        await place(scheduler, sessions, server(cpu=600))


async def test_placements_arriving_together_share_a_commit_and_a_failure_costs_only_itself(sessions):
    """Scheduler.batched: three starts at once, the middle one refused (nothing fits it): the other
    two are placed and committed, the refusal reaches only its caller, and the counters hold only
    the two claims."""
    await add(sessions, host("a", cores=2, mhz=1000, memory=4 * GiB))
    scheduler = Scheduler(cpu_overcommit=1.0, mem_overcommit=1.0)
    small, huge, other = server(cpu=500), server(cpu=5000), server(cpu=700)
    async with sessions.begin() as s:
        s.add_all([small, huge, other])
    commits = []

    async def start(uuid: str, s) -> str:
        commits.append(id(s))
        row = await s.get(Server, uuid)
        return (await scheduler.place_server(s, row, [], [])).name

    results = await asyncio.gather(*(scheduler.batched(sessions, partial(start, row.uuid))
                                     for row in (small, huge, other)), return_exceptions=True)
    assert results[0] == "a" and results[2] == "a"
    assert isinstance(results[1], DomainError) and results[1].kind is Kind.NO_CAPACITY
    # one shared transaction until the refusal, then each of the three alone
    assert len(commits) == 5 and commits[0] == commits[1]
    async with sessions() as s:
        placed = dict((await s.execute(select(Server.uuid, Server.host))).all())
        used = (await s.execute(select(Host.cpu_used).where(Host.name == "a"))).scalar_one()
    assert placed == {small.uuid: "a", huge.uuid: None, other.uuid: "a"}
    assert used == 1200
