"""/profile/: the caller's account; only ``clone_naming`` has behaviour here (spec §36)."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.fields import Field, Output, Resource, Str
from orchestrator.api.resource import caller, path, read_json, respond, session
from orchestrator.api.standard import meta_field
from orchestrator.db.models import User
from orchestrator.domain.clone_naming import STRATEGIES
from orchestrator.domain.uris import API_ROOT

PROFILE = Resource("profile", dialect="tastypie", list_methods=("get", "put"), detail_methods=(), fields=(
    Field("uuid", Str(), readonly=True),
    Field("email", Str(), readonly=True),
    Field("clone_naming", Str(), default="NONE", choices=STRATEGIES,
          help="Naming strategy for clones made without a name"),
    meta_field(""),
    Field("resource_uri", Output("string"), readonly=True, get=lambda user: f"{API_ROOT}/profile/"),
))

routes = web.RouteTableDef()


@routes.get(path("profile"))
async def get(request: web.Request) -> web.Response:
    async with session(request) as s:
        return respond(PROFILE.dump(await s.get(User, caller(request))))


@routes.put(path("profile"))
async def edit(request: web.Request) -> web.Response:
    values = PROFILE.validate(await read_json(request), create=False)
    async with session(request) as s:
        user = await s.get(User, caller(request))
        for key, value in values.items():
            setattr(user, key, value)
        return respond(PROFILE.dump(user))


@routes.get(path("profile/schema"))
async def schema(request: web.Request) -> web.Response:
    return respond(PROFILE.schema())
