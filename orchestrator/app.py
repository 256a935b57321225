"""The API node's app factory: ``create_app(config)`` serves ``strato serve`` and the tests alike."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.orm import Session

from orchestrator.api import (
    accounts,
    availability,
    capabilities,
    console_page,
    drives,
    jobs,
    libdrives,
    networks,
    profile,
    server_actions,
    servers,
    tags,
    uploads,
)
from orchestrator.auth import Authenticator, auth_middleware
from orchestrator.capabilities import Capabilities
from orchestrator.cloud import Cloud
from orchestrator.config import Config
from orchestrator.consoles import Consoles
from orchestrator.cookies import CookieStore
from orchestrator.db.engine import make_engine, make_sessionmaker, migrate
from orchestrator.errors import error_middleware
from orchestrator.feed import Feed
from orchestrator.hosts.registry import ensure_local_host
from orchestrator.keys import (
    AUTH,
    CAPABILITIES,
    CLOUD,
    CONFIG,
    CONSOLES,
    COOKIES,
    ENGINE,
    FEED,
    READ_CACHE,
    SCHEDULER,
    SESSIONS,
    UPLOADS,
)
from orchestrator.protocol import negotiation_middleware, read_cache_middleware, request_id_middleware
from orchestrator.read_cache import ReadCache
from orchestrator.scheduler import Scheduler
from orchestrator.uploading import Uploads


async def database(app: web.Application) -> AsyncIterator[None]:
    engine = make_engine(app[CONFIG].db_url)
    await migrate(engine)
    app[ENGINE] = engine
    # A session class of this app's own, so the read cache hears exactly this app's commits.
    session_class = type("StratoSession", (Session,), {})
    app[READ_CACHE] = ReadCache(enabled=engine.dialect.name == "sqlite")
    app[READ_CACHE].watch(session_class)
    app[FEED] = Feed()
    app[FEED].watch(session_class)  # after the read cache: a frame's reader GETs fresh answers
    app[SESSIONS] = make_sessionmaker(engine, session_class)
    app[AUTH] = Authenticator(app[SESSIONS])
    yield
    await engine.dispose()


async def hosts(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[SCHEDULER] = Scheduler(config.cpu_overcommit, config.mem_overcommit, config.storage_pools)
    cloud = Cloud(app[SESSIONS], app[SCHEDULER], config.data_dir / "transit",
                  shutdown_window=config.shutdown_window, heartbeat=config.heartbeat)
    cloud.stats_listeners.append(app[READ_CACHE].bump)  # runtime counters are part of GET answers
    if config.local_host:
        async with app[SESSIONS].begin() as s:
            await ensure_local_host(s, config)
    await cloud.start()
    app[CLOUD] = cloud
    consoles = Consoles(cloud, bind=config.tunnel_bind, ports=config.tunnel_port_range,
                        idle_timeout=config.tunnel_idle, token_ttl=config.console_token_ttl)
    consoles.start()
    app[CONSOLES] = consoles
    yield
    await consoles.stop()
    await cloud.stop()


def create_app(config: Config) -> web.Application:
    # Order matters: request ids wrap everything, errors are rendered before them, and content
    # negotiation and OPTIONS come before authentication.
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, negotiation_middleware, auth_middleware,
                     read_cache_middleware],
        client_max_size=config.max_body,
    )
    app[CONFIG] = config
    app[COOKIES] = CookieStore()
    app[UPLOADS] = Uploads(config.data_dir / "uploads")
    app[CAPABILITIES] = Capabilities.from_config(config.capabilities)
    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(hosts)
    for module in (accounts, availability, servers, server_actions, uploads, drives, libdrives, networks, tags, jobs,
                   profile, capabilities, console_page):
        app.add_routes(module.routes)
    console_page.add_novnc(app)
    return app
