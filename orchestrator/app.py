"""The API node's app factory: ``create_app(config)`` serves ``strato serve`` and the tests alike."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web
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
from orchestrator.domain import quotas
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
    FEED,
    HOSTS,
    SCHEDULER,
    SESSION_CLASS,
    SESSIONS,
    UPLOADS,
    WORK,
)
from orchestrator.web.middlewares import negotiation_middleware, request_id_middleware
from orchestrator.work.background import Work

log = logging.getLogger(__name__)


async def database(app: web.Application) -> AsyncIterator[None]:
    engine = make_engine(app[CONFIG].db_url)
    await migrate(engine)
    app[ENGINE] = engine
    # A session class of this app's own, so the feed hears exactly this app's commits.
    session_class = type("StratoSession", (Session,), {})
    app[FEED] = Feed()
    app[FEED].watch(session_class)
    quotas.watch(session_class)  # every commit that grows a user's servers or drives is checked
    app[SESSION_CLASS], app[SESSIONS] = session_class, make_sessionmaker(engine, session_class)
    app[AUTH] = Authenticator(app[SESSIONS])
    yield
    await engine.dispose()


async def leftover_uploads(app: web.Application) -> AsyncIterator[None]:
    """Uploads a previous process left: files swept, drives waiting for their chunks again."""
    async with app[SESSIONS].begin() as s:
        waiting = await recover_uploads(s, app[UPLOADS])
    if waiting:
        log.warning("%d drives were uploading when the node stopped; they wait for their chunks again", waiting)
    yield


async def hosts(app: web.Application) -> AsyncIterator[None]:
    """Agent connections, the background work over them, and the console tunnels."""
    config = app[CONFIG]
    app[SCHEDULER] = Scheduler(config.cpu_overcommit, config.mem_overcommit, config.storage_pools)
    if config.local_host:
        async with app[SESSIONS].begin() as s:
            await ensure_local_host(s, config)
    hosts = Hosts(app[SESSIONS], heartbeat=config.heartbeat)
    work = Work.build(app[SESSIONS], hosts, app[SCHEDULER], context_document=context_document,
                      data_dir=config.data_dir, shutdown_window=config.shutdown_window, heartbeat=config.heartbeat)
    work.contexts.watch(app[SESSION_CLASS])  # commits that change a document push it again
    consoles = Consoles(hosts, bind=config.tunnel_bind, ports=config.tunnel_port_range,
                        idle_timeout=config.tunnel_idle, token_ttl=config.console_token_ttl)
    work.servers.stop_listeners.append(consoles.close)  # a stopped server's tunnels close
    app[HOSTS], app[WORK], app[CONSOLES] = hosts, work, consoles
    await work.start()
    consoles.start()
    yield
    await consoles.stop()
    await work.stop()
    await hosts.stop()


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
    app[COOKIES] = CookieStore()
    app[UPLOADS] = Uploads(config.data_dir / "uploads")
    app[CAPABILITIES] = Capabilities.from_config(config.capabilities)
    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(leftover_uploads)
    app.cleanup_ctx.append(hosts)
    app.cleanup_ctx.append(collector)
    for module in (accounts, availability, servers, server_actions, uploads, drives, libdrives, networks, tags, jobs,
                   keypairs, profile, global_context, locations, capabilities, console):
        app.add_routes(module.routes)
    console.check_novnc(config)
    return app
