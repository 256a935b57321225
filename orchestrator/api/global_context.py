"""/global_context/: the account's str → str object every server's context carries (spec §33.4)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.fields import Field, Meta
from orchestrator.api.resource import caller, path, read_json, respond, session
from orchestrator.db.models import User
from orchestrator.domain.errors import DomainError, invalid

# One entry of the object: the same rules as a meta entry (spec §28), checked per key so each
# error points at its key.
ENTRY = Field("global_context", Meta())

routes = web.RouteTableDef()


def parse(body: Any) -> dict[str, str]:
    if not isinstance(body, dict):
        raise invalid("An object of string keys and string values is required")
    out: dict[str, str] = {}
    errors: list[DomainError] = []
    for key, value in body.items():
        try:
            out.update(ENTRY.parse({key: value}, key))
        except DomainError as e:
            errors.append(e)
    if errors:
        raise DomainError.collect(errors)
    return out


@routes.get(path("global_context"))
async def get(request: web.Request) -> web.Response:
    async with session(request) as s:
        return respond((await s.get(User, caller(request))).global_context)


@routes.post(path("global_context"))
async def replace(request: web.Request) -> web.Response:
    """The body replaces the whole object, as a PUT of ``meta`` does (spec §33.4 decision)."""
    values = parse(await read_json(request))
    async with session(request) as s:
        user = await s.get(User, caller(request))
        user.global_context = values
    return respond(values)
