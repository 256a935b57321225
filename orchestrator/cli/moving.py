"""Moving running servers: ``strato servers migrate`` and ``strato hosts drain|evacuate``.

The running API node does the moving (it holds the host connections): these commands queue
``server_migrate`` jobs in the store, wake the node (orchestrator/db/wake.py) and follow the jobs
there, printing progress on stderr and the outcome as JSON on stdout.  They leave the schema to
the node (it migrated it at its start) and import only the store: they start in a fraction of the
time ``strato serve`` takes to import.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from orchestrator.cli.admin import load_config
from orchestrator.db.engine import make_engine, make_sessionmaker
from orchestrator.db.models import Host, Job, Server, new_uuid
from orchestrator.db.wake import wake_at_commit
from orchestrator.domain.lifecycle import Status
from orchestrator.domain.uris import uri

# Seconds between looks at the queued jobs: often at first (a migration takes seconds), then
# seldom (a drain of many servers or a copy of large drives takes minutes).
POLL, POLL_LATER, FAST_FOR = 0.05, 0.5, 10.0


async def queue(s: AsyncSession, server: Server, to: str | None, operation: str = "server_migrate") -> str:
    """A job for the API node, which is woken when the transaction commits."""
    job = Job(uuid=new_uuid(), owner_uuid=server.owner_uuid, operation=operation, state="started", progress=0,
              resources=[uri("servers", server.uuid)], source_uuid=server.uuid, params={"queued": True, "to": to})
    s.add(job)
    await wake_at_commit(s)
    return job.uuid


async def wait_jobs(sessions: async_sessionmaker, jobs: list[str], timeout: float) -> dict[str, Job]:
    """Until every job ended (or ``timeout``): the jobs as they are then."""
    began = time.monotonic()
    while True:
        async with sessions() as s:
            rows = {j.uuid: j for j in (await s.scalars(select(Job).where(Job.uuid.in_(jobs)))).all()}
        waited = time.monotonic() - began
        if all(j.state != "started" for j in rows.values()) or waited > timeout:
            return rows
        await asyncio.sleep(POLL if waited < FAST_FOR else POLL_LATER)


def outcome(job: Job) -> dict[str, Any]:
    params = job.params or {}
    return {"server": job.source_uuid, "job": job.uuid, "state": job.state, "from": params.get("source"),
            "to": params.get("target"), "error": job.error}


async def migrate_one(sessions: async_sessionmaker, uuid: str, to: str | None, timeout: float) -> dict[str, Any]:
    async with sessions.begin() as s:
        server = await s.get(Server, uuid)
        if server is None:
            raise ValueError(f"no server {uuid}")
        if server.status != Status.RUNNING:
            raise ValueError(f"server {uuid} is {server.status}, not running")
        if to is not None and await s.get(Host, to) is None:
            raise ValueError(f"no host {to}")
        job = await queue(s, server, to)
    return outcome((await wait_jobs(sessions, [job], timeout))[job])


async def drain(sessions: async_sessionmaker, name: str, parallel: int, timeout: float) -> dict[str, Any]:
    """Place nothing new on ``name``, then move its running servers ``parallel`` at a time."""
    async with sessions.begin() as s:
        host = await s.get(Host, name)
        if host is None:
            raise ValueError(f"no host {name}")
        host.state = "draining"
        servers = (await s.scalars(select(Server).where(Server.host == name).order_by(Server.uuid))).all()
        running = [sv.uuid for sv in servers if sv.status == Status.RUNNING]
        cannot = {sv.uuid: f"status {sv.status}: only running servers move" for sv in servers
                  if sv.status != Status.RUNNING}
    moved: list[dict[str, Any]] = []
    pending = list(running)
    deadline = time.monotonic() + timeout
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        async with sessions.begin() as s:
            jobs = [await queue(s, sv, None) for sv in (await s.scalars(
                select(Server).where(Server.uuid.in_(batch)))).all()]
        for job in (await wait_jobs(sessions, jobs, max(deadline - time.monotonic(), 1))).values():
            result = outcome(job)
            if job.state == "success":
                moved.append(result)
            else:
                cannot[result["server"]] = job.error or "still moving when the drain gave up"
            done = len(moved) + len(cannot)
            print(f"drain {name}: {done}/{len(running) + len(cannot)} {result['server']} "
                  f"{'to ' + str(result['to']) if job.state == 'success' else 'not moved: ' + str(job.error)}",
                  file=sys.stderr, flush=True)
    return {"host": name, "moved": moved, "cannot_move": cannot}


async def evacuate(sessions: async_sessionmaker, name: str, timeout: float) -> dict[str, Any]:
    """A dead host's servers started on other hosts (their drives on shared storage)."""
    async with sessions.begin() as s:
        host = await s.get(Host, name)
        if host is None:
            raise ValueError(f"no host {name}")
        if host.state == "up":
            raise ValueError(f"host {name} is up: drain it (live migration) instead")
        host.state = "draining"  # when it comes back it takes nothing new until `hosts resume`
        servers = (await s.scalars(select(Server).where(Server.host == name).order_by(Server.uuid))).all()
        jobs = [await queue(s, server, None, "server_evacuate") for server in servers]
    done = await wait_jobs(sessions, jobs, timeout)
    results = [outcome(job) for job in done.values()]
    return {"host": name, "restarted": [r for r in results if r["state"] == "success"],
            "cannot_move": {r["server"]: r["error"] or "still starting" for r in results if r["state"] != "success"}}


