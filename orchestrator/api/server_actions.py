"""``POST /servers/{uuid}/action/?do=…`` (spec §12.9, §13): decide, record, answer 202.

Each action checks the state matrix of §13, moves the server into its first transitional
status in the database (so an immediate GET shows it and a conflicting action gets 403),
and leaves the slow part to :class:`orchestrator.cloud.Cloud` as a background task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from orchestrator.api.common import get_owned, path, query_uuids, read_json, respond, session
from orchestrator.api.servers import one
from orchestrator.cloud import drive_hosts
from orchestrator.db.models import Server
from orchestrator.errors import forbidden, invalid
from orchestrator.keys import CLOUD, SCHEDULER

routes = web.RouteTableDef()


def require(server: Server, action: str, allowed: tuple[str, ...]) -> None:
    if server.status not in allowed:
        wanted = " or ".join(f'"{s}"' for s in allowed)
        raise forbidden(f'Cannot {action} server in state "{server.status}"; it must be {wanted}')


def accepted(action: str, uuid: str) -> web.Response:
    return respond({"action": action, "result": "success", "uuid": uuid}, 202)


async def start(request: web.Request) -> web.Response:
    avoid, scheduler = query_uuids(request, "avoid"), request.app[SCHEDULER]
    async with scheduler.lock, session(request) as s:
        server = await get_owned(s, one(request), "Server")
        require(server, "start", ("stopped",))
        hosts, not_ready = await drive_hosts(s, server)
        if not_ready:
            raise forbidden(f"Drive {not_ready[0]} is not ready to boot (it is still being created, copied "
                            "or resized)")
        await scheduler.place_server(s, server, hosts, avoid)
        server.status = "starting"
    request.app[CLOUD].spawn(request.app[CLOUD].start_server(server.uuid))
    return accepted("start", server.uuid)


async def stop(request: web.Request) -> web.Response:
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
        require(server, "stop", ("starting", "running", "stopping", "paused"))
        server.status = "stopping"
        host = server.host
    cloud = request.app[CLOUD]
    if host is not None:
        cloud.spawn(cloud.stop_server(server.uuid, host))
    return accepted("stop", server.uuid)


async def shutdown(request: web.Request) -> web.Response:
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
        require(server, "shutdown", ("running",))
        server.status = "stopping"
    cloud = request.app[CLOUD]
    cloud.spawn(cloud.shutdown_server(server.uuid, server.host))
    return accepted("shutdown", server.uuid)


async def restart(request: web.Request) -> web.Response:
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
        require(server, "restart", ("running",))
    await request.app[CLOUD].restart_server(server.uuid, server.host)
    return accepted("restart", server.uuid)


ACTIONS: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
    "start": start, "stop": stop, "shutdown": shutdown, "restart": restart,
}


@routes.post(path("servers/{uuid}/action"))
async def action(request: web.Request) -> web.Response:
    do = request.query.get("do")
    if do not in ACTIONS:
        raise invalid(f"Unknown action {do!r}; one of: {', '.join(ACTIONS)}", "do")
    await read_json(request, empty={})  # an empty body, {} or fields are all fine (spec §4)
    return await ACTIONS[do](request)
