"""Typed keys for state kept on the app and on each request (no globals, no string keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.db.reads import Reads
    from orchestrator.domain.capabilities import Capabilities
    from orchestrator.domain.placement import Scheduler
    from orchestrator.domain.uploads import Uploads
    from orchestrator.hosts.consoles import Consoles
    from orchestrator.hosts.pool import Hosts
    from orchestrator.web.auth import Authenticator
    from orchestrator.web.cookies import CookieStore
    from orchestrator.web.feed import Feed
    from orchestrator.work.background import Work
    from orchestrator.work.exports import Exports

CONFIG: web.AppKey[Config] = web.AppKey("config")
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey("sessions", async_sessionmaker)
READS: web.AppKey[Reads] = web.AppKey("reads")  # hot reads on the driver's connection
SESSION_CLASS: web.AppKey[type[Session]] = web.AppKey("session_class")  # its commits are watched
AUTH: web.AppKey[Authenticator] = web.AppKey("authenticator")
CAPABILITIES: web.AppKey[Capabilities] = web.AppKey("capabilities")
HOSTS: web.AppKey[Hosts] = web.AppKey("hosts")
WORK: web.AppKey[Work] = web.AppKey("work")  # background steps after commit
CONSOLES: web.AppKey[Consoles] = web.AppKey("consoles")
EXPORTS: web.AppKey[Exports] = web.AppKey("exports")  # drive downloads' shared scratch copies
SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler")

FEED: web.AppKey[Feed] = web.AppKey("feed")               # change notifications (spec §9.3)
NODE: web.AppKey[str] = web.AppKey("node")  # this API node's id in the leases (orchestrator/work/leases.py)
COOKIES: web.AppKey[CookieStore] = web.AppKey("cookies")  # login sessions, async_auth (spec §3)
UPLOADS: web.AppKey[Uploads] = web.AppKey("uploads")      # chunked uploads in progress (spec §24)

USER = web.RequestKey("user", str)  # uuid of the authenticated caller
