"""The API node's app factory: ``create_app(config)`` serves ``strato serve`` and the tests alike."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from orchestrator.api import (
    accounts,
    availability,
    capabilities,
    drives,
    global_context,
    jobs,
    keypairs,
    libdrives,
    locations,
    networks,
    profile,
    server_actions,
    servers,
    tags,
    uploads,
)
from orchestrator.api.context import context_document
from orchestrator.config import Config
from orchestrator.db.engine import make_engine, make_sessionmaker, migrate
from orchestrator.db.models import User
from orchestrator.db.notify import Bus
from orchestrator.db.reads import Reads
from orchestrator.db.wake import Wakeups
from orchestrator.domain import pool_room, quotas
from orchestrator.domain.capabilities import Capabilities
from orchestrator.domain.placement import Scheduler
from orchestrator.domain.uploads import Uploads
from orchestrator.domain.uploads import recover as recover_uploads
from orchestrator.hosts.consoles import Consoles
from orchestrator.hosts.pool import Hosts
from orchestrator.hosts.registry import ensure_local_host
from orchestrator.web import console
from orchestrator.web.auth import Authenticator, auth_middleware
from orchestrator.web.cookies import CookieStore
from orchestrator.web.errors import error_middleware, install_protocol_errors
from orchestrator.web.feed import Feed
from orchestrator.web.keys import (
    AUTH,
    CAPABILITIES,
    CONFIG,
    CONSOLES,
    COOKIES,
    ENGINE,
    EXPORTS,
    FEED,
    HOSTS,
    NODE,
    READS,
    SCHEDULER,
    SESSION_CLASS,
    SESSIONS,
    UPLOADS,
    WORK,
)
from orchestrator.web.middlewares import negotiation_middleware, request_id_middleware
from orchestrator.work.background import Work
from orchestrator.work.exports import Exports
from orchestrator.work.leases import Cluster, new_node_id, tag_jobs

log = logging.getLogger(__name__)
DISABLED_SWEEP = 1.0  # seconds between looks for users disabled from the command line


async def database(app: web.Application) -> AsyncIterator[None]:
    engine = make_engine(app[CONFIG].db_url)
    await migrate(engine)
    app[ENGINE] = engine
    # A session class of this app's own, so the feed hears exactly this app's commits.
    session_class = type("StratoSession", (Session,), {})
    # Other API nodes on the same PostgreSQL hear this one's commits (the feed) by NOTIFY.
    bus = Bus(app[CONFIG].db_url, "strato_feed") if engine.dialect.name == "postgresql" else None
    app[FEED] = Feed(node=app[NODE], bus=bus)
    app[FEED].watch(session_class)
    quotas.watch(session_class)  # every commit that grows a user's servers or drives is checked
    tag_jobs(session_class, app[NODE])  # the jobs this node starts are leased to it
    pool_room.watch(session_class, app[CONFIG].storage_overcommit)  # and the pools the drives are in
    app[SESSION_CLASS], app[SESSIONS] = session_class, make_sessionmaker(engine, session_class)
    app[READS] = await Reads.open(engine)
    app[AUTH] = Authenticator(app[SESSIONS], app[READS])
    app[COOKIES] = CookieStore(app[SESSIONS])
    app[UPLOADS] = Uploads(app[CONFIG].upload_dir or app[CONFIG].data_dir / "uploads", app[SESSIONS], app[NODE])
    if bus is not None:
        await bus.start()
    yield
    if bus is not None:
        await bus.stop()
    await app[READS].close()
    await engine.dispose()


async def resume_uploads(app: web.Application, *, sweep: bool = False) -> None:
    """Uploads that dead nodes (or this process before a restart) left: imports under way run
    again here, raw uploads' drives wait for their chunks again."""
    work, uploads = app[WORK], app[UPLOADS]
    async with app[SESSIONS].begin() as s:
        again = await recover_uploads(s, uploads, work.cluster.alive, sweep=sweep)
    for drive in again:
        log.warning("drive %s: its import was under way on a node that stopped; importing again", drive)
        await work.later(import_again(app, drive), f"import {drive}")


