"""The browser console: noVNC's page and the WebSocket it speaks RFB over (issue: VNC consoles).

The WebSocket carries websockify's protocol (binary frames, each a chunk of the RFB byte
stream), served here by aiohttp rather than by the websockify package's own server, so the
token check, the Origin check and the tunnel live in the API node's process and event loop.
These routes are public (no Basic auth): a single-use, short-lived token bound to one server,
one user and one VNC tunnel authorises the socket, and the page itself is static.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time

from aiohttp import WSMsgType, web

from orchestrator.config import Config
from orchestrator.hosts.pool import CHUNK
from orchestrator.web.auth import check_origin, public
from orchestrator.web.keys import AUTH, CONFIG, CONSOLES

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


@routes.get("/console/websockify")
@public
async def websockify(request: web.Request) -> web.StreamResponse:
    check_origin(request)
    tunnel = await request.app[CONSOLES].redeem(request.query.get("token", ""))
    if tunnel is None or not await request.app[AUTH].enabled(tunnel.owner):
        raise web.HTTPForbidden(reason="Invalid or expired console token")
    try:  # straight to the guest's display (through its host's SSH for remote hosts)
        reader, writer = await tunnel.upstream()
    except (OSError, ConnectionError) as err:
        raise web.HTTPServiceUnavailable(reason=f"Cannot reach the guest's VNC display: {err}") from None
    ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=0)
    await ws.prepare(request)
    task = asyncio.current_task()
    assert task is not None
    tunnel.bridges.add(task)  # closing the tunnel (close_vnc, stop) ends this socket too
    tunnel.active += 1

    async def upstream_to_browser() -> None:
        while data := await reader.read(CHUNK):
            await ws.send_bytes(data)
        await ws.close()

    pump = asyncio.create_task(upstream_to_browser())
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                writer.write(message.data)
                await writer.drain()
            elif message.type == WSMsgType.TEXT:  # old noVNC base64 mode is not offered
                break
    finally:
        pump.cancel()
        writer.close()
        tunnel.active -= 1
        tunnel.last_used = time.monotonic()
        tunnel.bridges.discard(task)
    return ws


@routes.get("/console/novnc/{file:.+}")
@public
async def novnc(request: web.Request) -> web.StreamResponse:
    """noVNC's static files (Debian's novnc package), nothing outside its directory."""
    root = request.app[CONFIG].novnc_dir.resolve()
    try:
        file = (root / request.match_info["file"]).resolve()
        found = file.is_relative_to(root) and file.is_file()
    except (ValueError, OSError):  # a NUL in the name, a name too long (found by tests/fuzz)
        found = False
    if not found:
        raise web.HTTPNotFound()
    if "Range" in request.headers:
        # A server may ignore Range (RFC 9110 §14.2), and these files are small: FileResponse would
        # answer a malformed or unsatisfiable one with a bare 416 after the error middleware ran
        # (found by tests/fuzz).
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return web.Response(body=file.read_bytes(), content_type=content_type)
    return web.FileResponse(file)


def check_novnc(config: Config) -> None:
    if not config.novnc_dir.is_dir():
        log.warning("noVNC not found at %s: the browser console page is unavailable", config.novnc_dir)
