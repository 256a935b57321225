"""Availability groups (spec §30.1): which of the caller's objects share a physical host."""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any

from aiohttp import web
from sqlalchemy import select

from orchestrator.api.resource import caller, get_owned, path, respond, session
from orchestrator.db.models import Drive, Server

routes = web.RouteTableDef()

KINDS: dict[str, tuple[Any, Any]] = {
    "servers": (Server, Server.status == "running"),  # only running servers have a host that counts
    "drives": (Drive, Drive.host.is_not(None)),
}


async def _placement(request: web.Request, kind: str) -> dict[str, str]:
    model, where = KINDS[kind]
    async with session(request) as s:
        rows = (await s.execute(select(model.uuid, model.host).where(
            model.owner_uuid == caller(request), where).order_by(model.created))).all()
    return {row.uuid: row.host for row in rows}


async def groups(request: web.Request, kind: str) -> web.Response:
    by_host: dict[str, list[str]] = defaultdict(list)
    for uuid, host in (await _placement(request, kind)).items():
        by_host[host].append(uuid)
    return respond(list(by_host.values()))


async def group_of(request: web.Request, kind: str) -> web.Response:
    model, _ = KINDS[kind]
    uuid = request.match_info["uuid"]
    async with session(request) as s:
        await get_owned(s, select(model).where(model.uuid == uuid, model.owner_uuid == caller(request)),
                        kind[:-1].capitalize())
    placement = await _placement(request, kind)
    host = placement.get(uuid)
    return respond([] if host is None else [u for u, h in placement.items() if h == host])


# One route per collection: aiohttp matches the longest static prefix first, so these must
# spell out /servers/ and /drives/ to win over /servers/{uuid}/.
for _kind in KINDS:
    routes.get(path(f"{_kind}/availability_groups"))(partial(groups, kind=_kind))
    routes.get(path(f"{_kind}/availability_groups/{{uuid}}"))(partial(group_of, kind=_kind))
