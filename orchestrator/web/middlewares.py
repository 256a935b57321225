"""Protocol-wide middlewares (spec §4): request ids, content negotiation, OPTIONS, compression."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON_TYPES = ("application/json", "application/*", "*/*")
ENCODINGS = ("", "identity", "gzip", "x-gzip", "deflate")  # what aiohttp decodes here (no brotli module)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:  # a WebSocket or stream has sent its headers already
        response.headers["X-REQUEST-ID"] = str(uuid.uuid4())
    return response


@web.middleware
async def negotiation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """406 for an Accept header that excludes JSON; OPTIONS answers the allowed methods."""
    accept = request.headers.get("Accept")
    if accept and not any(t in accept for t in JSON_TYPES):
        raise web.HTTPNotAcceptable(reason="Only application/json is offered")
    if request.method == "OPTIONS":
        return options(request)
    if request.headers.get("Content-Encoding", "").strip().lower() not in ENCODINGS:
        # aiohttp passes an unknown coding through as if it were none: the body would be taken raw.
        raise web.HTTPUnsupportedMediaType(reason="Content-Encoding must be gzip, deflate or none")
    response = await handler(request)
    if isinstance(response, web.Response) and response.body is not None and len(response.body) > 1024:
        response.enable_compression()  # only when the client sent Accept-Encoding: gzip
    return response


def options(request: web.Request) -> web.Response:
    error = request.match_info.http_exception
    if isinstance(error, web.HTTPMethodNotAllowed):
        methods = set(error.allowed_methods)
    elif error is None:
        methods = {request.match_info.route.method}
    else:
        raise error
    allowed = ",".join(m for m in ("GET", "PUT", "DELETE", "POST") if m in methods)
    return web.Response(text=allowed, headers={"Allow": allowed})
