"""The API's one error type and the middleware that renders it.

CloudSigma clients only recognise errors as a JSON *list* of
``{"error_type", "error_message", "error_point"}`` objects (spec §8), so every
failure, including aiohttp's own 404/405 and unexpected exceptions, leaves
through :func:`error_middleware` in that shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

STATUS_BY_TYPE = {
    "validation": 400,
    "notexist": 404,
    "permission": 403,
    "concurrency": 503,
    "backend": 500,
    "database": 500,
}


class ApiError(Exception):
    """One or more API errors; handlers raise, the middleware renders."""

    def __init__(
        self,
        error_type: str,
        message: str,
        point: str | None = None,
        *,
        status: int | None = None,
        more: Iterable[ApiError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status or STATUS_BY_TYPE.get(error_type, 500)
        self.items = [{"error_type": error_type, "error_message": message, "error_point": point}]
        for other in more:
            self.items.extend(other.items)
        self.headers = headers or {}

    @classmethod
    def collect(cls, errors: list[ApiError]) -> ApiError:
        """Merge several errors into one response (first one sets the status)."""
        first, *rest = errors
        merged = cls.__new__(cls)
        Exception.__init__(merged, str(first))
        merged.status, merged.headers = first.status, first.headers
        merged.items = [item for e in [first, *rest] for item in e.items]
        return merged

    def prefixed(self, prefix: str) -> ApiError:
        """The same errors with ``prefix.`` before each error point (bulk requests)."""
        for item in self.items:
            point = item["error_point"]
            item["error_point"] = f"{prefix}.{point}" if point else prefix
        return self


def invalid(message: str, point: str | None = None) -> ApiError:
    return ApiError("validation", message, point)


def notexist(what: str = "Object", point: str | None = None) -> ApiError:
    return ApiError("notexist", f"{what} does not exist", point)


def forbidden(message: str, point: str | None = None) -> ApiError:
    return ApiError("permission", message, point)


def respond(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer (every handler's, and the error lists below)."""
    return web.Response(status=status, text=json.dumps(data), content_type="application/json", charset="utf-8",
                        headers=headers)


def json_error(status: int, items: list[dict], headers: dict[str, str] | None = None) -> web.Response:
    return respond(items, status, headers)


def error_response(error: ApiError) -> web.Response:
    return json_error(error.status, error.items, error.headers)


_HTTP_TYPES = {401: "permission", 403: "permission", 404: "notexist", 405: "validation", 406: "validation"}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Outermost middleware: every failure becomes CloudSigma's error list."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "www-authenticate")}
        message = e.reason if e.status != 404 else "Resource not found"
        if e.status == 413:
            return json_error(413, [{"error_type": "validation", "error_message":
                                     "Request body too large", "error_point": None}], headers)
        return json_error(e.status, [{"error_type": _HTTP_TYPES.get(e.status, "validation"),
                                      "error_message": message, "error_point": None}], headers)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return json_error(500, [{"error_type": "backend", "error_message": "Internal error",
                                 "error_point": None}])
