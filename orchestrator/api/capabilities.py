"""/capabilities/: the limits of this cloud (spec §31)."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.resource import caller, path, respond, session
from orchestrator.domain import quotas
from orchestrator.web.keys import CAPABILITIES, CONSOLES

routes = web.RouteTableDef()


@routes.get(path("capabilities"))
async def capabilities(request: web.Request) -> web.Response:
    """The cloud's limits, and the caller's own: ``quotas`` (each limit, null for none, and its use)."""
    async with session(request) as s:
        user = caller(request)
        tunnels = sum(t.owner == user for t in request.app[CONSOLES].tunnels.values())
        mine = await s.run_sync(quotas.report, user, tunnels)
    return respond({**request.app[CAPABILITIES].doc, "quotas": mine})


@routes.get(path("capabilities/schema"))
async def schema(request: web.Request) -> web.Response:
    return respond({"allowed_methods": ["get"],
                    "help_text": "Various API capabilities. Check documentation for reference"})
