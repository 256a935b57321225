"""/capabilities/: the limits of this cloud (spec §31)."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.resource import path, respond
from orchestrator.web.keys import CAPABILITIES

routes = web.RouteTableDef()


@routes.get(path("capabilities"))
async def capabilities(request: web.Request) -> web.Response:
    return respond(request.app[CAPABILITIES].doc)


@routes.get(path("capabilities/schema"))
async def schema(request: web.Request) -> web.Response:
    return respond({"allowed_methods": ["get"],
                    "help_text": "Various API capabilities. Check documentation for reference"})
