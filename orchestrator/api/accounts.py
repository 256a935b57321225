"""``/accounts/action/?do=login|logout|authenticate_asynchronous`` and the ``/websocket`` feed
(spec §3, §9.3, §37)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import WSMsgType, web

from orchestrator.api.resource import action_route, caller, read_json, respond
from orchestrator.domain.errors import invalid
from orchestrator.web.auth import auth_policy, check_origin
from orchestrator.web.cookies import ASYNC_AGE, CSRF_AGE, SESSION_AGE, WEBSOCKET_PATHS
from orchestrator.web.feed import HANG_UP
from orchestrator.web.keys import AUTH, COOKIES, FEED

routes = web.RouteTableDef()


async def login(request: web.Request) -> web.Response:
    """A public route (see ``action_route`` below): the credentials are in the JSON body."""
    body = await read_json(request, empty={})
    email, password = (body.get(k) if isinstance(body, dict) else None for k in ("username", "password"))
    if not isinstance(email, str) or not isinstance(password, str):
        raise invalid("username and password are required", "username")
    user = await request.app[AUTH].verify(email, password, request.remote)
    sid, session = await request.app[COOKIES].login(user)
    response = respond({"uuid": user})
    response.set_cookie("sessionid", sid, max_age=SESSION_AGE, path="/", httponly=True, samesite="Lax",
                        secure=request.secure)
    response.set_cookie("csrftoken", session.csrf, max_age=CSRF_AGE, path="/", samesite="Lax", secure=request.secure)
    return response


async def logout(request: web.Request) -> web.Response:
    await request.app[COOKIES].logout(request.cookies.get("sessionid"))
    response = respond({})
    response.del_cookie("sessionid", path="/")
    response.del_cookie("csrftoken", path="/")
    return response


async def authenticate_asynchronous(request: web.Request) -> web.Response:
    response, token = respond({}), await request.app[COOKIES].issue_async(caller(request))
    # Only the browser sends it back (JavaScript never reads it), only over HTTPS when it came so.
    response.set_cookie("async_auth", token, max_age=ASYNC_AGE, path="/",
                        httponly=True, samesite="Lax", secure=request.secure)
    return response


ACTIONS = {"login": login, "logout": logout, "authenticate_asynchronous": authenticate_asynchronous}


# Login checks the body's credentials itself; the other actions need a known caller.
action_route(routes, "accounts/action", ACTIONS,
             policy=lambda request: "public" if request.query.get("do") == "login" else "user")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Authorised by the ``async_auth`` cookie (auth middleware); frames of the caller's objects."""
    check_origin(request)
    user = caller(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    feed = request.app[FEED]
    queue = feed.subscribe(user)
    reader = asyncio.create_task(_drain(ws))  # notices the client closing
    try:
        while not ws.closed:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            if (frame := getter.result()) is HANG_UP:
                break
            await ws.send_json(frame)
    finally:
        feed.unsubscribe(user, queue)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ws.close()
    return ws


async def _drain(ws: web.WebSocketResponse) -> Any:
    async for message in ws:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


for _path in WEBSOCKET_PATHS:
    routes.get(_path)(auth_policy("async_auth")(websocket))
