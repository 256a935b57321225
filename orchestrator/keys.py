"""Typed keys for state kept on the app and on each request (no globals, no string keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

if TYPE_CHECKING:
    from orchestrator.auth import Authenticator
    from orchestrator.capabilities import Capabilities
    from orchestrator.cloud import Cloud
    from orchestrator.config import Config
    from orchestrator.consoles import Consoles
    from orchestrator.cookies import CookieStore
    from orchestrator.feed import Feed
    from orchestrator.read_cache import ReadCache
    from orchestrator.scheduler import Scheduler
    from orchestrator.uploading import Uploads

CONFIG: web.AppKey[Config] = web.AppKey("config")
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey("sessions", async_sessionmaker)
AUTH: web.AppKey[Authenticator] = web.AppKey("authenticator")
CAPABILITIES: web.AppKey[Capabilities] = web.AppKey("capabilities")
CLOUD: web.AppKey[Cloud] = web.AppKey("cloud")
CONSOLES: web.AppKey[Consoles] = web.AppKey("consoles")
SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler")

READ_CACHE: web.AppKey[ReadCache] = web.AppKey("read_cache")
FEED: web.AppKey[Feed] = web.AppKey("feed")               # change notifications (spec §9.3)
COOKIES: web.AppKey[CookieStore] = web.AppKey("cookies")  # login sessions, async_auth (spec §3)
UPLOADS: web.AppKey[Uploads] = web.AppKey("uploads")      # chunked uploads in progress (spec §24)

USER = web.RequestKey("user", str)  # uuid of the authenticated caller
