"""``POST /servers/{uuid}/action/?do=…`` (spec §12.9, §13): decide, record, answer 202.

Each action checks the state matrix of §13 (``orchestrator/domain/lifecycle.py``), records the
server's first transitional status (so an immediate GET shows it and a conflicting action gets
403), and leaves the slow part to the work layer (``orchestrator/work/servers.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from agents.client import AgentCallError, AgentGone
from orchestrator.api.resource import action_route, get_owned, query_uuids, read_json, respond, session
from orchestrator.api.servers import SERVER, one, owned
from orchestrator.db.models import Quota, Server
from orchestrator.domain.cloning import plan_server_clone
from orchestrator.domain.errors import forbidden, invalid, unreachable
from orchestrator.domain.lifecycle import check
from orchestrator.hosts.consoles import Tunnel
from orchestrator.web.keys import CAPABILITIES, CONFIG, CONSOLES, SCHEDULER, SESSIONS, WORK

routes = web.RouteTableDef()


def accepted(action: str, uuid: str) -> web.Response:
    return respond({"action": action, "result": "success", "uuid": uuid}, 202)


async def start(request: web.Request) -> web.Response:
    avoid = query_uuids(request, "avoid")
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
    await request.app[WORK].servers.start(server.uuid, avoid)
    return accepted("start", server.uuid)


async def clone(request: web.Request) -> web.Response:
    body, avoid = await read_json(request, empty={}), query_uuids(request, "avoid")
    if not isinstance(body, dict):
        raise invalid("A JSON object is required")
    scheduler = request.app[SCHEDULER]
    async with scheduler.placing(request.app[SESSIONS]) as s:
        source = await get_owned(s, one(request), "Server")
        created, jobs = await plan_server_clone(s, source, body, request.app[CAPABILITIES], scheduler, avoid)
    for job in jobs:
        await request.app[WORK].clones.run(job.uuid)
    async with session(request) as s:
        fresh = await get_owned(s, owned(request).where(Server.uuid == created.uuid), "Server")
        return respond(SERVER.dump(fresh), 202)  # a bare object, unlike drive clones (spec §15)


async def stop(request: web.Request) -> web.Response:
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
        check(server, "stop")
        host = server.host
    if host is not None:
        await request.app[WORK].servers.stop(server.uuid, host)
    return accepted("stop", server.uuid)


async def shutdown(request: web.Request) -> web.Response:
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
        check(server, "shutdown")
    await request.app[WORK].servers.shutdown(server.uuid, server.host)
    return accepted("shutdown", server.uuid)


async def restart(request: web.Request) -> web.Response:
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
        check(server, "restart")
    await request.app[WORK].servers.restart(server.uuid, server.host)
    await request.app[CONSOLES].close(server.uuid)  # §12.9.5: tunnels end when the server restarts
    return accepted("restart", server.uuid)


async def open_tunnel(request: web.Request, kind: str) -> Tunnel:
    consoles = request.app[CONSOLES]
    async with session(request) as s:
        server = await get_owned(s, one(request), "Server")
        quota = await s.get(Quota, server.owner_uuid)
    check(server, f"open_{kind}")
    if quota is not None and quota.tunnels is not None and (server.uuid, kind) not in consoles.tunnels:
        open_now = sum(t.owner == server.owner_uuid for t in consoles.tunnels.values())
        if open_now >= quota.tunnels:
            raise forbidden(f"Quota exceeded: tunnels {open_now} of {quota.tunnels}", "tunnels")
    try:
        return await consoles.open(kind, server.uuid, server.owner_uuid, server.host,
                                                server.vnc_password)
    except (ConnectionError, AgentCallError, AgentGone) as err:
        raise unreachable(f"Cannot reach the guest's {kind}: {err}") from None


async def open_vnc(request: web.Request) -> web.Response:
    tunnel = await open_tunnel(request, "vnc")
    host = public_host(request)
    token = await request.app[CONSOLES].grant(tunnel)
    # Extra keys are ignored by existing clients; the page is noVNC talking to our WebSocket.
    page = (f"{request.scheme}://{request.host}/console/novnc/vnc_lite.html?"
            + urlencode({"path": f"console/websockify?token={token}", "autoconnect": "true"}))
    return respond({"action": "open_vnc", "result": "success", "uuid": tunnel.server_uuid,
                    "vnc_url": f"vnc://{host}:{tunnel.port}", "console_page_url": page}, 202)


async def open_console(request: web.Request) -> web.Response:
    tunnel = await open_tunnel(request, "console")
    return respond({"action": "open_console", "result": "success", "uuid": tunnel.server_uuid,
                    "console_url": f"csconsole://{public_host(request)}:{tunnel.port}"}, 202)


def closer(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def close(request: web.Request) -> web.Response:
        async with session(request) as s:
            server = await get_owned(s, one(request), "Server")
        check(server, f"close_{kind}")
        await request.app[CONSOLES].close(server.uuid, kind)
        return accepted(f"close_{kind}", server.uuid)

    return close


def public_host(request: web.Request) -> str:
    return request.app[CONFIG].public_host or request.app[CONFIG].host


ACTIONS: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
    "start": start, "stop": stop, "shutdown": shutdown, "restart": restart, "clone": clone,
    "open_vnc": open_vnc, "close_vnc": closer("vnc"), "open_console": open_console,
    "close_console": closer("console"),
}


action_route(routes, "servers/{uuid}/action", ACTIONS)