async def import_again(app: web.Application, drive: str) -> None:
    await app[WORK].volumes.import_again(drive, app[UPLOADS].file(drive))
    await app[UPLOADS].settled(drive)


async def hosts(app: web.Application) -> AsyncIterator[None]:
    """Agent connections, the background work over them, and the console tunnels."""
    config = app[CONFIG]
    app[SCHEDULER] = Scheduler(config.cpu_overcommit, config.mem_overcommit, config.storage_pools)
    if config.local_host:
        async with app[SESSIONS].begin() as s:
            await ensure_local_host(s, config)
    hosts = Hosts(app[SESSIONS], heartbeat=config.heartbeat)
    cluster = Cluster(app[SESSIONS], app[NODE], lease=config.node_lease)
    work = Work.build(app[SESSIONS], hosts, app[SCHEDULER], cluster, context_document=context_document,
                      data_dir=config.data_dir, shutdown_window=config.shutdown_window, heartbeat=config.heartbeat,
                      clone_mode=config.clone_mode, flatten_rate=config.flatten_rate, job_max_age=config.job_max_age,
                      wakeups=Wakeups(config.db_url))  # `strato servers migrate` and drains wake this node
    work.contexts.watch(app[SESSION_CLASS])  # commits that change a document push it again
    consoles = Consoles(hosts, app[SESSIONS], bind=config.tunnel_bind, ports=config.tunnel_port_range,
                        idle_timeout=config.tunnel_idle, token_ttl=config.console_token_ttl)
    work.servers.stop_listeners.append(consoles.close)  # a stopped server's tunnels close
    app[HOSTS], app[WORK], app[CONSOLES] = hosts, work, consoles
    app[EXPORTS] = Exports(hosts, work.volumes, config.data_dir / "transit", config.max_downloads)
    app[EXPORTS].sweep()
    await work.start()

    async def vanished(_nodes: set[str]) -> None:
        await resume_uploads(app)

    cluster.vanished.append(vanished)
    await resume_uploads(app, sweep=True)
    consoles.start()
    yield
    await consoles.stop()
    await work.stop()
    await hosts.stop()


async def disabled_users(app: web.Application) -> AsyncIterator[None]:
    """``strato users disable`` runs in another process: every request reads the flag itself
    (``Authenticator.enabled``), and this sweep ends within a second what is already open (the
    user's login sessions, async_auth cookies, change feed sockets, console tunnels and links)."""

    async def sweep() -> None:
        seen: set[str] = set()  # acted on already
        while True:
            await asyncio.sleep(DISABLED_SWEEP)
            try:
                async with app[SESSIONS]() as s:
                    disabled = set((await s.scalars(select(User.uuid).where(User.disabled.is_(True)))).all())
            except SQLAlchemyError as err:  # the store is away for a moment: next round
                log.warning("disabled users sweep: %s", err)
                continue
            if fresh := disabled - seen:
                await app[COOKIES].forget_users(fresh)
                app[FEED].hang_up(fresh)
                await app[CONSOLES].close_owners(fresh)
            seen = disabled

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
async def collector(app: web.Application) -> AsyncIterator[None]:
    """The cyclic garbage collector tuned for a server: what start-up made is frozen out of its
    scans, and a young collection waits for 50,000 new containers instead of 700.  A 1,000-server
    listing makes some 100,000 dicts and lists, none of them cyclic; with the defaults the
    collections it set off (each older one scanning the whole heap) were a quarter of its time."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def create_app(config: Config) -> web.Application:
    # Order matters: request ids wrap everything, errors are rendered before them, and content
    # negotiation and OPTIONS come before authentication.
    install_protocol_errors()
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, negotiation_middleware, auth_middleware],
        client_max_size=config.max_body,
    )
    app[CONFIG] = config
    app[NODE] = new_node_id()
    app[CAPABILITIES] = Capabilities.from_config(config.capabilities)
    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(hosts)
    app.cleanup_ctx.append(disabled_users)
    app.cleanup_ctx.append(collector)
    for module in (accounts, availability, servers, server_actions, uploads, drives, libdrives, networks, tags, jobs,
                   keypairs, profile, global_context, locations, capabilities, console):
        app.add_routes(module.routes)
    console.check_novnc(config)
    return app
