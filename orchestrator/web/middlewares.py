"""Protocol-wide middlewares (spec §4): request ids, content negotiation, OPTIONS, compression."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from orchestrator.domain.uris import API_ROOT
from orchestrator.web.keys import READ_CACHE, USER
from orchestrator.web.read_cache import cache_key

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


@web.middleware
async def read_cache_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers a repeated API GET from :class:`ReadCache` while nothing has been written."""
    cache = request.app[READ_CACHE]
    if request.method != "GET" or not cache.enabled or not request.path.startswith(API_ROOT) or USER not in request:
        return await handler(request)  # anonymous answers (/locations/) are not cached
    # How the node was reached is part of the key: some answers name it (/locations/ URLs).
    key = cache_key(request[USER], f"{request.scheme}://{request.host}{request.path_qs}")
    # Cache-Control: no-cache asks for a fresh rendering (the answer still refreshes the cache).
    body = None if "no-cache" in request.headers.get("Cache-Control", "") else cache.get(key)
    if body is not None:
        return web.Response(body=body, content_type="application/json", charset="utf-8")
    generation = cache.generation
    response = await handler(request)
    if response.status == 200 and isinstance(response, web.Response) and isinstance(response.body, bytes) \
            and response.content_type == "application/json":
        cache.put(key, response.body, generation)
    return response