async def _with_sessions(args: argparse.Namespace, work: Any) -> Any:
    engine = make_engine(load_config(args).db_url)
    try:
        return await work(make_sessionmaker(engine))
    except (OperationalError, ProgrammingError) as err:  # no tables: no API node ever ran on this store
        raise ValueError(f"the store has no Strato schema ({err.orig}): start the API node (strato serve) "
                         "first") from None
    finally:
        await engine.dispose()


def _run(args: argparse.Namespace, work: Any, ok: Any) -> int:
    try:
        result = asyncio.run(_with_sessions(args, work))
    except ValueError as e:
        print(f"strato: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0 if ok(result) else 1


def servers_migrate(args: argparse.Namespace) -> int:
    return _run(args, lambda sessions: migrate_one(sessions, args.uuid, args.to, args.timeout),
                lambda result: result["state"] == "success")


def hosts_drain(args: argparse.Namespace) -> int:
    return _run(args, lambda sessions: drain(sessions, args.name, args.parallel, args.timeout),
                lambda result: not result["cannot_move"])


def hosts_evacuate(args: argparse.Namespace) -> int:
    if not args.cold:
        print("strato: evacuate restarts the servers of a dead host: say so with --cold "
              "(a live host: strato hosts drain)", file=sys.stderr)
        return 2
    return _run(args, lambda sessions: evacuate(sessions, args.name, args.timeout),
                lambda result: not result["cannot_move"])


def add_moving_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    servers = sub.add_parser("servers", help="servers, as an operator moves them").add_subparsers(
        dest="action", required=True)
    m = servers.add_parser("migrate", parents=[common], help="live-migrate a running server to another host "
                           "(the scheduler picks one unless --to); the API node must be running")
    m.add_argument("uuid")
    m.add_argument("--to", metavar="HOST")
    m.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    m.set_defaults(func=servers_migrate)


def add_evacuate_command(hosts: Any, common: argparse.ArgumentParser) -> None:
    h = hosts.add_parser("evacuate", parents=[common], help="a dead host: start its servers on other hosts "
                         "(those whose drives are all on shared storage)")
    h.add_argument("name")
    h.add_argument("--cold", action="store_true", help="the servers boot anew (required: their memory is lost)")
    h.add_argument("--timeout", type=float, default=600.0)
    h.set_defaults(func=hosts_evacuate)


def add_drain_arguments(h: argparse.ArgumentParser) -> None:
    h.add_argument("--parallel", type=int, default=2, help="servers moving at once (2)")
    h.add_argument("--timeout", type=float, default=3600.0, help="seconds the whole drain may take")
    h.set_defaults(func=hosts_drain)
