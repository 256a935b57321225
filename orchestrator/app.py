"""The API node's app factory: ``create_app(config)`` serves ``strato serve`` and the tests alike."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from orchestrator.api import capabilities, drives, servers, tags
from orchestrator.auth import Authenticator, auth_middleware
from orchestrator.capabilities import Capabilities
from orchestrator.config import Config
from orchestrator.db.engine import make_engine, make_sessionmaker, migrate
from orchestrator.errors import error_middleware
from orchestrator.keys import AUTH, CAPABILITIES, CONFIG, ENGINE, SESSIONS
from orchestrator.protocol import negotiation_middleware, request_id_middleware


async def database(app: web.Application) -> AsyncIterator[None]:
    engine = make_engine(app[CONFIG].db_url)
    await migrate(engine)
    app[ENGINE] = engine
    app[SESSIONS] = make_sessionmaker(engine)
    app[AUTH] = Authenticator(app[SESSIONS])
    yield
    await engine.dispose()


def create_app(config: Config) -> web.Application:
    # Order matters: request ids wrap everything, errors are rendered before them, and content
    # negotiation and OPTIONS come before authentication.
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, negotiation_middleware, auth_middleware],
        client_max_size=config.max_body,
    )
    app[CONFIG] = config
    app[CAPABILITIES] = Capabilities.from_config(config.capabilities)
    app.cleanup_ctx.append(database)
    for module in (servers, drives, tags, capabilities):
        app.add_routes(module.routes)
    return app
