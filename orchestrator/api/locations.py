"""/locations/: one entry describing this installation (spec §34)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.fields import Resource
from orchestrator.api.resource import envelope, list_query, path, respond
from orchestrator.domain.uris import API_ROOT
from orchestrator.web.auth import auth_policy
from orchestrator.web.keys import CONFIG

LOCATION = Resource("locations", fields=(), list_methods=("get",), detail_methods=())  # limit and offset only
routes = web.RouteTableDef()


def _policy(request: web.Request) -> Any:
    # Authentication is optional (spec §34): credentials that are sent are still checked.
    sent = "Authorization" in request.headers or "sessionid" in request.cookies
    return "user" if sent else "public"


def location(request: web.Request) -> dict[str, Any]:
    """This node as a location: the names from the configuration, the URLs from how it was reached
    (uploads, downloads and the websocket are served by this same node)."""
    config = request.app[CONFIG]
    base = f"{request.scheme}://{request.host}"
    ws = "wss" if request.scheme == "https" else "ws"
    frontend = config.frontend_url or f"{base}/"
    return {
        "alternative_frontend_url": frontend,
        "api_endpoint": f"{base}{API_ROOT}/",
        "country_code": config.country_code,
        "default_frontend_signup_url": frontend,
        "default_frontend_url": frontend,
        "display_name": config.location_name,
        "documentation_url": config.documentation_url,
        "id": config.location_id,
        "upload_url": f"{base}{API_ROOT}/",
        "websocket_url": f"{ws}://{request.host}/websocket",
    }


@routes.get(path("locations"))
@auth_policy(_policy)
async def locations(request: web.Request) -> web.Response:
    lq = list_query(request, LOCATION)
    objects = [location(request)][lq.offset:lq.offset + lq.limit if lq.limit else None]
    return respond(envelope(objects, lq, 1))
